"""``edgecv compress`` with the target-aware choices: the entry point the CLI calls.

:func:`compress` validates the ``--student auto`` / ``--target-macs auto`` options, and runs
:func:`edgecv.compress.pipeline.compress` with the hooks that measure on the target's runtime: the student
selection before the stages, the prune-fraction search and the final measurement of the pruned model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from edgecv import distributed as D
from edgecv.autotune.measure import AUTO_TARGETS, Measurer, deploy_figures, meets, resolve_budget
from edgecv.autotune.prune_search import search_prune_fraction
from edgecv.autotune.select import ProbeSpec, parse_candidates, select_student
from edgecv.compress.config import CompressConfig
from edgecv.compress.distill import KDConfig
from edgecv.compress.pipeline import AutoHooks, Context, train_config
from edgecv.compress.pipeline import compress as run_stages
from edgecv.data.datasets import DataBundle, sample_calibration
from edgecv.errors import UserError

Log = Callable[[str], None]
AUTO_DEFAULTS = {"deploy_size": 224, "probe_epochs": 2, "probe_images": 1000, "probe_val_images": 500, "min_time": 1.0}


def auto_opt(cfg: CompressConfig, key: str):
    v = getattr(cfg, key)
    return AUTO_DEFAULTS[key] if v is None else v


def validate(c: CompressConfig) -> None:
    """Flags of --student auto / --target-macs auto: valid combinations only (UserError, exit 2)."""
    c.validate()  # types and ranges first
    if c.budget_ms is not None and c.budget_fps is not None:
        raise UserError("give --budget-ms or --budget-fps, not both")
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
    if c.auto_student and D.is_distributed():
        raise UserError("--student auto measures latency in one process: run it without torchrun "
                        "(or pick the student first with --select-only, then pass --student NAME)")


def make_measurer(cfg: CompressConfig, bundle: DataBundle, log: Log) -> Measurer:
    """The target runtime's latency measurer at the deploy size, calibrated on a few training images."""
    size = auto_opt(cfg, "deploy_size")
    pre = bundle.preprocess.with_size(size)
    cal = sample_calibration(bundle.train, 16, cfg.seed)
    x = np.stack([pre.to_array(cal.load_image(i)) for i in range(len(cal))]).astype(np.float32)
    return Measurer(cfg.target, size, [x[i : i + 8] for i in range(0, len(x), 8)],
                    min_time_s=float(auto_opt(cfg, "min_time")), log=log)


def hooks(cfg: CompressConfig, log: Log, on_selection: Callable[[dict], None] | None = None) -> AutoHooks:
    """The measuring steps of ``cfg``'s auto options, for :func:`edgecv.compress.pipeline.compress`."""
    budget = resolve_budget(cfg.target, cfg.budget_ms, cfg.budget_fps)

    def select(c: CompressConfig, bundle: DataBundle, teacher, device: torch.device, previous: dict | None) -> dict:
        if previous and previous.get("chosen"):
            log(f"--student auto: reusing the choice recorded in {c.out}/run.json: {previous['chosen']}")
            sel = previous
        else:
            epochs = auto_opt(c, "probe_epochs")
            probe = ProbeSpec(bundle, teacher, KDConfig(c.temperature, c.alpha, c.feature_kd),
                              lambda e, desc: train_config(c, e, desc), device, epochs,
                              auto_opt(c, "probe_images"), auto_opt(c, "probe_val_images"), c.seed,
                              c.teacher_cache, c.teacher_precision)
            measurer = make_measurer(c, bundle, log)
            try:  # SelectionFailed: nothing written yet
                sel = select_student(parse_candidates(c.candidates), bundle.num_classes, measurer, budget,
                                     probe if epochs > 0 else None, log)
            finally:
                measurer.close()
        if on_selection is not None:
            on_selection(sel)
        return sel

    def prune_search(ctx: Context, model: nn.Module, grad_fn) -> dict:
        measurer = make_measurer(ctx.cfg, ctx.bundle, ctx.log)
        try:
            return search_prune_fraction(model, ctx.img_size, ctx.bundle.num_classes, measurer, budget,
                                         cfg.importance, cfg.round_to, cfg.min_channels, grad_fn=grad_fn, log=ctx.log)
        finally:
            measurer.close()

    def final_latency(ctx: Context, model: nn.Module, search: dict) -> dict:
        measurer = make_measurer(ctx.cfg, ctx.bundle, ctx.log)
        try:
            final = measurer.measure_model(model)
        finally:
            measurer.close()
        fig = deploy_figures(final)
        ok = meets(budget, fig)
        final["meets_budget"] = ok
        ctx.log(f"prune: final model {final['deploy_precision'] or '-'} "
            + (f"p50 {fig['p50_ms']:.3f} ms, p90 {fig['p90_ms']:.3f} ms" if fig else "not measurable")
            + f" on {search['measurement']['runtime']}: {'meets' if ok else 'MISSES'} the budget")
        return {"target_macs_mode": "auto", "latency_search": search, "latency_final": final, "budget_met": ok}

    return AutoHooks(select=select if cfg.auto_student else None,
                     prune_search=prune_search if cfg.auto_macs else None,
                     final_latency=final_latency if cfg.auto_macs else None)


def compress(cfg: CompressConfig, stages: list[str] | None = None, resume: bool = False, log: Log | None = None,
             on_selection: Callable[[dict], None] | None = None) -> dict:
    """``edgecv compress``: validate the auto options, then run the stages with the measuring hooks.

    ``cfg.student == "auto"``: the student is chosen first (``on_selection`` gets the record, reused or new); a
    budget no candidate meets raises :class:`~edgecv.autotune.select.SelectionFailed` before anything is
    written. Returns run.json's content.
    """
    log = log or (lambda s: None)
    validate(cfg)
    return run_stages(cfg, stages, resume=resume, log=log, hooks=hooks(cfg, log, on_selection))
