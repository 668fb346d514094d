"""Target-aware student choice (``edgecv compress --student auto``).

1. every candidate student is built with the data's classes, exported FP32 and INT8 and timed on the target's
   runtime (:class:`~edgecv.autotune.measure.Measurer`: x86 OpenVINO CPU, jetson ONNX Runtime (host proxy),
   android ExecuTorch), all candidates interleaved;
2. the deploy precision of a candidate follows the measurement (the bench rule). Candidates whose
   deploy-precision latency misses the budget (p90 ms or fps, as in ``edgecv bench``) are dropped;
3. the rest are ranked by a short KD probe (a few epochs on a class-balanced subset of the user's training data,
   same seed for all, scored on the same validation images): every probe is compared with the best probe image
   by image, by the bench rule (:func:`edgecv.targets.stats.compare`: exact McNemar and the interval of the
   top-1 difference, tolerance :data:`~edgecv.targets.policy.ACCURACY_TOLERANCE`). The candidates not shown
   worse than the best by at least the tolerance count as equally accurate, and the fastest of them wins; on a
   few hundred probe images a 2-pt gap is usually noise, and speed is measured reliably.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from edgecv.autotune.measure import Measurer, deploy_figures, meets
from edgecv.errors import CheckFailed, UserError
from edgecv.targets.budget import budget_text
from edgecv.targets.policy import ACCURACY_TOLERANCE
from edgecv.targets.stats import compare, top1_interval

DEFAULT_CANDIDATES = ("mobilenet_v3_small", "mobilenet_v3_large", "tf_mobilenetv3_small_minimal_100",
                      "tf_mobilenetv3_large_minimal_100", "efficientnet_lite0", "efficientnet_lite1")


class SelectionFailed(CheckFailed):
    """No candidate meets the budget (exit 1); ``selection`` holds the measured table."""

    def __init__(self, msg: str, selection: dict):
        super().__init__(msg)
        self.selection = selection


def parse_candidates(value: str | list | tuple | None) -> list[str]:
    from edgecv.models.registry import STUDENTS

    if value is None or value == "":
        return list(DEFAULT_CANDIDATES)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    bad = [v for v in items if v not in STUDENTS]
    if bad or not items:
        raise UserError(f"--candidates: unknown student(s) {', '.join(bad) or repr(value)} "
                        f"(students: {', '.join(STUDENTS)})")
    return list(dict.fromkeys(items))


@dataclass
class ProbeSpec:
    """What a KD probe runs on: the training run's data, teacher and hyper-parameters."""

    bundle: object  # DataBundle (preprocess at the training size)
    teacher: object  # pipeline.Teacher
    kd: object  # KDConfig
    train_cfg: Callable[[int, str], object]  # (epochs, desc) -> TrainConfig
    device: torch.device
    epochs: int
    images: int
    val_images: int
    seed: int = 0
    teacher_cache: str = "auto"  # off | auto | views=K: the probes replay the teacher's stored soft labels
    teacher_precision: str = "auto"  # the teacher's CPU forward (compress --teacher-precision)


PROBE_BATCH = 16


def probe_accuracy(arch: str, spec: ProbeSpec, log: Callable[[str], None]) -> dict:
    """Short KD of a fresh ``arch`` on a class-balanced training subset; best val top-1 on a val subset."""
    from edgecv.compress import softlabels as SL
    from edgecv.compress.distill import KDLoss
    from edgecv.data.datasets import sample_calibration
    from edgecv.models.registry import create_model
    from edgecv.training.loop import fit
    from edgecv.training.metrics import predict_logits
    from edgecv.utils import seed_everything

    b = spec.bundle
    pre = b.preprocess
    train_s, val_s = sample_calibration(b.train, spec.images, spec.seed), sample_calibration(b.val, spec.val_images, spec.seed)
    val = val_s.with_transform(pre.eval_transform())
    cfg = dataclasses.replace(spec.train_cfg(spec.epochs, f"probe {arch}"), batch_size=PROBE_BATCH)
    bf16 = SL.teacher_bf16(spec.device, spec.teacher_precision)[0]  # the teacher's forward, as compress runs it
    if SL.off_reason(spec.teacher_cache, spec.kd.alpha, spec.kd.beta, pre) is None:  # built once, every probe reads
        views = SL.parse_teacher_cache(spec.teacher_cache) or SL.default_views(spec.epochs, bf16)
        soft, _ = SL.soft_labels(train_s, val_s, b.num_classes, pre, spec.teacher, views, 64, cfg.workers,
                                 spec.device, log, channels_last=cfg.channels_last_cpu,
                                 precision=spec.teacher_precision)
        train = SL.SoftLabelDataset(train_s, pre, soft, spec.seed)
    else:
        train = train_s.with_transform(pre.train_transform())
    seed_everything(spec.seed)
    model = create_model(arch, b.num_classes)
    kd = KDLoss(spec.teacher.model, spec.kd, pre, spec.teacher.preprocess, student=model, device=spec.device)
    kd.cpu_bf16 = bf16
    kd.teacher_channels_last(cfg.channels_last_cpu)
    t0 = time.perf_counter()
    # a probe is short: small batches give it enough optimizer steps to move off chance (1 000 images at batch 64
    # are 16 steps an epoch, and MobileNetV3 students stay at 10 % on cifar10-mini after that)
    res = fit(model, train, val, cfg, loss_fn=kd,
              params=[p for p in model.parameters() if p.requires_grad] + kd.extra_params(), log=log)
    kd.close()
    logits, labels = predict_logits(model, val, 64, "cpu", desc=f"probe {arch} predictions")  # the best weights
    return {"top1": res.best_top1, "correct": logits.argmax(1) == labels, "epochs": spec.epochs,
            "train_images": len(train), "val_images": len(val), "wall_s": round(time.perf_counter() - t0, 2)}


def _measure_candidates(candidates: list[str], num_classes: int, measurer: Measurer, budget,
                        log: Callable[[str], None]) -> list[dict]:
    """One row per candidate: its FP32/INT8 figures, deploy precision and budget status (``status`` set only
    for the dropped ones)."""
    from edgecv.models.registry import arch_info, create_model
    from edgecv.nn.graph import count_macs, count_params

    rows: list[dict] = []
    arts: dict[str, dict] = {}
    for arch in candidates:
        torch.manual_seed(0)
        m = create_model(arch, num_classes).eval()
        rows.append({"arch": arch, "source": arch_info(arch).source, "int8_friendly": arch_info(arch).int8_friendly,
                     "params": count_params(m), "macs_deploy": count_macs(m, measurer.size)})
        log(f"auto: exporting {arch} FP32 + INT8 at {measurer.size}px for {measurer.runtime}")
        arts[arch] = measurer.export(m)
    log(f"auto: timing {len(candidates)} candidate(s) x FP32/INT8 on {measurer.runtime}, "
        f"{measurer.threads} thread(s), interleaved")
    meas = measurer.measure(arts)
    for row in rows:
        m = meas[row["arch"]]
        row["fp32"], row["int8"] = m.get("fp32"), m.get("int8")
        row["deploy_precision"], row["deploy_reason"] = m["deploy_precision"], m["deploy_reason"]
        fig = deploy_figures(m)
        row["deploy_p50_ms"] = fig["p50_ms"] if fig else None
        row["deploy_p90_ms"] = fig["p90_ms"] if fig else None
        row["measured_on"] = fig["measured_on"] if fig else None
        row["host_proxy"] = fig["host_proxy"] if fig else None
        ok = meets(budget, fig)
        row["within_budget"] = ok
        row["probe_top1"] = None
        if fig is None:
            row["status"], row["reason"] = "dropped: not measurable", m["deploy_reason"]
        elif ok is False:
            v = f"p90 {fig['p90_ms']:.3f} ms" if budget.metric == "p90_ms" else f"{fig['fps']:.1f} fps"
            row["status"] = "dropped: over budget"
            row["reason"] = f"{row['deploy_precision'].upper()} {v} misses the budget {budget_text(budget)}"
    return rows


def _no_candidate(rows: list[dict], measurer: Measurer, budget, sel: dict) -> SelectionFailed:
    measured = [r for r in rows if r["deploy_p50_ms"] is not None]
    if not measured:
        return SelectionFailed(f"--student auto: no candidate could be measured on {measurer.runtime} "
                               f"({rows[0]['reason'] if rows else 'no candidates'})", sel)
    best = min(measured, key=lambda r: r["deploy_p90_ms"])
    return SelectionFailed(f"--student auto: no candidate meets the budget {budget_text(budget)} on "
                           f"{measurer.runtime} at {measurer.size}px; the fastest is {best['arch']} "
                           f"({best['deploy_precision'].upper()} p50 {best['deploy_p50_ms']:.3f} ms, "
                           f"p90 {best['deploy_p90_ms']:.3f} ms)", sel)


def _lat(r: dict) -> str:
    return f"{r['deploy_precision'].upper()} p50 {r['deploy_p50_ms']:.3f} ms"


def _acc(r: dict) -> str | None:
    return f"probe top-1 {r['probe_top1']:.2f}%" if r["probe_top1"] is not None else None


def _rank(live: list[dict], key: str, within: str) -> dict:
    """Status and reason of every in-budget candidate (``live`` is sorted best first); returns the winner."""
    win = live[0]
    for i, r in enumerate(live):
        r["rank"] = i + 1
        figs = ", ".join(x for x in (_acc(r), _lat(r)) if x)
        call = f"; {r['probe_call']}" if r.get("probe_call") else ""
        if r is win:
            r["status"] = "chosen"
            r["reason"] = (f"the only candidate {within}: {figs}" if len(live) == 1 else
                           f"{key} of {len(live)} candidates {within}: {figs}{call}")
        else:
            r["status"] = "ranked lower"
            wa = _acc(win) or f"p50 {win['deploy_p50_ms']:.3f} ms"
            r["reason"] = f"rank {i + 1}: {figs} (winner {win['arch']}: {wa}){call}"
    return win


def _rank_probes(live: list[dict], correct: dict[str, object], tolerance: float) -> tuple[list[dict], str]:
    """The probed candidates in rank order: those not shown worse than the best probe by at least ``tolerance``
    (paired on the same validation images), fastest first, then the rest by probe top-1."""
    best = max(live, key=lambda r: (r["probe_top1"], -r["deploy_p50_ms"]))
    for r in live:
        if r is best:
            r["probe_vs_best"], r["probe_call"] = None, "the best probe"
            continue
        p = compare(correct[best["arch"]], correct[r["arch"]], tolerance)
        r["probe_vs_best"], r["probe_call"] = p.to_dict(), f"probe {p.text(best['arch'])}"
    kept = sorted([r for r in live if r["probe_vs_best"] is None or r["probe_vs_best"]["keeps"]],
                  key=lambda r: r["deploy_p50_ms"])
    refused = sorted([r for r in live if r not in kept], key=lambda r: -r["probe_top1"])
    key = (f"fastest of the {len(kept)} whose probe top-1 is not shown worse than the best by at least "
           f"{tolerance:g} pt, out" if len(kept) > 1 else "best probe top-1")
    return kept + refused, key


def select_student(candidates: list[str], num_classes: int, measurer: Measurer, budget, probe: ProbeSpec | None,
                   log: Callable[[str], None] = lambda m: None) -> dict:
    """Measure, filter by budget, probe and rank ``candidates``. Returns the ``student_selection`` record.

    Raises :class:`SelectionFailed` (exit 1) when no candidate meets the budget. ``probe=None`` ranks the
    in-budget candidates by deploy latency only (used when there is nothing to probe with).
    """
    t0 = time.perf_counter()
    rows = _measure_candidates(candidates, num_classes, measurer, budget, log)
    live = [r for r in rows if "status" not in r]
    sel = {"candidates": rows, "budget": budget.to_dict() if budget else None, "measurement": measurer.describe(),
           "probe": None, "chosen": None, "reason": None}
    if not live:
        sel["wall_s"] = round(time.perf_counter() - t0, 2)
        raise _no_candidate(rows, measurer, budget, sel)
    if probe is not None and len(live) > 1:
        sel["probe"] = {"epochs": probe.epochs, "images": probe.images, "val_images": probe.val_images,
                        "img_size": probe.bundle.preprocess.input_size, "seed": probe.seed}
        correct = {}
        for r in live:
            log(f"auto: KD probe of {r['arch']} ({probe.epochs} epoch(s), {probe.images} images)")
            p = probe_accuracy(r["arch"], probe, log)
            r["probe_top1"], r["probe_wall_s"], correct[r["arch"]] = p["top1"], p["wall_s"], p["correct"]
            r["probe_top1_ci"] = list(top1_interval(int(p["correct"].sum()), len(p["correct"])))
            sel["probe"].update(images=p["train_images"], val_images=p["val_images"])
        ranked, key = _rank_probes(live, correct, ACCURACY_TOLERANCE)
        sel["probe"]["tolerance_pt"] = ACCURACY_TOLERANCE
    else:
        ranked = sorted(live, key=lambda r: r["deploy_p50_ms"])
        key = "fastest"
    win = _rank(ranked, key, "within the budget" if budget else "measured (no budget given)")
    for r in live:
        r.pop("probe_call", None)
    sel["chosen"], sel["reason"] = win["arch"], win["reason"]
    sel["wall_s"] = round(time.perf_counter() - t0, 2)
    return sel
