"""The ``edgecv export`` options (:class:`ExportOptions`), declared once: each field carries its kind, range,
choices and help (edgecv.options), from which ``edgecv export`` generates its flags and against which the Python
API's values are checked (:meth:`ExportOptions.check`, run by :func:`edgecv.export.bundle.export_bundle`).

Kept apart from :mod:`edgecv.export.bundle` so that building the CLI imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecv.contracts.rundir import STAGES
from edgecv.errors import UserError
from edgecv.options import check_fields, option, owned
from edgecv.targets import DEFAULT_TARGET, TARGET_NAMES

PRECISIONS = ("fp32", "fp16", "int8")


def parse_precisions(s: str | list | tuple | None) -> tuple[str, ...] | None:
    """``"fp32,int8"`` (or a list of them) -> ``("fp32", "int8")``; None or empty: every precision of the target."""
    if not s:
        return None
    out = tuple(p.strip().lower() for p in (s.split(",") if isinstance(s, str) else map(str, s)) if p.strip())
    bad = [p for p in out if p not in PRECISIONS]
    if bad or not out:
        raise UserError(f"--precision: unknown precision(s) {', '.join(bad) or s!r} (choose from {', '.join(PRECISIONS)})")
    return out


@dataclass
class ExportOptions:
    """Every option of an export, in the order ``edgecv export --help`` lists them."""

    target: str = option(DEFAULT_TARGET, choices=owned("edgecv.targets", "TARGET_NAMES"), free_text=True,
                         help=" | ".join(TARGET_NAMES))
    # None: every precision of the target; the command (and the API) also take "fp32,int8"
    precisions: tuple[str, ...] | str | None = option(
        None, kind=(tuple, list, str), optional=True, decl="--precision",
        help="Comma-separated filter: fp32,fp16,int8 [default: all of the target's].")
    img_size: int | None = option(None, kind=int, lo=8, hi=4096, optional=True,
                                  help="Input size [default: the source's].")
    opset: int = option(17, kind=int, lo=13, hi=23, help="ONNX opset (QDQ per-channel needs >= 13).")
    data: str | None = option(None, optional=True,
                              help="Validation/calibration images [default: the data the source was trained on].")
    # 1,000: on 256, two near-tie flips of a good fp16 model read below its 99.5 % threshold (docs/int8.md)
    num_val: int = option(1000, kind=int, lo=1, help="Validation images per artifact (fewer when --data has fewer).")
    num_calib: int = option(512, kind=int, lo=1,
                            help="Calibration images (PTQ of a float source, ExecuTorch INT8, ONNX conv-output ranges).")
    stage: str | None = option(None, optional=True, choices=owned("edgecv.contracts.rundir", "STAGES"),
                               free_text=True,
                               help=f"Run directory: export this stage ({' | '.join(STAGES)}) instead of the best.")
    threads: int = option(1, kind=int, lo=1, help="Runtime threads for validation.")
    simplify: bool = option(False, kind=bool, help="Clean the ONNX graphs with onnxscript's optimizer.")
    validate: bool = option(True, kind=bool, decl="--no-validate",
                            help="Skip runtime validation (artifacts are still hashed).")
    trust_pickle: bool = option(False, kind=bool,
                                help="Allow loading pickled Python objects (only for files you trust).")
    force: bool = option(False, kind=bool, help="Clear a non-empty --out that is not this source's bundle.")
    seed: int = option(0, kind=int, api_only="the draw of the validation and calibration images; fixed for the command")

    def check(self) -> None:
        """Kinds, ranges and choices of every value (the flags' own), ``precisions`` given as text parsed;
        UserError (exit 2) naming the first bad one. (``validate`` is a field here, hence the name.)"""
        check_fields(self)
        if self.precisions is not None:
            self.precisions = parse_precisions(self.precisions)
