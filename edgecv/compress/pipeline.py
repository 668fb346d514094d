"""``edgecv compress``: knowledge distillation -> structured pruning -> INT8 QAT, staged and resumable.

Every stage writes its checkpoint (``distill.pt``, ``prune.pt``, ``quantize.pt``, edgecv format) into RUN_DIR
and ``run.json`` (schema ``edgecv.run/1``, the contract the exporter reads) is rewritten atomically after every
stage status change; it stays strict JSON (a non-finite figure is written as ``null``). Interrupted stages
continue mid-way from their fit state files (``*.state``) with ``resume=True``. Under torchrun all ranks train;
only rank 0 writes files.

Target-aware choices (``--student auto``, ``--target-macs auto``) are :class:`AutoHooks` passed in by
:func:`edgecv.autotune.run.compress`; this package never measures latency itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from edgecv import distributed as D
from edgecv.compress.config import CompressConfig
from edgecv.compress.distill import KDConfig, KDLoss
from edgecv.compress.judge import (
    balanced_text,
    gap_line,
    judge_stage,
    teacher_gap,
    teacher_report,
    zero_recall_text,
)
from edgecv.compress.softlabels import (
    SoftLabelDataset,
    SoftLabels,
    live_teacher_path,
    student_step_path,
    teacher_bf16,
)
from edgecv.compress.softlabels import prepare as prepare_soft_labels
from edgecv.compress.stages import STAGE_FN
from edgecv.contracts.rundir import DISTILL, SCHEMA, STAGE_INPUT, STAGES, Run
from edgecv.data.augment import resolve_preset
from edgecv.data.cache import attach as attach_decode_cache
from edgecv.data.datasets import DataBundle, load_train_val
from edgecv.errors import UserError
from edgecv.models.checkpoint import load_checkpoint, save_checkpoint
from edgecv.models.registry import arch_info
from edgecv.nn.graph import count_macs, count_params
from edgecv.training.balance import class_weights, labels_of
from edgecv.training.config import TrainConfig, large_set
from edgecv.training.loop import evaluate_top1, resolve_batch_size
from edgecv.training.losses import ClassificationLoss
from edgecv.training.teacher import Teacher, auto_teacher, load_teacher
from edgecv.utils import resolve_device, sha256_file, write_text_atomic

Log = Callable[[str], None]


@dataclass
class AutoHooks:
    """The target-aware steps, provided by :mod:`edgecv.autotune.run` (rank 0 only where they measure).

    * ``select(cfg, bundle, teacher, device, previous)`` -> the ``student_selection`` record (``previous``: the
      one recorded in run.json when the run is reused, else None);
    * ``prune_search(ctx, model, grad_fn)`` -> the ``latency_search`` record (``"fraction"``, ``"met"``, ...);
    * ``final_latency(ctx, pruned_model, search)`` -> extra prune-stage fields (the final model measured again).
    """

    select: Callable[..., dict] | None = None
    prune_search: Callable[..., dict] | None = None
    final_latency: Callable[..., dict] | None = None


@dataclass
class Context:
    cfg: CompressConfig
    run: Run
    bundle: DataBundle
    teacher: Teacher
    img_size: int
    device: torch.device
    resume: bool
    log: Log
    hooks: AutoHooks = field(default_factory=AutoHooks)
    soft: SoftLabels | None = None  # the teacher's stored soft labels (None: the live teacher)
    _recovery: tuple[str, nn.Module | None] | None = None  # recovery_source(), once chosen

    @property
    def out(self) -> Path:
        return self.run.out

    def train_cfg(self, epochs: int, desc: str, lr: float | None = None, epoch_base: int = 0,
                  augment: str | None = None) -> TrainConfig:
        """``epoch_base``: the stage's first epoch in the whole run (distill 0, then the prune rounds, then QAT),
        so every stage draws new shuffles, augmentations and stored views (TrainConfig.epoch_base);
        ``augment``: the stage's preset where it is not the run's (:meth:`recovery_augment`)."""
        return train_config(self.cfg, epochs, desc, lr, augment or self.bundle.preprocess.augment_preset,
                            epoch_base)

    def datasets(self, augment: str | None = None):
        """The training and val sets; ``augment``: a preset other than the run's, whose views the teacher's
        stored soft labels do not cover (a teacher as the source then runs live)."""
        pre = self.bundle.preprocess
        if augment is not None and augment != pre.augment_preset:
            train = self.bundle.train.with_transform(pre.with_augment(augment).train_transform())
        elif self.soft is None:
            train = self.bundle.train.with_transform(pre.train_transform())
        else:
            train = SoftLabelDataset(self.bundle.train, pre, self.soft, self.cfg.seed)
        return train, self.bundle.val.with_transform(pre.eval_transform())

    def kd_loss(self, student: nn.Module, source: nn.Module | None = None) -> KDLoss:
        """The KD loss of ``student``, distilled from the teacher or from ``source`` (a model of the student's own
        preprocessing, run live: the stored soft labels are the teacher's)."""
        c = self.cfg
        if c.feature_kd > 0 and source is None and self.teacher.kind in ("torchscript",):
            raise UserError("--feature-kd needs a teacher checkpoint with modules (not TorchScript)")
        model, pre = (self.teacher.model, self.teacher.preprocess) if source is None else \
            (source, self.bundle.preprocess)
        kd = KDLoss(model, KDConfig(c.temperature, c.alpha, c.feature_kd), self.bundle.preprocess, pre,
                    student=student.to(self.device), device=self.device)
        kd.replay = source is None
        kd.cpu_bf16 = teacher_bf16(self.device, c.teacher_precision)[0]
        kd.teacher_channels_last(c.channels_last)
        if c.balance == "weights" or c.loss != "ce":  # the hard-label term, class-weighted and/or focal
            weight = class_weights(labels_of(self.bundle.train), self.bundle.num_classes) \
                if c.balance == "weights" else None
            kd.hard_loss = ClassificationLoss(c.loss, kd.cfg.label_smoothing, weight)
        return kd

    def recovery_source(self) -> tuple[str, nn.Module | None]:
        """Whom the prune fine-tunes and QAT distil from (``--recovery-kd``): ``("teacher", None)`` or
        ``("student", the distilled unpruned student)``; auto takes the student where its val top-1 is above the
        teacher's on a set of at least LARGE_SET training images (docs/compress.md: a pruned student distilled from
        a weaker teacher ends near the teacher)."""
        if self._recovery is None:
            choice = self.cfg.recovery_kd
            s_top1 = self.run.data["stages"].get(DISTILL, {}).get("val_top1")
            if choice == "auto":
                t_top1 = self.run.data.get("teacher", {}).get("val_top1")
                better = s_top1 is not None and t_top1 is not None and s_top1 > t_top1
                # under LARGE_SET training images the val set is too small for "higher" to mean much, and on
                # hymenoptera (245 photos) the student as the source with 15 prune epochs lost 5-6 pt (RESULTS.md)
                large = large_set(len(self.bundle.train))
                choice = "student" if better and large and self.run.done(DISTILL) else "teacher"
            if choice == "student":
                self._recovery = ("student", self.load_stage_model(DISTILL).eval())
                self.log(f"recovery KD: from the distilled student (val top-1 {s_top1 or float('nan'):.2f}%)")
            else:
                self._recovery = ("teacher", None)
        return self._recovery

    def recovery_augment(self) -> str:
        """The augmentation preset of the prune stage and QAT (``--recovery-augment``): auto is ``light``
        where they distil from the distilled student (:meth:`recovery_source`), else the run's own. On
        cifar10-mini at 96 px, ``light`` (pad, crop, flip) instead of the run's ``standard`` (random resized
        crops) ended the prune stage at 85.08 % instead of 83.13 (two seeds; the distilled student 85.18 %):
        the pruned student then fits its source on the training images (docs/compress.md)."""
        a = self.cfg.recovery_augment
        if a == "auto":
            a = "light" if self.recovery_source()[0] == "student" else self.bundle.preprocess.augment_preset
        return a

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


def train_config(c: CompressConfig, epochs: int, desc: str, lr: float | None = None,
                 augment: str = "auto", epoch_base: int = 0) -> TrainConfig:
    """The fit settings of every compress training (stages and the --student auto probes); ``augment``: the
    resolved preset of the data ("strong": MixUp/CutMix per batch)."""
    return TrainConfig(epochs=epochs, batch_size=c.batch_size, lr=lr if lr is not None else c.lr,
                       weight_decay=c.weight_decay, label_smoothing=0.0, workers=c.workers, seed=c.seed,
                       device=c.device, desc=desc, augment=augment, balance=c.balance, loss=c.loss,
                       channels_last_cpu=c.channels_last, epoch_base=epoch_base)


# ---------------------------------------------------------------------------------------------- driver
def _check_request(cfg: CompressConfig, stages: list[str], resume: bool, hooks: AutoHooks) -> Run | None:
    """Everything decidable before any work: the output folder, resume/overwrite, stage inputs, hooks."""
    if cfg.auto_student and hooks.select is None or cfg.auto_macs and hooks.prune_search is None:
        raise UserError("--student auto / --target-macs auto: run through edgecv.autotune.run.compress")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    prev = Run.load(out)
    if resume and prev is None:
        raise UserError(f"--resume: no run.json in {out} to resume")
    if prev is not None and not resume and prev.data.get("completed") and \
            all(STAGE_INPUT[s] in stages or STAGE_INPUT[s] is None for s in stages):
        raise UserError(f"--out {out} holds a finished run ({', '.join(prev.data['completed'])} done): "
                        "use --resume or another --out")
    for st in stages:  # a stage whose input stage is neither requested nor already done cannot run
        need = STAGE_INPUT[st]
        if need and need not in stages and not (prev and prev.done(need)):
            raise UserError(f"--stages {','.join(stages)}: stage '{st}' needs the output of '{need}', "
                            f"which is not in {out} (add it to --stages)")
    return prev


def _load_inputs(cfg: CompressConfig, log: Log) -> tuple[DataBundle, str, Teacher, int]:
    """The data, the teacher and the student's input size (--img-size, else the teacher's, else the data's)."""
    bundle = load_train_val(cfg.data, img_size=cfg.img_size, seed=cfg.seed, skip_bad=cfg.skip_bad,
                            allow_duplicates=cfg.allow_duplicates)
    bundle.scan.log(log)
    teacher_path = cfg.teacher or auto_teacher(cfg, log)
    t_probe = load_checkpoint(teacher_path, arch=cfg.teacher_arch, trust_pickle=cfg.trust_pickle,
                              arch_flag="--teacher-arch")
    img_size = cfg.img_size or (t_probe.preprocess.input_size if t_probe.preprocess else bundle.preprocess.input_size)
    if img_size != bundle.preprocess.input_size:
        bundle.preprocess = bundle.preprocess.with_size(img_size)
    # the student stages' augmentation: --augment, else the preset the teacher was trained with, else by size
    recorded = t_probe.preprocess.augment_preset if t_probe.preprocess else None
    bundle.preprocess = bundle.preprocess.with_augment(resolve_preset(cfg.augment, img_size, recorded))
    del t_probe
    teacher = load_teacher(teacher_path, cfg.teacher_arch, bundle.class_names, img_size, cfg.trust_pickle)
    return bundle, teacher_path, teacher, img_size


def _open_run(cfg: CompressConfig, run_cfg: CompressConfig, prev: Run | None, reuse: bool, teacher: Teacher,
              teacher_path: str, bundle: DataBundle, img_size: int, selection: dict | None) -> Run:
    out = Path(cfg.out)
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
                     "class_names": bundle.class_names, "data": bundle.source, "data_scan": bundle.scan.to_dict(),
                     "preprocess": bundle.preprocess.to_dict(), "edgecv_stages": list(STAGES)})
    if selection is not None:
        run.data["student_selection"] = selection
    if D.is_main():
        import yaml

        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", yaml.safe_dump(eff, sort_keys=False))
    return run


def _record_teacher(run: Run, teacher: Teacher, teacher_path: str, img_size: int, judged: dict) -> None:
    """run.json's ``teacher``: the file and its val figures (:func:`edgecv.compress.judge.teacher_report`)."""
    run.data["teacher"] = {"path": str(Path(teacher_path).resolve()), "sha256": teacher.sha256,
                           "arch": teacher.arch, "kind": teacher.kind, **judged,
                           "input_size": teacher.preprocess.input_size if teacher.preprocess else img_size}


def _run_stage(ctx: Context, st: str, stages: list[str]) -> None:
    run, out = ctx.run, ctx.out
    if not ctx.resume:
        for suffix in (".state", ".partial.pt"):
            p = out / f"{st}{suffix}"
            if D.is_main() and p.exists():
                p.unlink()
    for later in STAGES[STAGES.index(st) + 1:]:  # a re-run invalidates every later stage
        if run.data["stages"].get(later, {}).get("status") == "done" and later not in stages:
            run.reset_stage(later)
    prior = {k: v for k, v in run.stage(st).items()
             if k in ("ptq_top1", "calib_images", "latency_search")} if ctx.resume else {}
    run.data["stages"][st] = {"status": "running", **prior}
    run.set_stage(st, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    t0, info = time.perf_counter(), {}
    try:
        info = STAGE_FN[st](ctx)
        judge_stage(ctx, st, info)  # no better than the baseline: CheckFailed (record and checkpoint kept)
    except BaseException as e:
        run.data["stages"][st] = {**run.stage(st), **info, "status": "failed",
                                  "error": f"{type(e).__name__}: {str(e)[:300]}"}
        run.set_stage(st)
        raise
    run.data["stages"][st] = {"status": "done", **info, "wall_s": round(time.perf_counter() - t0, 2)}
    run.set_stage(st)
    top1 = info["val_top1"]
    ctx.log(f"{st}: val top-1 {f'{top1:.2f}' if top1 is not None else '-'}%{balanced_text(info)}, {info['macs']:,} "
            f"MACs, {info['params']:,} params ({run.data['stages'][st]['wall_s']:.0f}s){zero_recall_text(info)}")


def compress(cfg: CompressConfig, stages: list[str] | None = None, resume: bool = False, log: Log | None = None,
             hooks: AutoHooks | None = None) -> dict:
    """Run the requested stages; returns run.json's content.

    ``cfg.student == "auto"`` / ``cfg.target_macs == "auto"`` need ``hooks`` (:func:`edgecv.autotune.run.compress`
    passes them): the student is chosen first by ``hooks.select``. ``cfg.select_only``: record the choice in
    run.json and run no stage.
    """
    log = log or (lambda s: None)
    hooks = hooks or AutoHooks()
    cfg.validate()
    stages = [] if cfg.select_only else (stages or list(STAGES))
    prev = _check_request(cfg, stages, resume, hooks)
    device = resolve_device(cfg.device)  # one line naming the devices here
    if D.is_distributed() and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    t_all = time.perf_counter()
    bundle, teacher_path, teacher, img_size = _load_inputs(cfg, log)
    decode_rec = attach_decode_cache(bundle, cfg.decode_cache, log)  # after the final preprocessing
    cfg = replace(cfg, batch_size=resolve_batch_size(cfg.batch_size, len(bundle.train), log),
                  epochs_prune=cfg.resolve_prune_epochs(len(bundle.train)))
    reuse = prev is not None and (resume or any(STAGE_INPUT[s] and STAGE_INPUT[s] not in stages for s in stages))
    judged = teacher_report(cfg, bundle, teacher, device, prev.data.get("teacher") if reuse else None, log)
    selection, run_cfg = None, cfg
    if cfg.auto_student:
        previous = prev.data.get("student_selection") if reuse else None
        selection = hooks.select(cfg, bundle, teacher, device, previous)  # fails before anything is written
        run_cfg = replace(cfg, student=selection["chosen"])
    arch_info(run_cfg.student)
    run = _open_run(cfg, run_cfg, prev, reuse, teacher, teacher_path, bundle, img_size, selection)
    ctx = Context(run_cfg, run, bundle, teacher, img_size, device, resume, log, hooks)
    _record_teacher(run, teacher, teacher_path, img_size, judged)
    ctx.soft, run.data["teacher_cache"] = prepare_soft_labels(ctx, log) if stages else (None, {"used": False})
    run.data["teacher_runtime"] = live_teacher_path(device, run_cfg.channels_last, run_cfg.teacher_precision)
    run.data["student_step"] = student_step_path(device, run_cfg.channels_last)
    run.data["decode_cache"] = decode_rec
    t_rec = run.data["teacher"]
    log(f"teacher {teacher.arch or teacher.kind}: val top-1 {t_rec['val_top1']:.2f}%{balanced_text(t_rec)}"
        f"{zero_recall_text(t_rec)}; "
        f"student {run_cfg.student} at {img_size}px; stages {','.join(stages) or 'none (--select-only)'} -> {cfg.out}")
    run.save()
    for st in stages:
        if resume and run.done(st):
            log(f"{st}: done already, skipping")
            continue
        _run_stage(ctx, st, stages)
    run.data["wall_s"] = round(time.perf_counter() - t_all, 2)
    run.data["teacher_gap"] = teacher_gap(run.data)
    if run.data["teacher_gap"]:
        log(gap_line(run.data["teacher_gap"]))
    run.save()
    D.barrier()
    return run.data
