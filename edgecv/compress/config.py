"""The ``edgecv compress`` configuration: options, their types and ranges (one table, shared by a ``--config``
YAML file and the flags), the YAML loader and the ``--stages`` parser.

The target-aware options (``--student auto``, ``--target-macs auto`` and the flags that go with them) are stored
here as plain values; their combinations are validated by :mod:`edgecv.autotune.run`, which runs them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edgecv.contracts.rundir import STAGES
from edgecv.errors import UserError

DEFAULT_OUT = "runs/compress"


@dataclass
class CompressConfig:
    teacher: str | None = None  # None: train one on the fly (cached)
    teacher_arch: str | None = None  # for a bare state_dict teacher
    # distil from a teacher no better than always answering the commonest class (training.metrics.learned_record);
    # its students are then reported, not stopped, when they are no better either
    allow_weak_teacher: bool = False
    data: str = "digits"
    student: str = "mobilenet_v3_small"  # or "auto": chosen for --target by measured latency + a KD probe
    student_pretrained: bool = False  # the student starts from its published weights (edgecv.models.pretrained)
    student_init_weights: str | None = None  # ... or from a local weights file
    # a pretrained student's backbone lr = lr x this in the distill stage (head at lr; the prune fine-tunes train
    # everything at lr); None: 0.1 with --student-pretrained / --student-init-weights, 1 from scratch
    # (training.finetune.DEFAULT_PRETRAINED_LR_SCALE)
    student_backbone_lr_scale: float | None = None
    target_macs: float | str = 0.5  # fraction of the unpruned student's MACs, or "auto" (from the measured budget)
    epochs_kd: int = 10
    epochs_prune: int = 6
    epochs_qat: int = 3
    img_size: int | None = None  # default: the teacher's input size, else the data default
    batch_size: int | None = None  # per process; None = auto_batch_size of the training set (64 unless it is small)
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    workers: int | None = None
    device: str = "auto"
    # distillation
    temperature: float = 4.0
    alpha: float = 0.8
    feature_kd: float = 0.0  # weight of feature-map KD (0 = off)
    teacher_cache: str = "auto"  # off | auto | views=K: the teacher's soft labels stored once (compress/softlabels)
    teacher_precision: str = "auto"  # auto (bf16 where the CPU has AVX512-BF16/AMX) | fp32 | bf16: the teacher's CPU forward
    channels_last: bool = True  # the student's (and the live teacher's) CPU step in channels_last (measured faster)
    decode_cache: str = "auto"  # auto | off: every image decoded + resized once, memory-mapped (data/cache)
    # training data / loss of every stage (and of the on-the-fly teacher)
    augment: str = "auto"  # auto (the teacher's recorded preset, else by input size) | none | light | standard | strong
    balance: str = "none"  # none | sampler (every stage) | weights (the hard-label part of the KD loss)
    loss: str = "ce"  # ce | focal: the hard-label part of the KD loss
    # pruning
    importance: str = "magnitude"
    prune_steps: int = 4
    prune_bn_batches: int = 32  # BatchNorm statistics re-estimated on this many training batches after each cut
    round_to: int = 8
    min_channels: int = 16
    # quantization
    calib_size: int = 512
    qat_lr_scale: float = 0.1
    freeze_bn_at: float = 0.5  # fraction of QAT epochs after which BN statistics freeze
    freeze_observers_at: float = 0.7  # ... and activation ranges freeze
    # quantize the image stem too (default float: faster on ORT and XNNPACK, slower on OpenVINO; RESULTS.md)
    int8_stem: bool = False
    # INT8 weight range: "auto" (7-bit on x86 CPUs without VNNI/AMX, whose int8 kernels saturate 8-bit
    # weights; else 8), 7 or 8 (edgecv.quant.scheme.auto_weight_bits)
    int8_weight_bits: str | int = "auto"
    # the on-the-fly teacher (no --teacher)
    teacher_epochs: int = 3
    skip_bad: bool = False
    allow_duplicates: bool = False  # byte-identical images in two splits or classes: go on (recorded in run.json)
    trust_pickle: bool = False
    out: str = DEFAULT_OUT
    # target-aware choices (--student auto, --target-macs auto); None = not given
    target: str | None = None  # x86 | android | jetson: the runtime latency is measured on
    budget_ms: float | None = None  # p90 latency budget (ms), as in edgecv bench
    budget_fps: float | None = None
    deploy_size: int | None = None  # input size latency is measured at [224]
    probe_epochs: int | None = None  # KD probe epochs per in-budget candidate [2]
    probe_images: int | None = None  # training images of a probe [1000]
    probe_val_images: int | None = None  # val images a probe is scored on [500]
    candidates: str | list | None = None  # comma list [the six registry students]
    min_time: float | None = None  # timed seconds per candidate and precision [1.0]
    select_only: bool = False  # --student auto: measure, probe, record the choice; no stages

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

    def validate(self) -> None:
        """Types and ranges of every value (the same as the flags'); UserError (exit 2) naming the first bad one."""
        from edgecv.compress.prune import IMPORTANCES
        from edgecv.models.registry import STUDENTS, arch_info

        for name, rule in RULES.items():
            setattr(self, name, check_value(name, getattr(self, name), *rule))
        if isinstance(self.target_macs, str) and self.target_macs != "auto":
            try:
                self.target_macs = float(self.target_macs)
            except ValueError:
                raise UserError(f"--target-macs must be a fraction in (0, 1] or 'auto', got '{self.target_macs}'") from None
        if not self.auto_macs:
            check_value("target_macs", self.target_macs, float, 0, 1, True)
        from edgecv.compress.softlabels import check_teacher_precision, parse_teacher_cache

        parse_teacher_cache(self.teacher_cache)
        check_teacher_precision(self.teacher_precision)
        from edgecv.data.cache import check_mode

        check_mode(self.decode_cache)
        from edgecv.data.augment import resolve_preset
        from edgecv.training.balance import check_balance
        from edgecv.training.losses import LOSSES

        resolve_preset(self.augment, 224)  # validates the name
        check_balance(self.balance)
        if str(self.int8_weight_bits) not in ("auto", "7", "8"):
            raise UserError(f"--int8-weight-bits must be auto, 7 or 8, got {self.int8_weight_bits!r}")
        if self.loss not in LOSSES:
            raise UserError(f"--loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")
        if self.importance not in IMPORTANCES:
            raise UserError(f"--importance must be one of {', '.join(IMPORTANCES)}, got '{self.importance}'")
        from edgecv.models.pretrained import check_start

        check_start(self.student_pretrained, self.student_init_weights, "student-")
        if self.student not in STUDENTS and not self.auto_student:
            arch_info(self.student)  # unknown arch -> UserError listing them


# name: (type, min, max, min_open) -- the flags' click types; None: no bound. Optional values may be None.
RULES: dict[str, tuple] = {
    "teacher": (str,), "teacher_arch": (str,), "data": (str,), "student": (str,), "device": (str,),
    "importance": (str,), "out": (str,), "target": (str,), "teacher_cache": (str,),
    "teacher_precision": (str,),
    "augment": (str,), "balance": (str,), "loss": (str,),
    "decode_cache": (str,),
    "epochs_kd": (int, 0), "epochs_prune": (int, 0), "epochs_qat": (int, 0), "teacher_epochs": (int, 0),
    "img_size": (int, 8, 4096), "batch_size": (int, 1), "seed": (int,), "workers": (int, 0),
    "prune_steps": (int, 1), "prune_bn_batches": (int, 0), "round_to": (int, 1), "min_channels": (int, 1), "calib_size": (int, 1),
    "deploy_size": (int, 8, 4096), "probe_epochs": (int, 0), "probe_images": (int, 1), "probe_val_images": (int, 1),
    "lr": (float, 0, None, True), "student_backbone_lr_scale": (float, 0, None, True), "weight_decay": (float, 0), "temperature": (float, 0, None, True),
    "alpha": (float, 0, 1), "feature_kd": (float, 0), "qat_lr_scale": (float, 0, None, True),
    "freeze_bn_at": (float, 0, 1), "freeze_observers_at": (float, 0, 1),
    "budget_ms": (float, 0, None, True), "budget_fps": (float, 0, None, True), "min_time": (float, 0, None, True),
    "int8_stem": (bool,), "channels_last": (bool,), "skip_bad": (bool,), "allow_duplicates": (bool,), "trust_pickle": (bool,), "student_pretrained": (bool,),
    "student_init_weights": (str,), "select_only": (bool,), "allow_weak_teacher": (bool,),
    "candidates": ((str, list),), "int8_weight_bits": ((str, int),),
}
OPTIONAL = {"student_backbone_lr_scale", "teacher", "teacher_arch", "img_size", "batch_size", "workers", "target", "budget_ms", "budget_fps", "deploy_size",
            "probe_epochs", "probe_images", "probe_val_images", "candidates", "min_time", "student_init_weights"}


def check_value(name: str, v, typ, lo=None, hi=None, lo_open: bool = False):
    """One option's type and range, as its flag checks them; returns the value (a number written as a string,
    e.g. YAML's ``1e-3``, converted as the flag would)."""
    flag = "--" + name.replace("_", "-")
    if v is None and name in OPTIONAL:
        return v
    if typ in (int, float) and isinstance(v, str):
        try:
            v = typ(v.strip())
        except ValueError:
            pass
    if typ is float:
        ok = isinstance(v, int | float) and not isinstance(v, bool) and v == v  # no NaN
        kind = "a number"
    elif typ is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
        kind = "an integer"
    elif typ is bool:
        ok, kind = isinstance(v, bool), "true or false"
    else:
        ok = isinstance(v, typ)
        kind = "a string" if typ is str else "a comma-separated string or a list"
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        rng = ""
        if lo is not None or hi is not None:
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
            rng = (f" in {'(' if lo_open else '['}{lo:g}, {hi:g}]" if lo is not None and hi is not None else f" {lo_s}")
        raise UserError(f"{flag} must be {kind}{rng}, got {v!r}")
    return v


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
