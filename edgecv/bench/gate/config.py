"""The gate's settings and JSON schema name."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SCHEMA = "edgecv.gate/1"


@dataclass
class GateConfig:
    max_latency_regression: float = 0.10
    max_accuracy_drop: float = 0.5
    metric: str = "p50"
    rounds: int = 20
    max_rounds: int = 60
    sessions: int = 4
    block_time_s: float = 0.08
    block_runs: int = 5
    warmup: int = 10
    threads: int = 1
    device: str = "cpu"
    data: str | None = None
    max_images: int | None = None
    skip_bad: bool = False  # unreadable images / unlistable folders of --data: listed, not fatal (data.scan)
    confidence: float = 0.95
    on_inconclusive: str = "point"
    stored_noise: float = 1.5
    n_boot: int = 4000
    seed: int = 0

    def __post_init__(self) -> None:
        self.max_rounds = max(self.max_rounds, self.rounds)  # --rounds above --max-rounds: run --rounds

    def to_dict(self) -> dict:
        return asdict(self)
