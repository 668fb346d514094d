"""The training loop's configuration (:class:`TrainConfig`), declared once: each field carries its kind, range,
choices and help (edgecv.options), from which ``edgecv train`` generates its flags; the fields a command never sets
(the compress stages do) are marked API-only with the reason. :class:`EvalConfig`: ``edgecv eval``'s, likewise."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgecv.options import check_fields, option, owned

AUGMENTS = owned("edgecv.data.augment", "PRESETS", auto=True)
# a pretrained trunk's default learning-rate scale (edgecv.training.finetune.default_backbone_lr_scale): x this on a
# small training set, the full rate from LARGE_SET training images on; here (torch-free) for the CLI's help texts
DEFAULT_PRETRAINED_LR_SCALE = 0.1
LARGE_SET = 1000


def large_set(n_train: int) -> bool:
    """Whether ``n_train`` training images are a large set: where a pretrained trunk trains at the full rate, and a
    compress run from pretrained weights takes 15 prune epochs and may recover from its distilled student."""
    return n_train >= LARGE_SET


@dataclass
class TrainConfig:
    epochs: int = option(10, kind=int, lo=0)
    batch_size: int | None = option(  # per process; None = auto_batch_size of the training set
        64, kind=int, lo=1, optional=True,
        help="Per process (torchrun: x world size) [default: 64, halved for a small dataset until an epoch has "
             ">= 10 steps, min 8].")
    lr: float = option(2e-3, kind=float, lo=0, lo_open=True,
                       help="Peak learning rate (AdamW). Scale it with the effective batch: see docs/distributed.md.")
    warmup_epochs: float = option(
        1.0, kind=float, lo=0,
        help="Linear learning-rate warm-up before the cosine decay (use more with large effective batches).")
    weight_decay: float = option(0.05, kind=float, lo=0)
    label_smoothing: float = option(0.1, kind=float, lo=0, hi=1)
    workers: int | None = option(None, kind=int, lo=0, optional=True, help="DataLoader workers [default: auto].")
    seed: int = option(0, kind=int)
    device: str = option("auto", help="auto | cpu | cuda | cuda:N")
    # the augmentation preset of the data (edgecv.data.augment; "strong" adds MixUp/CutMix per batch here);
    # "auto" = decided by the caller from the input size (train_classifier resolves it before fit)
    augment: str = option(
        "auto", choices=AUGMENTS,
        help="Augmentation preset, saved in the checkpoint (compress reuses it): none = centre crop; light = "
             "pad + random crop + flip; standard = RandomResizedCrop + flip + mild colour jitter; strong = "
             "standard + TrivialAugment + random erasing + MixUp/CutMix. auto: light up to 64 px, else standard.")
    balance: str = option(
        "none", choices=owned("edgecv.training.balance", "BALANCES"),
        help="Skewed classes: sampler = class-balanced sampling (every class equally often per epoch); "
             "weights = a loss weighted by inverse class frequency (mean weight 1).")
    loss: str = option("ce", choices=owned("edgecv.training.losses", "LOSSES"),  # gamma 2
                       help="ce = cross-entropy; focal = focal loss (gamma 2), with --label-smoothing and --balance "
                            "weights.")
    channels_last_cpu: bool = option(  # channels_last on the CPU too (compress: measured faster there)
        False, kind=bool, decl="--channels-last/--no-channels-last",
        help="The training step in channels_last memory format on the CPU too (on CUDA always): measured "
             "faster here (benchmarks/RESULTS.md).")
    tensorboard: str | None = option(None, optional=True, path="dir", help="Write TensorBoard scalars here.")
    min_lr_ratio: float = option(0.01, kind=float, lo=0, hi=1, api_only="the cosine schedule's floor (x lr)")
    grad_clip: float = option(5.0, kind=float, lo=0, lo_open=True, api_only="gradient-norm clip")
    amp: bool = option(True, kind=bool, api_only="CUDA autocast; on by default, off only to debug")
    channels_last: bool = option(True, kind=bool, api_only="CUDA's memory format (always on for edgecv train)")
    desc: str = option("train", api_only="the progress and log label (edgecv train: the arch)")
    # this fit's start in a longer schedule (compress's stages): epoch e draws epoch_base + e's shuffle/views
    epoch_base: int = option(0, kind=int, lo=0, api_only="set by compress's stages (contracts.rundir.epoch_base)")

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Kinds, ranges and choices of every value (the flags' own); UserError (exit 2) naming the first bad one."""
        check_fields(self)


# `edgecv train`'s (and edgecv.train's) defaults where they differ from TrainConfig's, which compress's stages
# start from
COMMAND_DEFAULTS = {"batch_size": None, "channels_last_cpu": True}


@dataclass
class EvalConfig:
    """Every option of ``edgecv eval`` (:func:`edgecv.training.evaluate.evaluate_checkpoint`), in --help order."""

    data: str = option(
        "digits",
        help="DATA/test, else DATA/val (or valid/, validation/), else every image under DATA; or a built-in name.")
    batch_size: int = option(256, kind=int, lo=1)
    confusion_png: str | None = option(None, optional=True, path="file", decl="--confusion",
                                       help="Write the confusion matrix as a PNG here.")
    skip_bad: bool = option(
        False, kind=bool,
        help="Skip unreadable images and folders that cannot be listed (each listed) instead of stopping.")
    allow_duplicates: bool = option(
        False, kind=bool,
        help="Evaluate even when byte-identical images sit in two splits or classes (recorded in --json).")
    trust_pickle: bool = option(False, kind=bool,
                                help="Allow loading pickled Python objects (only for files you trust).")
    arch: str | None = option(None, optional=True,
                              help="Architecture of a bare state_dict CHECKPOINT (see 'edgecv archs').")

    def validate(self) -> None:
        """Kinds and ranges of every value (the flags' own); UserError (exit 2) naming the first bad one."""
        check_fields(self)
