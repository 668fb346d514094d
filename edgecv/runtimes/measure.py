"""The one measuring loop: load every candidate's runner, time them together, say what they ran on.

Used by ``edgecv bench`` (every artifact of a bundle), ``serve --artifact auto`` (the runnable artifacts of a
bundle, a short budget) and ``compress --student auto`` / ``--target-macs auto`` (the FP32 and INT8 export of each
candidate model). :func:`measure`, per thread count of the :class:`Plan`:

1. load each :class:`Candidate` through its runtime: one that cannot run here is ``skipped`` with the runtime's
   reason (:class:`~edgecv.runtimes.base.RuntimeUnavailable`), one that fails to load is an ``error``; an input
   shape not given is read from the open runner (:meth:`Candidate.shape`), not by loading the file again;
2. per batch size: one seeded random input per shape (shared by every candidate of that shape), one untimed call
   that validates it (a failure is an ``error``; a fixed-batch artifact is not timed at other batches, with a
   note), then every runner timed **interleaved** (:func:`edgecv.runtimes.latency.measure_interleaved`; process
   CPU time too at one CPU thread, and a note where wall time shows the host was contended);
3. record what each ran on (:func:`edgecv.runtimes.introspect.measured_on`) and whether that was a **host proxy**
   for the target hardware. The rule for that lives with the targets (``edgecv.targets.budget.on_target_hardware``,
   which this layer may not import): the caller passes it as ``on_target(key, device)``; without it the host is
   the target.

``visit(key, runner, measured)`` sees every runner that was timed before it is closed (bench scores accuracy
there); ``keep=True`` leaves the last thread count's runners open in :attr:`Measured.runner` for the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecv.errors import UserError
from edgecv.runtimes.base import RuntimeUnavailable, close_all, load_runner
from edgecv.runtimes.introspect import measured_on
from edgecv.runtimes.latency import measure_interleaved

CONTENDED = 1.15  # wall / CPU time above this at 1 thread: the host was busy, say so
Log = Callable[[str], None]


@dataclass(frozen=True)
class Candidate:
    """One artifact to time: ``input_shape(batch)`` is its NCHW input (None: the shape its open runner declares,
    :attr:`Runner.input_shape`, at that batch); ``load(threads, device)`` overrides the plain
    ``load_runner(runtime, path, ...)`` (e.g. a sha256-verified manifest entry)."""

    key: Hashable
    runtime: str | None
    path: Path | None
    input_shape: Callable[[int], tuple[int, ...]] | None = None
    load: Callable[[int | None, str], object] | None = None

    def shape(self, runner, batch: int) -> tuple[int, ...]:
        """The NCHW input at ``batch``: the given one, else the one ``runner`` read from the file; a file that
        declares a dynamic channel or spatial size and was given none is bad input."""
        if self.input_shape is not None:
            return tuple(self.input_shape(batch))
        declared = getattr(runner, "input_shape", None)
        if not declared or None in declared[1:]:
            raise UserError(f"{self.path}: input shape unknown: the file declares {list(declared or [])} and no "
                            "manifest gives it (use its bundle)")
        return (int(batch), *(int(d) for d in declared[1:]))

    def open(self, threads: int | None, device: str):
        if self.load is not None:
            return self.load(threads, device)
        if not self.runtime:
            raise RuntimeUnavailable(f"{self.path}: not a runnable model")
        return load_runner(self.runtime, self.path, threads=threads, device=device)


@dataclass(frozen=True)
class Plan:
    """How long and in which configurations: every (threads, batch); the first is the primary one."""

    threads: tuple[int, ...] = (1,)
    batches: tuple[int, ...] = (1,)
    device: str = "cpu"
    warmup: int = 10
    min_runs: int = 50
    min_time_s: float = 2.0
    rounds: int = 5
    seed: int = 0  # the random inputs


@dataclass
class Measured:
    """What the loop found for one candidate."""

    status: str = "ok"  # ok | skipped (cannot run here) | error (load or predict failed)
    reason: str | None = None
    latency: list[dict] = field(default_factory=list)  # {"threads": t, **LatencyStats.to_dict()} per config
    measured_on: str | None = None
    device: str | None = None
    host_proxy: bool | None = None
    notes: list[str] = field(default_factory=list)
    runner: object | None = None  # open runner (measure(keep=True) only)

    def figures(self, threads: int | None = None, batch: int = 1) -> dict | None:
        """The latency dict of (threads, batch) (any threads when None), or None."""
        return next((x for x in self.latency if x["batch"] == batch and threads in (None, x["threads"])), None)


class _Inputs:
    """One seeded random input per shape, shared by every candidate of that shape."""

    def __init__(self, seed: int):
        self.rng, self.cache = np.random.default_rng(seed), {}

    def __call__(self, shape: tuple[int, ...]) -> np.ndarray:
        if shape not in self.cache:
            self.cache[shape] = self.rng.standard_normal(shape).astype(np.float32)
        return self.cache[shape]


def _load(cands: Sequence[Candidate], plan: Plan, t: int, res: dict, log: Log) -> dict:
    runners = {}
    for c in cands:
        m = res[c.key]
        if m.status != "ok":
            continue
        try:
            runners[c.key] = c.open(t, plan.device)
        except UserError:
            raise  # bad input (a modified artifact): the command's error, not a row
        except RuntimeUnavailable as ex:
            m.status, m.reason = "skipped", str(ex)
            log(f"{c.key}: skipped: {ex}")
        except Exception as ex:  # noqa: BLE001 - a broken artifact must not stop the others
            m.status, m.reason = "error", f"load failed: {type(ex).__name__}: {ex}"
            log(f"{c.key}: load failed: {ex}")
    return runners


def _calls(runners: dict, cands: dict, res: dict, b: int, inputs: _Inputs) -> dict:
    """The timed call of every runner that accepts batch ``b`` (a runner whose predict fails is closed)."""
    fns = {}
    for key, runner in list(runners.items()):
        fixed = getattr(runner, "batch_size", None)
        if fixed and fixed != b:
            res[key].notes.append(f"batch {b} not measured: the artifact has a fixed batch size of {fixed}")
            continue
        x = inputs(cands[key].shape(runner, b))
        try:
            runner.predict(x)  # validates the input before timing
        except Exception as ex:  # noqa: BLE001
            res[key].status, res[key].reason = "error", f"predict failed at batch {b}: {type(ex).__name__}: {ex}"
            close_all([runners.pop(key)])
            continue
        fns[key] = (lambda r=runner, x=x: r.predict(x))
    return fns


def _time(plan: Plan, fns: dict, res: dict, t: int, b: int, primary: bool, log: Log) -> None:
    log(f"timing {len(fns)} artifact(s), threads={t}, batch={b} "
        f"(>= {plan.min_runs} runs and >= {plan.min_time_s:g}s each, {plan.rounds} interleaved rounds)")
    ms = measure_interleaved(fns, batch=b, warmup=plan.warmup, min_runs=plan.min_runs, min_time_s=plan.min_time_s,
                             rounds=plan.rounds, cpu_time=(t == 1 and plan.device == "cpu"))
    for key, m in ms.items():
        st = m.stats()
        res[key].latency.append({"threads": t, **st.to_dict()})
        c = st.contention
        if c is not None and c > CONTENDED and primary:
            res[key].notes.append(
                f"host was contended while timing: p50 wall {st.p50_ms:.3f} ms vs CPU {st.cpu_p50_ms:.3f} ms "
                f"({c:.2f}x); wall-clock figures are inflated by other load")


def measure(cands: Sequence[Candidate], plan: Plan, *, on_target: Callable[[Hashable, str], bool] | None = None,
            visit: Callable[[Hashable, object, Measured], None] | None = None, keep: bool = False,
            time_alone: bool = True, log: Log = lambda m: None) -> dict[Hashable, Measured]:
    """Every candidate loaded, timed interleaved per (threads, batch) of ``plan`` and labelled: ``{key:
    Measured}`` in the order of ``cands``. ``time_alone=False``: a candidate that is the only one loaded is not
    timed (nothing to choose between). A :class:`~edgecv.errors.UserError` raised by a loader propagates."""
    res = {c.key: Measured() for c in cands}
    by_key = {c.key: c for c in cands}
    inputs = _Inputs(plan.seed)
    for i, t in enumerate(plan.threads):
        runners = _load(cands, plan, t, res, log)
        try:
            for b in plan.batches if time_alone or len(runners) > 1 else ():
                fns = _calls(runners, by_key, res, b, inputs)
                if fns:
                    _time(plan, fns, res, t, b, (t, b) == (plan.threads[0], plan.batches[0]), log)
            for key, runner in runners.items():
                m = res[key]
                if m.measured_on is None:
                    m.measured_on, m.device = measured_on(runner, t)
                    m.host_proxy = not on_target(key, m.device) if on_target else False
                if visit is not None and m.status == "ok":
                    visit(key, runner, m)
        except BaseException:
            close_all(runners.values())
            raise
        if keep and i == len(plan.threads) - 1:
            for key, runner in runners.items():
                res[key].runner = runner
        else:
            close_all(runners.values())
    return res
