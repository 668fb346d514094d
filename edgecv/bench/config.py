"""The ``edgecv bench`` settings (:class:`BenchConfig`), declared once: each field carries its kind, range, choices
and help (edgecv.options), from which ``edgecv bench`` generates its flags and against which the Python API's
values are checked (:meth:`BenchConfig.validate`, run by :func:`edgecv.bench.bench.bench_report`).

Kept apart from :mod:`edgecv.bench.bench` so that building the CLI imports no runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecv.options import check_fields, option, owned
from edgecv.targets import ACCURACY_TOLERANCE


@dataclass
class BenchConfig:
    """Every setting of a bench run, in the order ``edgecv bench --help`` lists them."""

    target: str | None = option(None, optional=True, choices=owned("edgecv.targets", "TARGET_NAMES"),
                                help="Target profile for budgets and threads [default: the bundle's target].")
    data: str | None = option(
        None, optional=True, help="Evaluation data for top-1/top-5 through each runtime (ImageFolder or 'digits').")
    threads: list[int] | None = option(None, kind=(list, tuple), optional=True,
                                       help="Comma-separated thread counts [default: the target's].")
    batches: list[int] = option(
        factory=lambda: [1], kind=(list, tuple), decl="--batch",
        help="Comma-separated batch sizes; the first is the latency/budget batch, the largest gives throughput.")
    min_time_s: float = option(2.0, kind=float, lo=0, decl="--min-time",
                               help="Minimum timed duration per config (5s, 500ms).")
    min_runs: int = option(50, kind=int, lo=1, help="Minimum timed calls per config.")
    warmup: int = option(10, kind=int, lo=0, help="Untimed warm-up calls.")
    rounds: int = option(5, kind=int, lo=1, help="Interleaved rounds (artifacts alternate, robust to bursts of load).")
    budget_ms: float | None = option(None, kind=float, lo=0, lo_open=True, optional=True,
                                     help="p90 latency budget in ms (overrides the target's).")
    budget_fps: float | None = option(None, kind=float, lo=0, lo_open=True, optional=True,
                                      help="Frame-rate budget (overrides the target's).")
    # None: every artifact; the command (and the API) also take "onnx-int8,openvino-fp32"
    artifacts: list[str] | str | None = option(
        None, kind=(list, tuple, str), optional=True,
        help="Only these artifacts, comma-separated format-precision (onnx-int8,openvino-fp32).")
    accuracy: bool = option(True, kind=bool, decl="--no-accuracy", help="Latency only.")
    max_images: int | None = option(None, kind=int, lo=1, optional=True,
                                    help="Evaluate on a class-balanced subset of this many images.")
    accuracy_tolerance: float = option(  # top-1 points an artifact may be shown to lose vs the best
        ACCURACY_TOLERANCE, kind=float, lo=0,
        help="Top-1 points an artifact may lose vs the most accurate and still be recommended: refused only "
             "where a paired test on the same images shows it worse, by at least this.")
    device: str = option("cpu", help="Runner device: cpu, cuda:0, GPU (OpenVINO)...")
    adb: str | None = option(None, optional=True,
                             help="Run .pte artifacts on this Android device (adb serial). Untested on hardware.")
    adb_runner: str | None = option(None, optional=True, path="file",
                                    help="ExecuTorch executor_runner built for Android arm64 (or EDGECV_ET_RUNNER).")
    skip_bad: bool = option(  # unreadable images / unlistable folders of --data: listed, not fatal
        False, kind=bool,
        help="Skip unreadable images and folders of --data that cannot be listed (each listed) instead of stopping.")
    allow_duplicates: bool = option(  # score --data even with byte-identical images in two splits or classes
        False, kind=bool, help="Score --data even when byte-identical images sit in two of its splits or classes.")
    include_failed: bool = option(  # also run artifacts whose export validation failed (labelled, never recommended)
        False, kind=bool,
        help="Also time artifacts whose export validation failed (labelled in the notes, never recommended).")
    seed: int = option(0, kind=int, api_only="the seed of the random inputs timed; fixed for the command")

    def validate(self) -> None:
        """Kinds, ranges and choices of every value (the flags' own), ``artifacts`` given as text split;
        UserError (exit 2) naming the first bad one."""
        check_fields(self)
        if isinstance(self.artifacts, str):
            self.artifacts = [a.strip() for a in self.artifacts.split(",") if a.strip()] or None

    def settings(self) -> dict:
        return {"threads": self.threads, "batches": list(self.batches), "min_time_s": self.min_time_s,
                "min_runs": self.min_runs, "warmup": self.warmup, "rounds": self.rounds, "data": self.data,
                "accuracy": bool(self.accuracy and self.data), "max_images": self.max_images,
                "accuracy_tolerance": self.accuracy_tolerance,
                "device": self.device, "adb": self.adb, "allow_duplicates": self.allow_duplicates,
                "skip_bad": self.skip_bad}
