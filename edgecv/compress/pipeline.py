"""``edgecv compress``: knowledge distillation -> structured pruning -> INT8 QAT, staged and resumable.

Every stage writes its checkpoint (``distill.pt``, ``prune.pt``, ``quantize.pt``, edgecv format) into RUN_DIR
and ``run.json`` (schema ``edgecv.run/1``, the contract the exporter reads) is rewritten atomically after every
stage status change. Interrupted stages continue mid-way from their fit state files (``*.state``) with
``resume=True``. Under torchrun all ranks train; only rank 0 writes files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from edgecv import distributed as D
from edgecv.compress.distill import KDConfig, KDLoss
from edgecv.contracts.rundir import SCHEMA, STAGE_INPUT, STAGES, Run
from edgecv.data.datasets import DataBundle, load_train_val, sample_calibration
from edgecv.errors import UserError
from edgecv.models.checkpoint import load_checkpoint, save_checkpoint
from edgecv.models.registry import STUDENTS, arch_info, create_model
from edgecv.nn.graph import count_macs, count_params
from edgecv.training.loop import TrainConfig, evaluate_top1, fit
from edgecv.training.teacher import Teacher, auto_teacher, load_teacher
from edgecv.utils import seed_everything, sha256_file, write_text_atomic

DEFAULT_OUT = "runs/compress"


@dataclass
class CompressConfig:
    teacher: str | None = None  # None: train one on the fly (cached)
    teacher_arch: str | None = None  # for a bare state_dict teacher
    data: str = "digits"
    student: str = "mobilenet_v3_small"  # or "auto": chosen for --target by measured latency + a KD probe
    target_macs: float | str = 0.5  # fraction of the unpruned student's MACs, or "auto" (from the measured budget)
    epochs_kd: int = 10
    epochs_prune: int = 6
    epochs_qat: int = 3
    img_size: int | None = None  # default: the teacher's input size, else the data default
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    workers: int | None = None
    device: str = "auto"
    # distillation
    temperature: float = 4.0
    alpha: float = 0.8
    feature_kd: float = 0.0  # weight of feature-map KD (0 = off)
    # pruning
    importance: str = "magnitude"
    prune_steps: int = 4
    round_to: int = 8
    min_channels: int = 16
    # quantization
    calib_size: int = 512
    qat_lr_scale: float = 0.1
    freeze_bn_at: float = 0.5  # fraction of QAT epochs after which BN statistics freeze
    freeze_observers_at: float = 0.7  # ... and activation ranges freeze
    # quantize the image stem too (default float: faster on ORT and XNNPACK, slower on OpenVINO; RESULTS.md)
    int8_stem: bool = False
    # the on-the-fly teacher (no --teacher)
    teacher_epochs: int = 3
    skip_bad: bool = False
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
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"config: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**{k.replace("-", "_"): v for k, v in d.items()})

    @property
    def auto_student(self) -> bool:
        return self.student == "auto"

    @property
    def auto_macs(self) -> bool:
        return self.target_macs == "auto"

    def validate(self) -> None:
        if isinstance(self.target_macs, str) and self.target_macs != "auto":
            try:
                self.target_macs = float(self.target_macs)
            except ValueError:
                raise UserError(f"--target-macs must be a fraction in (0, 1] or 'auto', got '{self.target_macs}'") from None
        if not self.auto_macs and not 0 < self.target_macs <= 1:
            raise UserError(f"--target-macs must be in (0, 1], got {self.target_macs}")
        _validate_auto(self)
        for k in ("epochs_kd", "epochs_prune", "epochs_qat", "teacher_epochs"):
            if getattr(self, k) < 0:
                raise UserError(f"--{k.replace('_', '-')} must be >= 0")
        if self.prune_steps < 1:
            raise UserError("--prune-steps must be >= 1")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        if self.calib_size < 1:
            raise UserError("--calib-size must be >= 1")
        if self.student not in STUDENTS and not self.auto_student:
            arch_info(self.student)  # unknown arch -> UserError listing them
        from edgecv.compress.prune import IMPORTANCES

        if self.importance not in IMPORTANCES:
            raise UserError(f"--importance must be one of {', '.join(IMPORTANCES)}, got '{self.importance}'")


def _validate_auto(c: CompressConfig) -> None:
    """Flags of --student auto / --target-macs auto: valid combinations only (UserError, exit 2)."""
    from edgecv.autotune.select import AUTO_TARGETS, parse_candidates, resolve_budget

    if c.budget_ms is not None and c.budget_fps is not None:
        raise UserError("give --budget-ms or --budget-fps, not both")
    for k in ("budget_ms", "budget_fps", "min_time"):
        v = getattr(c, k)
        if v is not None and not (isinstance(v, int | float) and v > 0):
            raise UserError(f"--{k.replace('_', '-')} must be a number > 0, got {v!r}")
    for k in ("deploy_size", "probe_images", "probe_val_images"):
        v = getattr(c, k)
        if v is not None and not (isinstance(v, int) and v >= (8 if k == "deploy_size" else 1)):
            raise UserError(f"--{k.replace('_', '-')} must be an integer >= {8 if k == 'deploy_size' else 1}, got {v!r}")
    if c.probe_epochs is not None and not (isinstance(c.probe_epochs, int) and c.probe_epochs >= 0):
        raise UserError(f"--probe-epochs must be an integer >= 0, got {c.probe_epochs!r}")
    if not c.auto_student:
        only = [k for k in ("probe_epochs", "probe_images", "probe_val_images", "candidates") if getattr(c, k) is not None]
        if c.select_only:
            only.append("select_only")
        if only:
            raise UserError(f"--{only[0].replace('_', '-')} only applies with --student auto")
        if not c.auto_macs:
            given = [k for k in ("target", "budget_ms", "budget_fps", "deploy_size", "min_time") if getattr(c, k) is not None]
            if given:
                raise UserError(f"--{given[0].replace('_', '-')} only applies with --student auto or --target-macs auto")
            return
    if c.target is None:
        what = "--student auto" if c.auto_student else "--target-macs auto"
        raise UserError(f"{what} needs --target ({', '.join(AUTO_TARGETS)}): the runtime latency is measured on")
    if c.target not in AUTO_TARGETS:
        raise UserError(f"--target must be one of {', '.join(AUTO_TARGETS)} with --student/--target-macs auto, "
                        f"got '{c.target}'")
    if c.auto_student:
        c.candidates = ",".join(parse_candidates(c.candidates))
    if c.auto_macs and resolve_budget(c.target, c.budget_ms, c.budget_fps) is None:
        raise UserError(f"--target-macs auto needs a latency budget: --budget-ms or --budget-fps (target '{c.target}' "
                        "has none of its own)")


def load_config_file(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config: no such file: {path}")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--config {path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise UserError(f"--config {path}: expected a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in d.items()}


def parse_stages(s: str | None) -> list[str]:
    if not s:
        return list(STAGES)
    out = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in out if x not in STAGES]
    if bad or not out:
        raise UserError(f"--stages: unknown stage(s) {', '.join(bad) or s!r} (stages: {', '.join(STAGES)})")
    return [st for st in STAGES if st in out]


# ---------------------------------------------------------------------------------------------- pipeline
@dataclass
class Context:
    cfg: CompressConfig
    run: Run
    bundle: DataBundle
    teacher: Teacher
    img_size: int
    device: torch.device
    resume: bool
    log: Callable[[str], None]

    @property
    def out(self) -> Path:
        return self.run.out

    def train_cfg(self, epochs: int, desc: str, lr: float | None = None) -> TrainConfig:
        c = self.cfg
        return TrainConfig(epochs=epochs, batch_size=c.batch_size, lr=lr if lr is not None else c.lr,
                           weight_decay=c.weight_decay, label_smoothing=0.0, workers=c.workers, seed=c.seed,
                           device=c.device, desc=desc)

    def datasets(self):
        pre = self.bundle.preprocess
        return self.bundle.train.with_transform(pre.train_transform()), self.bundle.val.with_transform(pre.eval_transform())

    def kd_loss(self, student: nn.Module) -> KDLoss:
        c = self.cfg
        if c.feature_kd > 0 and self.teacher.kind in ("torchscript",):
            raise UserError("--feature-kd needs a teacher checkpoint with modules (not TorchScript)")
        return KDLoss(self.teacher.model, KDConfig(c.temperature, c.alpha, c.feature_kd),
                      self.bundle.preprocess, self.teacher.preprocess, student=student.to(self.device),
                      device=self.device)

    def evaluate(self, model: nn.Module, desc: str) -> float:
        _, val = self.datasets()
        model.to(self.device)
        top1, _ = evaluate_top1(model, val, max(self.cfg.batch_size, 64), self.device, 0, desc=desc)
        model.to("cpu")
        return top1

    def save(self, name: str, model: nn.Module, metrics: dict, meta: dict) -> tuple[str, str]:
        path = self.out / f"{name}.pt"
        if D.is_main():
            save_checkpoint(path, model, self.cfg.student, self.bundle.class_names, self.bundle.preprocess,
                            metrics=metrics, meta=meta)
        D.barrier()
        return path.name, sha256_file(path) if D.is_main() else ""

    def load_stage_model(self, name: str) -> nn.Module:
        st = self.run.data["stages"].get(name, {})
        if not self.run.done(name):
            raise UserError(f"stage '{name}' has no completed checkpoint in {self.out}; run it first "
                            f"(e.g. --stages {name})")
        ck = load_checkpoint(self.out / st["checkpoint"])
        if ck.arch != self.cfg.student or ck.class_names != self.bundle.class_names:
            raise UserError(f"{self.out / st['checkpoint']}: arch/classes do not match this run")
        return ck.build()

    def model_stats(self, model: nn.Module) -> dict:
        return {"params": count_params(model), "macs": count_macs(model, self.img_size),
                "macs_224": count_macs(model, 224)}


# ---------------------------------------------------------------------------------------------- target-aware
AUTO_DEFAULTS = {"deploy_size": 224, "probe_epochs": 2, "probe_images": 1000, "probe_val_images": 500, "min_time": 1.0}


def auto_opt(cfg: CompressConfig, key: str):
    v = getattr(cfg, key)
    return AUTO_DEFAULTS[key] if v is None else v


def make_measurer(cfg: CompressConfig, bundle: DataBundle, log: Callable[[str], None]):
    """The target runtime's latency measurer at the deploy size, calibrated on a few training images."""
    import numpy as np

    from edgecv.autotune.select import Measurer

    size = auto_opt(cfg, "deploy_size")
    pre = bundle.preprocess.with_size(size)
    cal = sample_calibration(bundle.train, 16, cfg.seed)
    x = np.stack([pre.to_array(cal.load_image(i)) for i in range(len(cal))]).astype(np.float32)
    return Measurer(cfg.target, size, [x[i : i + 8] for i in range(0, len(x), 8)],
                    min_time_s=float(auto_opt(cfg, "min_time")), log=log)


def run_selection(cfg: CompressConfig, bundle: DataBundle, teacher: Teacher, device: torch.device,
                  log: Callable[[str], None]) -> dict:
    """``--student auto``: measure every candidate on the target's runtime, probe the in-budget ones, pick one."""
    from edgecv.autotune.select import ProbeSpec, parse_candidates, resolve_budget, select_student

    budget = resolve_budget(cfg.target, cfg.budget_ms, cfg.budget_fps)
    epochs = auto_opt(cfg, "probe_epochs")

    def train_cfg(e: int, desc: str) -> TrainConfig:
        return TrainConfig(epochs=e, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           label_smoothing=0.0, workers=cfg.workers, seed=cfg.seed, device=cfg.device, desc=desc)

    probe = ProbeSpec(bundle, teacher, KDConfig(cfg.temperature, cfg.alpha, cfg.feature_kd), train_cfg, device,
                      epochs, auto_opt(cfg, "probe_images"), auto_opt(cfg, "probe_val_images"), cfg.seed)
    measurer = make_measurer(cfg, bundle, log)
    try:
        return select_student(parse_candidates(cfg.candidates), bundle.num_classes, measurer, budget,
                              probe if epochs > 0 else None, log)
    finally:
        measurer.close()


def _fit_params(model: nn.Module, kd: KDLoss) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad] + kd.extra_params()


def stage_distill(ctx: Context) -> dict:
    c = ctx.cfg
    train, val = ctx.datasets()
    seed_everything(c.seed)
    model = create_model(c.student, ctx.bundle.num_classes)
    kd = ctx.kd_loss(model)
    state = ctx.out / "distill.state"
    res = fit(model, train, val, ctx.train_cfg(c.epochs_kd, "distill"), loss_fn=kd, state_path=state,
              resume=ctx.resume, params=_fit_params(model, kd), log=ctx.log)
    kd.close()
    top1 = res.best_top1 if res.history else ctx.evaluate(model, "distill val")
    info = {**ctx.model_stats(model), "val_top1": top1, "epochs": c.epochs_kd, "history": res.history,
            "kd": KDConfig(c.temperature, c.alpha, c.feature_kd).to_dict()}
    ck, sha = ctx.save("distill", model, {"val_top1": top1}, {"stage": "distill", "kd": info["kd"]})
    if D.is_main():
        state.unlink(missing_ok=True)
    return {**info, "checkpoint": ck, "sha256": sha}


def stage_prune(ctx: Context) -> dict:
    from edgecv.compress.prune import (
        check_se_consistency,
        finetune_schedule,
        milestones,
        prune_to_macs,
        pruned_copy_synced,
    )
    from edgecv.nn.spec import channel_spec_of

    c = ctx.cfg
    n = ctx.bundle.num_classes
    train, val = ctx.datasets()
    base = ctx.load_stage_model("distill")
    base_stats = ctx.model_stats(base)
    baseline_top1 = float(ctx.run.data["stages"]["distill"].get("val_top1", float("nan")))

    def grad_fn(m: nn.Module) -> None:  # Taylor importance: gradients of the KD loss on a few batches
        kd = ctx.kd_loss(m)
        loader = torch.utils.data.DataLoader(train, batch_size=c.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(c.seed))
        m.train()
        for i, (x, y) in enumerate(loader):
            if i >= 8:
                break
            x, y = x.to(ctx.device), y.to(ctx.device)
            kd(m(x), y, x).backward()
        kd.close()
        m.eval()

    search = None
    if c.auto_macs:  # the pruning amount from the measured budget: prune a copy step by step, measuring it
        search = ctx.run.stage("prune").get("latency_search") if ctx.resume else None
        if search is None:
            from edgecv.autotune.select import resolve_budget, search_prune_fraction

            if D.is_main():
                measurer = make_measurer(c, ctx.bundle, ctx.log)
                try:
                    search = search_prune_fraction(
                        base.to(ctx.device), ctx.img_size, n, measurer, resolve_budget(c.target, c.budget_ms, c.budget_fps),
                        c.importance, c.round_to, c.min_channels, grad_fn=grad_fn, log=ctx.log)
                finally:
                    measurer.close()
                    base.to("cpu")
            search = D.broadcast_object(search)
            ctx.run.set_stage("prune", latency_search=search)
        ctx.log(f"prune: --target-macs auto -> {search['fraction']:.3f} of the MACs "
                f"({'meets' if search['met'] else 'misses'} the budget on {search['measurement']['runtime']})")
    fraction = search["fraction"] if search else c.target_macs
    target = int(fraction * base_stats["macs"])
    marks = milestones(base_stats["macs"], fraction, c.prune_steps)
    sched = finetune_schedule(c.epochs_prune, c.prune_steps)
    partial = ctx.out / "prune.partial.pt"
    state = ctx.out / "prune.state"
    rounds: list[dict] = []
    model, start, finetuned = base, 0, True
    if ctx.resume and partial.is_file():
        ck = load_checkpoint(partial)
        model = ck.build()
        start, finetuned = int(ck.meta["round"]), bool(ck.meta["finetuned"])
        rounds = list(ck.meta.get("rounds", []))
        if finetuned:
            start += 1  # that round is complete
        ctx.log(f"prune: resuming at round {start + 1}/{c.prune_steps}")
    elif D.is_main():
        state.unlink(missing_ok=True)

    def save_partial(r: int, done_ft: bool) -> None:
        if D.is_main():
            save_checkpoint(partial, model, c.student, ctx.bundle.class_names, ctx.bundle.preprocess,
                            meta={"channel_spec": channel_spec_of(model), "round": r, "finetuned": done_ft,
                                  "rounds": rounds})
        D.barrier()

    t_prune = 0.0
    for r in range(start, c.prune_steps):
        if finetuned:  # round r + 1: prune to its milestone on rank 0, broadcast, record
            t0 = time.perf_counter()
            if D.is_main():
                model.to(ctx.device)
                prune_to_macs(model, ctx.img_size, n, marks[r], c.importance, round_to=c.round_to,
                              min_channels=c.min_channels, grad_fn=grad_fn)
                model.to("cpu")
            model = pruned_copy_synced(model if D.is_main() else None, c.student, n)
            t_prune += time.perf_counter() - t0
            rec = {"round": r + 1, "macs": count_macs(model, ctx.img_size), "milestone": marks[r],
                   "top1_after_prune": ctx.evaluate(model, f"prune {r + 1} val")}
            rounds.append(rec)
            ctx.log(f"prune round {r + 1}/{c.prune_steps}: {rec['macs']:,} MACs "
                    f"({100 * rec['macs'] / base_stats['macs']:.1f}% of unpruned), "
                    f"val top-1 before fine-tune {rec['top1_after_prune']:.2f}%")
            save_partial(r, False)
        epochs = sched[r]
        kd = ctx.kd_loss(model)
        res = fit(model, train, val, ctx.train_cfg(epochs, f"prune{r + 1}"), loss_fn=kd, state_path=state,
                  resume=ctx.resume or not finetuned, params=_fit_params(model, kd), log=ctx.log)
        kd.close()
        rounds[-1]["top1_after_finetune"] = res.best_top1 if res.history else rounds[-1]["top1_after_prune"]
        rounds[-1]["finetune_epochs"] = epochs
        finetuned = True
        if D.is_main():
            state.unlink(missing_ok=True)
        save_partial(r, True)
    problems = check_se_consistency(model)
    if problems:
        raise UserError(f"pruning broke squeeze-excite blocks: {problems[0]}")
    stats = ctx.model_stats(model)
    if stats["macs"] > target:
        raise UserError(f"prune: reached {stats['macs']:,} MACs, above the target {target:,}")
    top1 = rounds[-1]["top1_after_finetune"]
    spec = channel_spec_of(model)
    auto_info = {}
    if search is not None:  # the pruned, fine-tuned model measured on the runtime again (not its MACs)
        from edgecv.autotune.select import deploy_figures, meets, resolve_budget

        final = None
        if D.is_main():
            measurer = make_measurer(c, ctx.bundle, ctx.log)
            try:
                final = measurer.measure_model(model)
            finally:
                measurer.close()
        final = D.broadcast_object(final)
        fig = deploy_figures(final)
        ok = meets(resolve_budget(c.target, c.budget_ms, c.budget_fps), fig)
        final["meets_budget"] = ok
        ctx.log(f"prune: final model {final['deploy_precision'] or '-'} "
                + (f"p50 {fig['p50_ms']:.3f} ms, p90 {fig['p90_ms']:.3f} ms" if fig else "not measurable")
                + f" on {search['measurement']['runtime']}: {'meets' if ok else 'MISSES'} the budget")
        auto_info = {"target_macs_mode": "auto", "latency_search": search, "latency_final": final, "budget_met": ok}
    ck, sha = ctx.save("prune", model, {"val_top1": top1},
                       {"stage": "prune", "channel_spec": spec, "rounds": rounds})
    if D.is_main():
        partial.unlink(missing_ok=True)
    return {**stats, "val_top1": top1, "baseline_top1": baseline_top1, "unpruned_macs": base_stats["macs"],
            "macs_fraction": stats["macs"] / base_stats["macs"], "target_macs": target,
            "importance": c.importance, "epochs": c.epochs_prune, "rounds": rounds,
            "prune_s": round(t_prune, 2), **auto_info, "checkpoint": ck, "sha256": sha}


def stage_quantize(ctx: Context) -> dict:
    from edgecv.nn.spec import channel_spec_of
    from edgecv.quant.qat import QuantConfig, calibrate, freeze_bn, prepare_qat, set_observers

    c = ctx.cfg
    train, val = ctx.datasets()
    model = ctx.load_stage_model("prune")
    fp32_top1 = float(ctx.run.data["stages"]["prune"].get("val_top1", float("nan")))
    stats = ctx.model_stats(model)  # MACs of the float graph (QAT wrappers call F.conv2d directly)
    spec = channel_spec_of(model)
    qcfg = QuantConfig(trace_size=ctx.img_size, float_stem=not c.int8_stem)
    model = prepare_qat(model, qcfg)
    state = ctx.out / "quantize.state"
    if ctx.resume and state.is_file():
        # fit restores weights, observers and freeze flags from its state file; PTQ figure from run.json
        ptq_top1 = float(ctx.run.stage("quantize").get("ptq_top1", float("nan")))
        ptq_model = None
    else:
        calib = sample_calibration(ctx.bundle.train, c.calib_size, c.seed).with_transform(
            ctx.bundle.preprocess.eval_transform())
        loader = torch.utils.data.DataLoader(calib, batch_size=c.batch_size, shuffle=False)
        model.to(ctx.device)
        n_cal = calibrate(model, loader, device=ctx.device)
        model.to("cpu")
        ptq_top1 = ctx.evaluate(model, "ptq val")
        ctx.log(f"quantize: PTQ (calibrated on {n_cal} images) val top-1 {ptq_top1:.2f}% "
                f"(FP32 pruned {fp32_top1:.2f}%)")
        ctx.run.set_stage("quantize", ptq_top1=ptq_top1, calib_images=n_cal)
        ptq_model = None
    del ptq_model
    E = c.epochs_qat
    bn_epoch = math.floor(c.freeze_bn_at * E + 0.5)
    obs_epoch = math.floor(c.freeze_observers_at * E + 0.5)

    def on_epoch_start(epoch: int, m: nn.Module) -> None:
        if epoch >= bn_epoch:
            freeze_bn(m)
        if epoch >= obs_epoch:
            set_observers(m, False)

    kd = ctx.kd_loss(model)
    res = fit(model, train, val, ctx.train_cfg(E, "qat", lr=c.lr * c.qat_lr_scale), loss_fn=kd, state_path=state,
              resume=ctx.resume, on_epoch_start=on_epoch_start, params=_fit_params(model, kd), log=ctx.log)
    kd.close()
    if E > 0:
        # the saved model freezes what fit selected; from here on ranges and BN statistics stay fixed
        freeze_bn(model)
        set_observers(model, False)
    qat_top1 = res.best_top1 if res.history else ptq_top1
    qmeta = model.edgecv_quant  # the config with the resolved output fake-quant placement
    meta = {"stage": "quantize", "channel_spec": spec, "quant": qmeta}
    ck, sha = ctx.save("quantize", model, {"val_top1": qat_top1, "ptq_top1": ptq_top1}, meta)
    if D.is_main():
        state.unlink(missing_ok=True)
    return {**stats, "val_top1": qat_top1, "ptq_top1": ptq_top1, "fp32_top1": fp32_top1,
            "epochs": E, "lr": c.lr * c.qat_lr_scale, "freeze_bn_epoch": bn_epoch, "freeze_observers_epoch": obs_epoch,
            "quant": qmeta, "history": res.history, "checkpoint": ck, "sha256": sha}


STAGE_FN = {"distill": stage_distill, "prune": stage_prune, "quantize": stage_quantize}


def compress(cfg: CompressConfig, stages: list[str] | None = None, resume: bool = False,
             log: Callable[[str], None] | None = None,
             on_selection: Callable[[dict], None] | None = None) -> dict:
    """Run the requested stages; returns run.json's content.

    ``cfg.student == "auto"``: the student is chosen first (:func:`run_selection`; ``on_selection`` gets the
    record); a budget no candidate meets raises :class:`edgecv.autotune.select.SelectionFailed` before anything is
    written. ``cfg.select_only``: record the choice in run.json and run no stage.
    """
    log = log or (lambda s: None)
    cfg.validate()
    stages = stages or list(STAGES)
    if cfg.select_only:
        stages = []
    if cfg.auto_student and D.is_distributed():
        raise UserError("--student auto measures latency in one process: run it without torchrun "
                        "(or pick the student first with --select-only, then pass --student NAME)")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    prev = Run.load(out)
    if resume and prev is None:
        raise UserError(f"--resume: no run.json in {out} to resume")
    # a stage whose input stage is neither requested nor already done cannot run
    for st in stages:
        need = STAGE_INPUT[st]
        if need and need not in stages and not (prev and prev.done(need)):
            raise UserError(f"--stages {','.join(stages)}: stage '{st}' needs the output of '{need}', "
                            f"which is not in {out} (add it to --stages)")
    device = D.resolve_device(cfg.device)
    if D.is_distributed() and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    t_all = time.perf_counter()
    bundle = load_train_val(cfg.data, img_size=cfg.img_size, seed=cfg.seed, skip_bad=cfg.skip_bad)
    teacher_path = cfg.teacher or auto_teacher(cfg, log)
    # the student's input size: --img-size, else the teacher's, else the data default
    t_probe = load_checkpoint(teacher_path, arch=cfg.teacher_arch, trust_pickle=cfg.trust_pickle)
    img_size = cfg.img_size or (t_probe.preprocess.input_size if t_probe.preprocess else bundle.preprocess.input_size)
    if img_size != bundle.preprocess.input_size:
        bundle.preprocess = bundle.preprocess.with_size(img_size)
    del t_probe
    teacher = load_teacher(teacher_path, cfg.teacher_arch, bundle.class_names, img_size, cfg.trust_pickle)
    reuse = prev is not None and (resume or any(STAGE_INPUT[s] and STAGE_INPUT[s] not in stages for s in stages))
    selection = None
    run_cfg = cfg
    if cfg.auto_student:
        prev_sel = prev.data.get("student_selection") if prev is not None else None
        if reuse and prev_sel and prev_sel.get("chosen"):
            selection = prev_sel
            log(f"--student auto: reusing the choice recorded in {out / 'run.json'}: {selection['chosen']}")
        else:
            selection = run_selection(cfg, bundle, teacher, device, log)  # SelectionFailed: nothing written
        if on_selection is not None:
            on_selection(selection)
        run_cfg = replace(cfg, student=selection["chosen"])
    arch_info(run_cfg.student)
    if reuse:
        if prev.data.get("teacher", {}).get("sha256") != teacher.sha256:
            raise UserError(f"{out}: this run was made with another teacher "
                            f"({prev.data.get('teacher', {}).get('path')}); use a new --out")
        if prev.data.get("student") != run_cfg.student or prev.data.get("class_names") != bundle.class_names:
            raise UserError(f"{out}: this run was made with another student or dataset; use a new --out")
        run = prev
    else:
        run = Run(out, {"schema": SCHEMA, "stages": {s: {"status": "pending"} for s in STAGES}, "completed": []})
    eff = {**cfg.to_dict(), "teacher": teacher_path, "img_size": img_size}
    run.data.update({"schema": SCHEMA, "config": eff, "student": run_cfg.student, "img_size": img_size,
                     "class_names": bundle.class_names, "data": bundle.source,
                     "preprocess": bundle.preprocess.to_dict(), "edgecv_stages": list(STAGES)})
    if selection is not None:
        run.data["student_selection"] = selection
    ctx = Context(run_cfg, run, bundle, teacher, img_size, device, resume, log)
    if D.is_main():
        out.mkdir(parents=True, exist_ok=True)
        import yaml

        write_text_atomic(out / "config.yaml", yaml.safe_dump(eff, sort_keys=False))
    if "teacher" not in run.data or run.data["teacher"].get("sha256") != teacher.sha256 \
            or run.data["teacher"].get("val_top1") is None:
        t_top1 = ctx.evaluate(teacher.model, "teacher val")
        run.data["teacher"] = {"path": str(Path(teacher_path).resolve()), "sha256": teacher.sha256,
                               "arch": teacher.arch, "kind": teacher.kind, "val_top1": t_top1,
                               "input_size": teacher.preprocess.input_size if teacher.preprocess else img_size}
    log(f"teacher {teacher.arch or teacher.kind}: val top-1 {run.data['teacher']['val_top1']:.2f}%; "
        f"student {run_cfg.student} at {img_size}px; stages {','.join(stages) or 'none (--select-only)'} -> {out}")
    run.save()
    for st in stages:
        if resume and run.done(st):
            log(f"{st}: done already, skipping")
            continue
        if not resume:
            for suffix in (".state", ".partial.pt"):
                p = out / f"{st}{suffix}"
                if D.is_main() and p.exists():
                    p.unlink()
        # a re-run invalidates every later stage
        for later in STAGES[STAGES.index(st) + 1:]:
            if run.data["stages"].get(later, {}).get("status") == "done" and later not in stages:
                run.reset_stage(later)
        prior = {k: v for k, v in run.stage(st).items()
                 if k in ("ptq_top1", "calib_images", "latency_search")} if resume else {}
        run.data["stages"][st] = {"status": "running", **prior}
        run.set_stage(st, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        t0 = time.perf_counter()
        try:
            info = STAGE_FN[st](ctx)
        except BaseException as e:
            run.set_stage(st, status="failed", error=f"{type(e).__name__}: {str(e)[:300]}")
            raise
        run.data["stages"][st] = {"status": "done", **info, "wall_s": round(time.perf_counter() - t0, 2)}
        run.set_stage(st)
        log(f"{st}: val top-1 {info['val_top1']:.2f}%, {info['macs']:,} MACs, {info['params']:,} params "
            f"({run.data['stages'][st]['wall_s']:.0f}s)")
    run.data["wall_s"] = round(time.perf_counter() - t_all, 2)
    run.save()
    D.barrier()
    return run.data
