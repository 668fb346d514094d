"""Export validation: every artifact runs through its real runtime on the validation images and is compared with
the PyTorch model it came from (top-1 agreement >= :data:`THRESHOLDS`, plus accuracy of both on the labels).

Below the bar an artifact still passes when its flips are within the noise of the bar: every flipped image is a
near tie (:func:`flips`) and there are no more of them than a true flip rate at the bar explains on that many
images (:func:`edgecv.targets.stats.most_explained`). One flip of 153 photos reads 99.35 %, which says nothing
about a rate above 0.5 %; a flip at a margin the artifact's rounding cannot reach fails however few images.

Every INT8 artifact (ONNX, OpenVINO, ExecuTorch) is compared with the QAT model itself (fake-quant): each one
computes that model's quantization. Failures: agreement below the threshold; non-finite logits (NaN / inf) from the
artifact; an INT8 artifact whose runtime falls back to float kernels.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from edgecv.contracts.formats import FORMATS
from edgecv.errors import UserError
from edgecv.targets.stats import most_explained

THRESHOLDS = {"fp32": 99.5, "fp16": 99.5, "int8": 97.0}  # min top-1 agreement (%) with the torch reference
REF_QAT = "torch QAT model (fake-quant)"
TYPICAL_ERROR_PERCENTILE = 95  # the artifact's typical error: this percentile of the per-image max |logit diff|


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, bs: int = 64) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i : i + bs])).float().numpy() for i in range(0, len(x), bs)])


def nonfinite_rows(logits: np.ndarray) -> int:
    """How many rows of ``logits`` hold a NaN or an infinity."""
    return int((~np.isfinite(logits)).reshape(len(logits), -1).any(1).sum())


def check_reference(logits: np.ndarray, what: str) -> None:
    """A torch reference with non-finite logits cannot validate anything: the model itself is broken."""
    bad = nonfinite_rows(logits)
    if bad:
        raise UserError(f"{what} gives non-finite logits (NaN/inf) on {bad} of {len(logits)} validation images "
                        f"(diverged training?); nothing exported")


def _pct(a: np.ndarray, b: np.ndarray) -> float:
    return round(100.0 * float((a == b).mean()), 3)


def flips(logits: np.ndarray, ref: np.ndarray) -> dict:
    """The images whose top-1 differs from the reference's, and how many of them are near ties.

    A flip at image i needs the artifact to move the two logits by the reference's margin between them (its own
    class's logit minus the artifact's class's), so a margin of at most twice the artifact's largest error on
    that image is always met and proves nothing. A near tie is a margin within twice the artifact's *typical*
    error instead: the :data:`TYPICAL_ERROR_PERCENTILE` th percentile over all images of the per-image largest
    |logit difference|. An artifact whose rounding is everywhere small flips only images the reference barely
    decides; a flip past that scale is a different computation on that image."""
    pa, pr = logits.argmax(1), ref.argmax(1)
    err = np.abs(logits - ref).max(1)
    typical = float(np.percentile(err, TYPICAL_ERROR_PERCENTILE)) if len(err) else 0.0
    idx = np.flatnonzero(pa != pr)
    margin = ref[idx, pr[idx]] - ref[idx, pa[idx]]
    return {"disagreements": int(len(idx)), "near_ties": int((margin <= 2 * typical).sum()),
            "typical_abs_logit_diff": typical, "max_flip_margin": float(margin.max()) if len(idx) else None}


def validate_runner(runner, x: np.ndarray, y: np.ndarray, ref: np.ndarray, precision: str,
                    reference: str | None = None) -> dict:
    """Top-1 agreement / max |logit diff| against the torch reference, plus accuracy of both on labels."""
    from edgecv.runtimes.base import predict_all

    t0 = time.perf_counter()
    logits = predict_all(runner, x, batch_size=32, desc="validate")
    wall = time.perf_counter() - t0
    pa, pr = logits.argmax(1), ref.argmax(1)
    agree = _pct(pa, pr)
    thr = THRESHOLDS[precision]
    bad, bad_ref = nonfinite_rows(logits), nonfinite_rows(ref)
    v = {
        "n": int(len(x)),
        "reference": reference or (REF_QAT if precision == "int8" else "torch fp32 model"),
        "top1_agreement": agree,
        "max_abs_logit_diff": None if bad or bad_ref else float(np.abs(logits - ref).max()),
        "accuracy": _pct(pa, y),
        "reference_accuracy": _pct(pr, y),
        "threshold_agreement": thr,
        "passed": agree >= thr,
        "wall_s": round(wall, 3),
    }
    if not v["passed"] and not (bad or bad_ref):
        f = flips(logits, ref)
        f["explained_at_threshold"] = most_explained(len(x), 1.0 - thr / 100.0)
        v["flips"] = f
        v["passed"] = v["within_noise"] = (f["near_ties"] == f["disagreements"]
                                           and f["disagreements"] <= f["explained_at_threshold"])
    if bad_ref:
        v["passed"] = False
        v["reason"] = f"validation failed: the reference ({v['reference']}) gives non-finite logits (NaN/inf)"
    if bad:
        v["passed"] = False
        v["nonfinite_rows"] = bad
        v["reason"] = f"validation failed: non-finite logits (NaN/inf) on {bad} of {len(x)} images"
    return v


def validate_entry(ex, entry) -> None:
    """Validate one written artifact of exporter ``ex`` in place (``entry.validation``; ``failed`` on failure)."""
    from edgecv.runtimes.base import RuntimeUnavailable, runner_for_entry

    try:
        runner = runner_for_entry(ex.out, entry, threads=ex.opts.threads)
    except RuntimeUnavailable as e:
        entry.validation = {"status": "skipped", "reason": str(e)}
        return
    try:
        v = validate_runner(runner, ex.data.x, ex.data.y, ex.reference(entry.precision), entry.precision)
        v["runner"] = {k: val for k, val in runner.describe().items() if k != "host"}
    finally:
        runner.close()
    k = entry.extra.get("int8_kernels")
    if entry.precision == "int8" and isinstance(k, dict):
        v["int8_kernels"] = bool(k.get("int8_kernels"))
        if not v["int8_kernels"]:
            v["passed"] = False
            v["reason"] = "the runtime does not execute int8 kernels for the convolutions (silent float fallback)"
    v["status"] = "passed" if v["passed"] else "failed"
    entry.validation = v
    if not v["passed"]:
        entry.status = "failed"
        entry.error = v.get("reason") or (f"validation failed: top-1 agreement {v['top1_agreement']}% < "
                                          f"{v['threshold_agreement']}% vs {v['reference']}{_flip_note(v)}")
        entry.error += _saturation_hint(ex, entry)


def _flip_note(v: dict) -> str:
    """Why flips below the bar were (not) within its noise."""
    f = v.get("flips")
    if not f:
        return ""
    return (f" ({f['disagreements']} of {v['n']} images flipped, near ties: {f['near_ties']}; a "
            f"{v['threshold_agreement']}% rate explains up to {f['explained_at_threshold']})")


def _saturation_hint(ex, entry) -> str:
    """Why an INT8 artifact of 8-bit weights on CPU kernels that saturate them (ONNX Runtime, OpenVINO: the rows
    marked ``cpu_int8_saturates`` in the format table) can fail on this CPU, and the fix."""
    from edgecv.quant import auto_weight_bits

    row = FORMATS.get((entry.format, entry.precision))
    if row is None or not row.cpu_int8_saturates:
        return ""
    bits, _ = auto_weight_bits()
    if bits == 8 or ex.notes.get("int8_weight_bits", 8) != 8:
        return ""
    return ("; this CPU has no VNNI/AMX, so its int8 kernels saturate 8-bit weights: compress with "
            "--int8-weight-bits auto (or 7), see docs/int8.md")


def entry_line(e) -> str:
    """One log line per artifact: status, file, size and its validation."""
    v = e.validation or {}
    if e.status != "ok":
        return f"  {e.name:16s} {e.status.upper()}: {e.error}"
    s = f"  {e.name:16s} ok  {e.file} ({(e.size_bytes or 0) / 1e6:.2f} MB)"
    if v.get("status") in ("passed", "failed"):
        s += (f"  agreement {v['top1_agreement']:.1f}%  max|dlogit| {v['max_abs_logit_diff']:.3g}  "
              f"acc {v['accuracy']:.1f}% (torch {v['reference_accuracy']:.1f}%)")
        if v.get("within_noise"):
            s += f"  below {v['threshold_agreement']}% within its noise{_flip_note(v)}"
        if "int8_kernels" in v:
            s += f"  int8 kernels: {'yes' if v['int8_kernels'] else 'NO'}"
    elif v.get("status") == "skipped":
        s += f"  (not validated: {v['reason']})"
    return s
