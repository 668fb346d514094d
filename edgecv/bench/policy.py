"""The deploy policy: which precision and which artifact to deploy, from measured figures. One home for the rule.

``int8_pays``: INT8 counts as faster only when its p50 is below ``INT8_NOT_FASTER`` x the FP32 p50 of the same
runtime, same run (within 5 % it is noise on these hosts: deploy FP32). Used by ``edgecv bench``'s precision
notes and recommendation, and by ``--student auto``'s per-candidate deploy figures.
"""

from __future__ import annotations

INT8_NOT_FASTER = 0.95  # INT8 must be >= 5 % faster than FP32 (p50) to count as faster


def int8_pays(int8_p50: float, fp32_p50: float) -> bool:
    """INT8 beats FP32 by more than the noise margin (same runtime, same run)."""
    return int8_p50 < INT8_NOT_FASTER * fp32_p50


def deploy_precision(fp32_p50: float, int8_p50: float) -> str:
    """``"int8"`` where it pays, else ``"fp32"``."""
    return "int8" if int8_pays(int8_p50, fp32_p50) else "fp32"
