"""``--target-macs auto``: the pruning amount from the measured latency budget. A copy of the model is pruned in
small steps, measured on the runtime after each, until it meets the budget (never below a MAC floor)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

from torch import nn

from edgecv.autotune.measure import Measurer, deploy_figures, meets
from edgecv.errors import CheckFailed, UserError
from edgecv.targets.budget import budget_text

PRUNE_FLOOR = 0.25  # --target-macs auto never prunes below this fraction of the unpruned MACs
PRUNE_CHUNK = 0.075  # ... and measures after every chunk of this fraction of the unpruned MACs


def search_prune_fraction(model: nn.Module, train_size: int, num_classes: int, measurer: Measurer, budget,
                          importance: str = "magnitude", round_to: int = 8, min_channels: int = 16,
                          grad_fn=None, floor: float = PRUNE_FLOOR, chunk: float = PRUNE_CHUNK,
                          log: Callable[[str], None] = lambda m: None) -> dict:
    """Prune a copy of ``model`` in chunks of ``chunk`` x its MACs, measuring it on the runtime after each, until
    the deploy-precision latency meets ``budget`` or the MACs reach ``floor``. Returns the MAC fraction to prune
    to and every measured step."""
    from edgecv.compress.prune import prune_to_macs, widths
    from edgecv.nn.graph import count_macs

    if budget is None:
        raise UserError("--target-macs auto needs a latency budget (--budget-ms / --budget-fps or a target's)")
    m = copy.deepcopy(model).eval()
    base, start = count_macs(m, train_size), widths(m)
    steps: list[dict] = []
    frac = 1.0
    while True:
        t0 = time.perf_counter()
        meas = measurer.measure_model(m)
        fig = deploy_figures(meas)
        ok = bool(meets(budget, fig))
        macs = count_macs(m, train_size)
        steps.append({"macs": macs, "macs_fraction": round(macs / base, 4), "target_fraction": round(frac, 4),
                      "fp32": meas.get("fp32"), "int8": meas.get("int8"), "deploy_precision": meas["deploy_precision"],
                      "deploy_p50_ms": fig["p50_ms"] if fig else None, "deploy_p90_ms": fig["p90_ms"] if fig else None,
                      "meets_budget": ok, "measure_s": round(time.perf_counter() - t0, 2)})
        desc = (f"{meas['deploy_precision'].upper()} p50 {fig['p50_ms']:.3f} ms, p90 {fig['p90_ms']:.3f} ms"
                if fig else "not measurable")
        log(f"prune auto: {100 * macs / base:.1f}% of MACs -> {desc} on {measurer.runtime} "
            f"({'meets' if ok else 'misses'} {budget_text(budget)})")
        if fig is None:
            raise CheckFailed(f"--target-macs auto: the model cannot be measured on {measurer.runtime}: "
                              f"{meas['deploy_reason']}")
        if ok or frac <= floor + 1e-9:
            break
        frac = max(floor, frac - chunk)
        prune_to_macs(m, train_size, num_classes, int(frac * base), importance, round_to=round_to,
                      min_channels=min_channels, grad_fn=grad_fn, start=start)
    met = steps[-1]["meets_budget"]
    return {"fraction": max(floor, min(1.0, steps[-1]["macs_fraction"])), "met": met, "floor": floor,
            "chunk": chunk, "budget": budget.to_dict(), "measurement": measurer.describe(), "steps": steps,
            "note": None if met else f"the budget is not met even at the {floor:.0%} MAC floor; pruned to the floor"}
