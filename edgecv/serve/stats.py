"""Triton's statistics extension for the served model: cumulative counts and durations (ns), measured here.

An inference request is a ``POST /predict`` or ``POST /v2/models/NAME[/versions/1]/infer`` for the served model.
Its phases, as Triton's ``$inference_stats`` defines them:

- ``success`` / ``fail``: from its arrival to the start of its answer, by outcome (a 4xx, a 503 refusal and a
  runtime failure are failures)
- ``compute_input``: from the end of its body to its rows entering the batcher queue (parsing, decoding,
  preprocessing)
- ``queue``: in the batcher queue until its batch starts
- ``compute_infer``: the runner call of its batch (every request of a batch counts that call, as in Triton)
- ``compute_output``: from the batch's outputs to the start of its answer (softmax and top-k, or tensor encoding)

``batch_stats``: per batch size, the runner calls (gathering the rows, the call, slicing the outputs).
``inference_count``: rows inferred; ``execution_count``: runner calls; ``last_inference``: ms since the epoch.
There is no response cache: ``cache_hit`` and ``cache_miss`` stay zero.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from edgecv.serve.batcher import BatchRun

SCOPE_KEY = "edgecv.times"  # the ASGI scope entry holding a request's RequestTimes
_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
_BATCH_PHASES = ("compute_input", "compute_infer", "compute_output")


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


@dataclass
class RequestTimes:
    """``time.perf_counter()`` marks of one inference request (None: not reached)."""

    arrival: float
    body_done: float | None = None
    submitted: float | None = None
    result: float | None = None


class ModelStats:
    """The counters of one model version; thread-safe (the batcher's thread and the event loop both record)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._phase = {p: [0, 0] for p in _PHASES}  # phase -> [count, ns]
        self._batch: dict[int, dict[str, list[int]]] = {}  # batch size -> phase -> [count, ns]
        self.inference_count = self.execution_count = self.last_inference = 0

    def _add(self, phase: str, seconds: float, count: int = 1) -> None:
        c = self._phase[phase]
        c[0] += count
        c[1] += _ns(seconds) * count

    def batch(self, run: BatchRun) -> None:
        with self._lock:
            for w in run.waits:
                self._add("queue", w)
            if not run.ok:
                return
            self._add("compute_infer", run.infer_s, len(run.waits))
            b = self._batch.setdefault(run.rows, {p: [0, 0] for p in _BATCH_PHASES})
            for phase, s in zip(_BATCH_PHASES, (run.input_s, run.infer_s, run.output_s), strict=True):
                b[phase][0] += 1
                b[phase][1] += _ns(s)
            self.inference_count += run.rows
            self.execution_count += 1
            self.last_inference = int(time.time() * 1e3)

    def request(self, t: RequestTimes, ok: bool, now: float) -> None:
        """Request ``t`` is answered at ``now`` (perf_counter), successfully or not."""
        with self._lock:
            self._add("success" if ok else "fail", now - t.arrival)
            if ok and t.body_done is not None and t.submitted is not None:
                self._add("compute_input", t.submitted - t.body_done)
            if ok and t.result is not None:
                self._add("compute_output", now - t.result)

    def to_json(self, name: str, version: str = "1") -> dict:
        """One ``$model_stat`` of Triton's statistics extension."""

        def d(c: list[int]) -> dict:
            return {"count": c[0], "ns": c[1]}

        with self._lock:
            return {"name": name, "version": version, "last_inference": self.last_inference,
                    "inference_count": self.inference_count, "execution_count": self.execution_count,
                    "inference_stats": {p: d(c) for p, c in self._phase.items()},
                    "batch_stats": [{"batch_size": n, **{p: d(c) for p, c in b.items()}}
                                    for n, b in sorted(self._batch.items())]}
