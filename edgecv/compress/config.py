"""The ``edgecv compress`` configuration: every option with its type, range, choices and help on its field (the
one table: the command's flags are generated from it, ``--config`` YAML files, resumed runs and the Python API are
checked against it), the YAML loader, the ``--stages`` parser and the resume/YAML/flag merge.

The target-aware options (``--student auto``, ``--target-macs auto`` and the flags that go with them) are stored
here as plain values; their combinations are validated by :mod:`edgecv.autotune.run`, which runs them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edgecv.contracts.rundir import DISTILL, PRUNE, QUANTIZE, STAGES
from edgecv.errors import UserError
from edgecv.options import check_fields, option, owned
from edgecv.training.config import DEFAULT_PRETRAINED_LR_SCALE, LARGE_SET, large_set

DEFAULT_OUT = "runs/compress"
# the prune stage's fine-tune epochs by default: from scratch or under LARGE_SET training images, and for a student
# from pretrained weights on a larger set (on cifar10-mini from ImageNet weights 15 kept 1.6 pt more; on hymenoptera's
# 245 photos they lost: benchmarks/RESULTS.md)
PRUNE_EPOCHS, PRETRAINED_PRUNE_EPOCHS = 9, 15


@dataclass
class CompressConfig:
    """Every option of a compress run, in the order ``edgecv compress --help`` lists them (each field's
    :func:`~edgecv.options.option`: its kind, range, choices and help; docs/api.md)."""

    teacher: str | None = option(  # None: train one on the fly (cached)
        None, optional=True, path="file",
        help="Teacher: edgecv checkpoint, bare state_dict (with --teacher-arch) or TorchScript file "
             "[default: train a resnet18 on the fly, cached].")
    teacher_arch: str | None = option(None, optional=True, help="Architecture of a bare state_dict teacher.")
    # a teacher no better than the commonest class (training.metrics.learned_record)
    allow_weak_teacher: bool = option(
        False, kind=bool, switch=True,
        help="Distil from a teacher no better on val than always answering the commonest class (refused "
             "otherwise, exit 2); a student no better either is then reported, not stopped (docs/errors.md).")
    data: str = option("digits", help="ImageFolder root or built-in name [default: digits].")
    student: str = option(
        "mobilenet_v3_small",
        help="Student arch from the registry, or 'auto': measure the candidates on --target's runtime, drop "
             "those over the budget, pick the best by a short KD probe [default: mobilenet_v3_small].")
    student_pretrained: bool = option(  # edgecv.models.pretrained
        False, kind=bool, switch=True,
        help="Start the student from its published ImageNet weights (docs/finetune.md; offline: one line "
             "says which file to put where).")
    student_init_weights: str | None = option(
        None, optional=True, path="file",
        help="Start the student from a local state_dict / .safetensors / edgecv checkpoint of its arch.")
    student_backbone_lr_scale: float | None = option(  # None: training.finetune.default_backbone_lr_scale
        None, kind=float, lo=0, lo_open=True, optional=True,
        help="Distill stage: a pretrained student's backbone learns at --lr x this, its head at --lr "
             f"[default: {DEFAULT_PRETRAINED_LR_SCALE:g} with --student-pretrained / --student-init-weights and "
             f"< {LARGE_SET:,} training images, else 1].")
    target_macs: float | str = option(
        0.5, kind=float, lo=0, hi=1, lo_open=True, auto=True,
        help="Pruned MACs as a fraction of the unpruned student's, or 'auto': the amount the measured "
             "--budget-ms/--budget-fps needs on --target's runtime (floor 0.25) [default: 0.5].")
    # target-aware choices (--student auto, --target-macs auto; edgecv.autotune); None = not given
    target: str | None = option(
        None, optional=True, choices=owned("edgecv.targets", "PROFILES"),
        help="With --student/--target-macs auto: whose runtime latency is measured on "
             "(x86: OpenVINO CPU; android: ExecuTorch; jetson: ONNX Runtime, host proxy).")
    budget_ms: float | None = option(
        None, kind=float, lo=0, lo_open=True, optional=True,
        help="p90 latency budget in ms at --deploy-size, batch 1 (as edgecv bench) [default: the target's].")
    budget_fps: float | None = option(None, kind=float, lo=0, lo_open=True, optional=True,
                                      help="Frame-rate budget instead.")
    deploy_size: int | None = option(
        None, kind=int, lo=8, hi=4096, optional=True,
        help="Input size latency is measured at (separate from --img-size) [default: 224].")
    probe_epochs: int | None = option(
        None, kind=int, lo=0, optional=True,
        help="--student auto: KD probe epochs per in-budget candidate (0: rank by latency) [default: 2].")
    probe_images: int | None = option(
        None, kind=int, lo=1, optional=True,
        help="--student auto: training images of each probe (class-balanced subset) [default: 1000].")
    probe_val_images: int | None = option(None, kind=int, lo=1, optional=True,
                                          help="--student auto: val images each probe is scored on [default: 500].")
    candidates: str | list | None = option(
        None, kind=(str, list), optional=True,
        help="--student auto: comma-separated students to consider [default: the six registry students].")
    min_time: float | None = option(  # seconds
        None, kind=float, lo=0, lo_open=True, optional=True,
        help="Timed duration per candidate and precision (1s, 500ms) [default: 1s].")
    select_only: bool = option(False, kind=bool, switch=True,
                               help="--student auto: measure, probe and record the choice in "
                                    "RUN_DIR/run.json, run no stage.")
    # 20 (was 10): the from-scratch standard work, INT8 63.13 -> 69.43 % on two seeds at 1.19x the wall (RESULTS.md)
    epochs_kd: int = option(20, kind=int, lo=0, help="Distillation epochs [default: 20].")
    # None: resolve_prune_epochs (9, or 15 from pretrained weights on a large set: docs/compress.md)
    epochs_prune: int | None = option(
        None, kind=int, lo=0, optional=True,
        help=f"Fine-tune epochs of the pruning stage, spread over its steps [default: {PRUNE_EPOCHS}; "
             f"{PRETRAINED_PRUNE_EPOCHS} for a student from pretrained weights and >= {LARGE_SET:,} training "
             f"images].")
    epochs_qat: int = option(3, kind=int, lo=0, help="QAT epochs [default: 3].")
    img_size: int | None = option(None, kind=int, lo=8, hi=4096, optional=True,
                                  help="Student input size [default: the teacher's, else the data default].")
    # per process; None = training.loop.auto_batch_size of the training set
    batch_size: int | None = option(
        None, kind=int, lo=1, optional=True,
        help="Per process [default: 64, halved for a small dataset until an epoch has >= 10 steps, min 8].")
    lr: float = option(2e-3, kind=float, lo=0, lo_open=True, help="Learning rate (QAT uses lr x 0.1) [default: 2e-3].")
    seed: int = option(0, kind=int, help="[default: 0]")
    workers: int | None = option(None, kind=int, lo=0, optional=True, help="DataLoader workers [default: auto].")
    device: str = option("auto", help="auto | cpu | cuda | cuda:N [default: auto].")
    # pruning
    importance: str = option("magnitude", choices=owned("edgecv.compress.prune", "IMPORTANCES"),
                             help="Channel importance for pruning [default: magnitude].")
    prune_scope: str = option(
        "all", choices=owned("edgecv.compress.prune", "SCOPES"),
        help="Which channels pruning may cut: all, or inner (the residual stream kept, the blocks' inner channels "
             "cut deeper) [default: all].")
    prune_steps: int = option(
        4, kind=int, lo=1,
        help="Pruning rounds [default: 4; fewer where --epochs-prune cannot give each round an epoch and the "
             "last two].")
    prune_bn_batches: int = option(
        32, kind=int, lo=0,
        help="With --prune-reconstruct 0: re-estimate BatchNorm statistics on this many training batches after "
             "each prune cut, 0 = off [default: 32].")
    prune_reconstruct: int = option(
        4, kind=int, lo=0,
        help="After each prune cut, refit every pointwise layer that lost input channels to the unpruned layer's "
             "output by least squares on this many training batches (BatchNorm is then not re-estimated), "
             "0 = off [default: 4].")
    # distillation
    temperature: float = option(4.0, kind=float, lo=0, lo_open=True, help="KD temperature [default: 4].")
    alpha: float = option(0.8, kind=float, lo=0, hi=1, help="Weight of the KD term [default: 0.8].")
    recovery_kd: str = option(
        "auto", choices=owned("edgecv.compress.distill", "RECOVERY_SOURCES", auto=True),
        help="Whom the prune fine-tunes and QAT distil from: the teacher (its stored soft labels), the distilled "
             "unpruned student (live: one more forward a step), or auto: the student where it reads higher on val "
             f"than the teacher and there are >= {LARGE_SET:,} training images [default: auto].")
    recovery_augment: str = option(
        "auto", choices=owned("edgecv.data.augment", "PRESETS", auto=True),
        help="Augmentation preset of the prune stage (its repair batches and fine-tunes) and QAT; auto: "
             "light where they distil from the distilled student (--recovery-kd), else --augment's "
             "[default: auto].")
    feature_kd: float = option(0.0, kind=float, lo=0,
                               help="Weight of feature-map KD on the last feature map (0 = off) [default: 0].")
    decode_cache: str = option(  # edgecv.data.cache
        "auto", choices=owned("edgecv.data.cache", "MODES"),
        help="auto: decode + resize every image of a folder dataset once, into a memory-mapped cache under "
             "$EDGECV_CACHE (augmentation on top); off: decode every epoch [default: auto].")
    teacher_cache: str = option(  # edgecv.compress.softlabels.parse_teacher_cache
        "auto", metavar="off|auto|views=K",
        help="Teacher soft labels: K augmented views per training image and the teacher's logits, computed "
             "once, cached and replayed by every KD stage, --resume and later runs (off: the live teacher "
             "every batch; auto: K = total epochs / 4, in [2, 8], or / 2, in [2, 16], where the teacher runs "
             "in bf16) [default: auto].")
    teacher_precision: str = option(
        "auto", choices=owned("edgecv.compress.softlabels", "TEACHER_PRECISIONS"),
        help="The frozen teacher's CPU forward (live, or building the soft labels): auto = bf16 autocast "
             "where the CPU has AVX512-BF16/AMX (measured 1.95x faster there), else fp32 [default: auto].")
    # training data / loss of every stage (and of the on-the-fly teacher)
    augment: str = option(
        "auto", choices=owned("edgecv.data.augment", "PRESETS", auto=True),
        help="Augmentation preset of the KD, prune fine-tune and QAT stages (see 'edgecv train --help'); auto: "
             "the one the teacher checkpoint was trained with, else by input size [default: auto].")
    balance: str = option(
        "none", choices=owned("edgecv.training.balance", "BALANCES"),
        help="Skewed classes: sampler = class-balanced sampling in every stage; weights = inverse-frequency "
             "class weights on the hard-label part of the KD loss [default: none].")
    loss: str = option("ce", choices=owned("edgecv.training.losses", "LOSSES"),
                       help="Hard-label part of the KD loss: ce or focal (gamma 2) [default: ce].")
    channels_last: bool = option(
        True, kind=bool, decl="--channels-last/--no-channels-last",
        help="The student's training step (and the live teacher) in channels_last memory format on the CPU "
             "(measured faster here: docs/compress-speed.md) [default: on].")
    # quantization
    calib_size: int = option(512, kind=int, lo=1, help="PTQ calibration images [default: 512].")
    int8_stem: bool = option(
        False, kind=bool, decl="--int8-stem/--float-stem",
        help="Quantize the 3-channel stem conv too. Default float: faster INT8 on ONNX Runtime and "
             "ExecuTorch, slower on OpenVINO (benchmarks/RESULTS.md).")
    # auto: edgecv.quant.scheme.auto_weight_bits
    int8_weight_bits: str | int = option(
        "auto", kind=(str, int), choices=owned("edgecv.quant.scheme", "WEIGHT_BITS", auto=True, text=True),
        help="INT8 weight range: 7 = within +-63, exact on x86 CPUs without VNNI/AMX (their int8 kernels "
             "saturate 8-bit weights); auto = 7 on such a CPU, else 8 [default: auto] (docs/int8.md).")
    teacher_epochs: int = option(3, kind=int, lo=0,
                                 help="Epochs of the on-the-fly teacher (no --teacher) [default: 3].")
    skip_bad: bool = option(
        False, kind=bool, switch=True,
        help="Skip unreadable images and folders that cannot be listed (each listed) instead of stopping.")
    allow_duplicates: bool = option(  # recorded in run.json
        False, kind=bool, switch=True,
        help="Go on when byte-identical images sit in two splits or classes (recorded in run.json).")
    trust_pickle: bool = option(False, kind=bool, switch=True,
                                help="Allow a pickled teacher (only for files you trust).")
    out: str = option(DEFAULT_OUT, path="dir", help="RUN_DIR [default: runs/compress].")
    # Python API and --config only (no flag): settings with a good default that a run rarely changes
    weight_decay: float = option(0.05, kind=float, lo=0, api_only="AdamW's decay: the default suits every stage")
    round_to: int = option(8, kind=int, lo=1, api_only="pruned widths rounded to this many channels (kernel-friendly)")
    min_channels: int = option(16, kind=int, lo=1, api_only="no pruned layer narrower than this")
    qat_lr_scale: float = option(0.1, kind=float, lo=0, lo_open=True, api_only="QAT's lr = --lr x this")
    freeze_bn_at: float = option(  # fraction of QAT epochs after which BN statistics freeze
        0.5, kind=float, lo=0, hi=1, api_only="fraction of the QAT epochs after which BatchNorm freezes")
    freeze_observers_at: float = option(  # ... and activation ranges freeze
        0.7, kind=float, lo=0, hi=1, api_only="fraction of the QAT epochs after which activation ranges freeze")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CompressConfig:
        known = {f.name for f in fields(cls)}
        d = {k.replace("-", "_"): v for k, v in d.items()}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"config: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d)

    @property
    def auto_student(self) -> bool:
        return self.student == "auto"

    @property
    def auto_macs(self) -> bool:
        return self.target_macs == "auto"

    def resolve_prune_epochs(self, n_train: int) -> int:
        """``--epochs-prune``, else its default for a run on ``n_train`` training images: more for a student from
        pretrained weights on a large set (the run's config records the resolved value)."""
        if self.epochs_prune is not None:
            return self.epochs_prune
        pretrained = self.student_pretrained or self.student_init_weights is not None
        return PRETRAINED_PRUNE_EPOCHS if pretrained and large_set(n_train) else PRUNE_EPOCHS

    @property
    def stage_epochs(self) -> dict[str, int]:
        """Each stage's epochs, for :func:`edgecv.contracts.rundir.epoch_base` (of a run's config: ``epochs_prune``
        resolved)."""
        return {DISTILL: self.epochs_kd, PRUNE: self.epochs_prune, QUANTIZE: self.epochs_qat}

    def validate(self) -> None:
        """Types, ranges and choices of every value (the same as the flags': the fields' options), then the
        values with a syntax of their own; UserError (exit 2) naming the first bad one."""
        from edgecv.compress.softlabels import parse_teacher_cache
        from edgecv.models.pretrained import check_start
        from edgecv.models.registry import STUDENTS, arch_info

        if isinstance(self.target_macs, str) and self.target_macs != "auto":  # a fraction written as text
            try:
                self.target_macs = float(self.target_macs)
            except ValueError:
                raise UserError(f"--target-macs must be a fraction in (0, 1] or 'auto', got '{self.target_macs}'") from None
        check_fields(self)
        parse_teacher_cache(self.teacher_cache)
        check_start(self.student_pretrained, self.student_init_weights, "student-")
        if self.student not in STUDENTS and not self.auto_student:
            arch_info(self.student)  # unknown arch -> UserError listing them


def load_config_file(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config: no such file: {path}")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--config {path}: invalid YAML: {str(e).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: unreadable: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"--config {path}: expected a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in d.items()}


def parse_stages(s: str | None) -> list[str]:
    if not s:
        return list(STAGES)
    out = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in out if x not in STAGES]
    if bad or not out:
        raise UserError(f"--stages: unknown stage(s) {', '.join(bad) or s!r} (stages: {', '.join(STAGES)})")
    return [st for st in STAGES if st in out]


def resolve_config(options: dict | None = None, config_file: str | Path | None = None,
                   resume: bool = False) -> CompressConfig:
    """The configuration of a compress run; later sources win: when resuming without ``config_file``, the run's
    own effective config (``OUT/config.yaml``, OUT from ``options["out"]`` or the default), then the YAML
    ``config_file``, then ``options`` (a value of None is "not given"). An unknown key is a UserError."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    merged: dict = {}
    if resume and config_file is None:
        saved = Path(given.get("out") or CompressConfig.out) / "config.yaml"
        if saved.is_file():
            merged.update({k: v for k, v in load_config_file(saved).items() if k != "img_size" or v})
    if config_file:
        merged.update(load_config_file(config_file))
    merged.update(given)
    return CompressConfig.from_dict(merged)
