"""edgecv train: train a classifier (the teacher)."""

from __future__ import annotations

import click

from edgecv.cli._common import echo, emit_json, json_option, log, quiet_option, warn_unlearned
from edgecv.utils import check_writable


@click.command()
@click.option("--data", default="digits", show_default=True,
              help="ImageFolder root (train/ + val/, or class folders) or a built-in dataset name (digits).")
@click.option("--arch", default="resnet18", show_default=True, help="Architecture from the registry (see 'edgecv archs').")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(0))
@click.option("--img-size", type=click.IntRange(8, 4096), default=None, help="Input size [default: 32 for digits, 224 otherwise].")
@click.option("--batch-size", default=None, type=click.IntRange(1),
              help="Per process (torchrun: x world size) [default: 64, halved for a small dataset until an epoch has "
                   ">= 10 steps, min 8].")
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Peak learning rate (AdamW). Scale it with the effective batch: see docs/distributed.md.")
@click.option("--warmup-epochs", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Linear learning-rate warm-up before the cosine decay (use more with large effective batches).")
@click.option("--weight-decay", default=0.05, show_default=True, type=click.FloatRange(0))
@click.option("--label-smoothing", default=0.1, show_default=True, type=click.FloatRange(0, 1))
@click.option("--workers", default=None, type=click.IntRange(0), help="DataLoader workers [default: auto].")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--skip-bad", is_flag=True,
              help="Skip unreadable images and folders that cannot be listed (each listed) instead of stopping.")
@click.option("--allow-duplicates", is_flag=True,
              help="Train even when byte-identical images sit in two splits or classes (recorded in the checkpoint).")
@click.option("--decode-cache", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="auto: decode + resize every image of a folder dataset once, into a memory-mapped cache under "
                   "$EDGECV_CACHE (augmentation on top); off: decode every epoch.")
@click.option("--augment", default="auto", show_default=True,
              type=click.Choice(["auto", "none", "light", "standard", "strong"]),
              help="Augmentation preset, saved in the checkpoint (compress reuses it): none = centre crop; light = "
                   "pad + random crop + flip; standard = RandomResizedCrop + flip + mild colour jitter; strong = "
                   "standard + TrivialAugment + random erasing + MixUp/CutMix. auto: light up to 64 px, else standard.")
@click.option("--balance", default="none", show_default=True, type=click.Choice(["none", "sampler", "weights"]),
              help="Skewed classes: sampler = class-balanced sampling (every class equally often per epoch); "
                   "weights = a loss weighted by inverse class frequency (mean weight 1).")
@click.option("--loss", "loss_kind", default="ce", show_default=True, type=click.Choice(["ce", "focal"]),
              help="ce = cross-entropy; focal = focal loss (gamma 2), with --label-smoothing and --balance weights.")
@click.option("--channels-last/--no-channels-last", "channels_last", default=True, show_default=True,
              help="The training step in channels_last memory format on the CPU too (on CUDA always): measured "
                   "faster here (benchmarks/RESULTS.md).")
@click.option("--resume", is_flag=True, help="Continue from OUT.state left by an interrupted run.")
@click.option("--tensorboard", type=click.Path(file_okay=False), default=None, help="Write TensorBoard scalars here.")
@click.option("--pretrained", is_flag=True,
              help="Start from the arch's published ImageNet weights (torchvision / timm cache; offline: one line "
                   "says which file to put where). Preprocessing follows the weights'. See docs/finetune.md.")
@click.option("--init-weights", default=None, type=click.Path(dir_okay=False),
              help="Start from a local file: state_dict (.pt/.pth), .safetensors or an edgecv checkpoint (e.g. a "
                   "teacher.pt trained on other data); a head of another class count is replaced.")
@click.option("--freeze", default="auto", show_default=True,
              help="auto | none | backbone | until:LAYER (e.g. layer3, features.9). auto with pretrained/init "
                   "weights: < 1k training images head only, 1k-10k the last blocks, more: everything.")
@click.option("--backbone-lr-scale", default=None, type=click.FloatRange(0, min_open=True),
              help="Backbone learning rate = --lr x this (the head trains at --lr) [default: 0.1 with "
                   "--pretrained/--init-weights, else 1].")
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled --init-weights file (only for files you trust).")
@click.option("--out", default="teacher.pt", show_default=True, type=click.Path(dir_okay=False))
@json_option
@quiet_option
def train(data, arch, epochs, img_size, batch_size, lr, warmup_epochs, weight_decay, label_smoothing, workers, seed, device,
          skip_bad, allow_duplicates, decode_cache, augment, balance, loss_kind, channels_last, resume, tensorboard, pretrained, init_weights, freeze, backbone_lr_scale, trust_pickle, out,
          as_json):
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
    from edgecv.training.loop import TrainConfig
    from edgecv.training.teacher import StartWeights, train_classifier

    parse_freeze(freeze)
    check_start(pretrained, init_weights)
    start = StartWeights(pretrained, init_weights, trust_pickle, freeze, backbone_lr_scale)
    check_writable(out)
    if tensorboard:
        check_writable(tensorboard, directory=True)
    with D.session(device):
        main_rank = D.is_main()
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs,
                          weight_decay=weight_decay, label_smoothing=label_smoothing, workers=workers, seed=seed, device=device,
                          tensorboard=tensorboard, desc=arch, augment=augment, balance=balance, loss=loss_kind,
                          channels_last_cpu=channels_last)
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
