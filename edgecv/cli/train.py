"""edgecv train: train a classifier (the teacher)."""

from __future__ import annotations

import click

from edgecv.cli._common import (
    LazyChoice,
    config_options,
    echo,
    emit_json,
    json_option,
    log,
    quiet_option,
    warn_unlearned,
)
from edgecv.options import owned
from edgecv.training.config import COMMAND_DEFAULTS, DEFAULT_PRETRAINED_LR_SCALE, LARGE_SET, TrainConfig
from edgecv.utils import check_writable


@click.command()
@config_options(TrainConfig, defaults=COMMAND_DEFAULTS, dests={"loss": "loss_kind", "channels_last_cpu": "channels_last"},
                before={"epochs": [
    click.option("--data", default="digits", show_default=True,
                 help="ImageFolder root (train/ + val/, or class folders) or a built-in dataset name (digits)."),
    click.option("--arch", default="resnet18", show_default=True,
                 help="Architecture from the registry (see 'edgecv archs')."),
], "batch_size": [
    click.option("--img-size", type=click.IntRange(8, 4096), default=None,
                 help="Input size [default: 32 for digits, 224 otherwise]."),
], "augment": [
    click.option("--skip-bad", is_flag=True,
                 help="Skip unreadable images and folders that cannot be listed (each listed) instead of stopping."),
    click.option("--allow-duplicates", is_flag=True,
                 help="Train even when byte-identical images sit in two splits or classes (recorded in the "
                      "checkpoint)."),
    click.option("--decode-cache", type=LazyChoice(owned("edgecv.data.cache", "MODES")), default="auto",
                 show_default=True,
                 help="auto: decode + resize every image of a folder dataset once, into a memory-mapped cache under "
                      "$EDGECV_CACHE (augmentation on top); off: decode every epoch."),
], "tensorboard": [
    click.option("--resume", is_flag=True, help="Continue from OUT.state left by an interrupted run."),
]})
@click.option("--pretrained", is_flag=True,
              help="Start from the arch's published ImageNet weights (torchvision / timm cache; offline: one line "
                   "says which file to put where). Preprocessing follows the weights'. See docs/finetune.md.")
@click.option("--init-weights", default=None, type=click.Path(dir_okay=False),
              help="Start from a local file: state_dict (.pt/.pth), .safetensors or an edgecv checkpoint (e.g. a "
                   "teacher.pt trained on other data); a head of another class count is replaced.")
@click.option("--freeze", default="auto", show_default=True,
              help="auto | none | backbone | until:LAYER (e.g. layer3, features.9). auto: everything trains (none), "
                   "from pretrained/init weights too (measured: docs/finetune.md).")
@click.option("--backbone-lr-scale", default=None, type=click.FloatRange(0, min_open=True),
              help="Backbone learning rate = --lr x this (the head trains at --lr) [default: "
                   f"{DEFAULT_PRETRAINED_LR_SCALE:g} with --pretrained/--init-weights and < {LARGE_SET:,} training "
                   "images, else 1].")
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled --init-weights file (only for files you trust).")
@click.option("--out", default="teacher.pt", show_default=True, type=click.Path(dir_okay=False))
@json_option
@quiet_option
def train(data, arch, img_size, skip_bad, allow_duplicates, decode_cache, resume, pretrained, init_weights, freeze,
          backbone_lr_scale, trust_pickle, out, as_json, **options):
    """Train a classifier (the teacher) on DATA.

    Start from published ImageNet weights (--pretrained) or a local weights file (--init-weights); --freeze and
    --backbone-lr-scale set what trains and how fast: docs/finetune.md (cache paths, offline use).

    \b
    Examples:
      edgecv train --data digits --epochs 3
      edgecv train --data ~/data/cifar10 --arch resnet18 --img-size 64 --epochs 30 --out teacher.pt
      edgecv train --data ~/photos --arch resnet18 --pretrained --img-size 224 --epochs 10
      edgecv train --data ~/skewed --img-size 32 --balance sampler --augment light --epochs 10
      edgecv train --data ~/photos --init-weights cifar_teacher.pt --freeze until:layer4 --img-size 128
      torchrun --nproc-per-node 2 -m edgecv train --data ~/data/cifar10 --batch-size 64
      # 8 GPUs x 64 = effective batch 512: linear LR scaling 2e-3 x 512/64 (docs/distributed.md)
      torchrun --standalone --nproc-per-node 8 -m edgecv train --data /data/imagenet --arch resnet50
          --batch-size 64 --lr 1.6e-2 --warmup-epochs 5 --epochs 90 --out r50.pt
    """
    from edgecv import distributed as D
    from edgecv.models.pretrained import check_start
    from edgecv.training.finetune import parse_freeze
    from edgecv.training.teacher import StartWeights, train_classifier

    parse_freeze(freeze)
    check_start(pretrained, init_weights)
    start = StartWeights(pretrained, init_weights, trust_pickle, freeze, backbone_lr_scale)
    cfg = TrainConfig(**options, desc=arch)
    check_writable(out)
    if cfg.tensorboard:
        check_writable(cfg.tensorboard, directory=True)
    with D.session(cfg.device):
        main_rank = D.is_main()
        res = train_classifier(data, arch, out, cfg, img_size=img_size, skip_bad=skip_bad, resume=resume, log=log,
                               start=start, decode_cache=decode_cache, allow_duplicates=allow_duplicates)
    if not main_rank:  # under torchrun only rank 0 prints the result / --json
        return
    d = res.to_dict()
    warn_unlearned(d)
    if as_json:
        emit_json(d)
    else:
        echo(f"saved {res.checkpoint}: {arch}, best val top-1 {d['best_val_top1']:.2f}% (epoch {d['best_epoch']}), "
             f"{d['wall_s']:.1f}s, effective batch {d['effective_batch']} "
             f"({d['effective_batch'] // d['world_size']} x {d['world_size']} process{'es' if d['world_size'] > 1 else ''})")
