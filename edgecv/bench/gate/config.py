"""The gate's settings (:class:`GateConfig`), declared once: each field carries its kind, range, choices and help
(edgecv.options), from which ``edgecv gate`` generates its flags and against which the Python API's values are
checked (:meth:`GateConfig.validate`, run by :func:`edgecv.bench.gate.run.run_gate`); and the JSON schema name."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgecv.options import check_fields, option, owned

SCHEMA = "edgecv.gate/1"


@dataclass
class GateConfig:
    """Every setting of a gate, in the order ``edgecv gate --help`` lists them; then the API-only ones."""

    max_latency_regression: float = option(
        0.10, kind=float, lo=0, help="Allowed slowdown as a fraction (0.10 = candidate may be up to 10 % slower).")
    max_accuracy_drop: float = option(
        0.5, kind=float, lo=0,
        help="Top-1 points the candidate may lose: it fails only where a paired test on the same images shows it "
             "worse, by at least this (needs --data).")
    metric: str = option("p50", choices=owned("edgecv.bench.gate.measure", "METRICS"),
                         help="Per-round latency statistic compared.")
    rounds: int = option(20, kind=int, lo=2, help="Interleaved A/B rounds before the first decision.")
    max_rounds: int = option(60, kind=int, lo=2, help="Cap when the interval straddles the limit (inconclusive).")
    sessions: int = option(
        4, kind=int, lo=1,
        help="Independent session pairs the rounds are spread over (fresh runtime sessions and input per pair: "
             "a session's memory layout can shift a small model's latency by 10 %+).")
    block_time_s: float = option(0.08, kind=float, lo=0, decl="--block-time",
                                 help="Minimum duration of one model's block within a round.")
    on_inconclusive: str = option(
        "point", choices=owned("edgecv.bench.gate.stats", "ON_INCONCLUSIVE"),
        help="Still inconclusive at --max-rounds: decide on the point estimate, or fail / pass.")
    data: str | None = option(None, optional=True, help="Validation data for the accuracy check (skipped without it).")
    max_images: int | None = option(None, kind=int, lo=1, optional=True,
                                    help="Class-balanced subset for the accuracy check.")
    skip_bad: bool = option(  # unreadable images / unlistable folders of --data: listed, not fatal (data.scan)
        False, kind=bool, help="Skip unreadable images / unlistable folders of --data (listed).")
    threads: int = option(1, kind=int, lo=1, help="Runtime threads for both models.")
    device: str = option("cpu", help="Runner device.")
    stored_noise: float = option(1.5, kind=float, lo=1,
                                 help="Extra tolerance factor when the baseline is a stored bench JSON.")
    block_runs: int = option(5, kind=int, lo=1, api_only="calls per block at least (with --block-time)")
    warmup: int = option(10, kind=int, lo=0, api_only="untimed calls per session pair; the default suits the gate")
    confidence: float = option(0.95, kind=float, lo=0, hi=1, lo_open=True,
                               api_only="the bootstrap interval's level; the decision rule is stated at 95 %")
    n_boot: int = option(4000, kind=int, lo=1, api_only="bootstrap resamples; fixed so the decision is reproducible")
    seed: int = option(0, kind=int, api_only="the bootstrap's and the inputs' seed; fixed for reproducibility")

    def validate(self) -> None:
        """Kinds, ranges and choices of every value (the flags' own); UserError (exit 2) naming the first bad
        one. Then --rounds above --max-rounds raises the cap to --rounds."""
        check_fields(self)
        self.max_rounds = max(self.max_rounds, self.rounds)

    def to_dict(self) -> dict:
        return asdict(self)
