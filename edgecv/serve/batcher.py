"""Dynamic batching off the event loop, with a bounded queue.

Requests put their preprocessed rows in the queue and await a future; one worker thread takes the oldest request,
waits at most ``max_delay_ms`` after its arrival for more, runs up to ``max_batch`` rows in one runner call, and
hands every request its rows back. ``max_queue`` bounds the rows waiting: beyond it :meth:`Batcher.submit` raises
:class:`QueueFull` at once (the server answers 503 + Retry-After), so memory never grows without bound.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class QueueFull(Exception):
    """The queue holds ``max_queue`` rows already."""


@dataclass
class BatchRun:
    """What one runner call did, for the statistics: its rows, how long each request of it waited in the queue,
    and the seconds spent gathering the input, in the runner, and slicing the output per request."""

    rows: int
    waits: list[float]
    input_s: float
    infer_s: float
    output_s: float
    ok: bool


@dataclass
class _Item:
    x: np.ndarray
    fut: asyncio.Future
    loop: asyncio.AbstractEventLoop
    t: float


def _settle(fut: asyncio.Future, value=None, exc: BaseException | None = None) -> None:
    if fut.done():  # the client went away and the request was cancelled
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class Batcher:
    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch: int = 8, max_delay_ms: float = 2.0,
                 max_queue: int = 64, on_batch: Callable[[BatchRun], None] | None = None):
        self.fn = fn
        self.max_batch = max(1, int(max_batch))
        self.max_delay = max(0.0, float(max_delay_ms)) / 1e3
        self.max_queue = max(1, int(max_queue))
        self.on_batch = on_batch or (lambda run: None)
        self._q: collections.deque[_Item] = collections.deque()
        self._rows = 0
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Rows queued or running."""
        return self._rows

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgecv-batcher", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """From now on run queued rows at once (no waiting for more): shutting down."""
        with self._cv:
            self.max_delay = 0.0
            self._cv.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        """Answer everything queued, then end the worker."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Rows ``x`` (N x ...) -> their outputs, run in some batch. Raises QueueFull, or what the runner raised."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cv:
            if self._stop:
                raise QueueFull("shutting down")
            if self._rows + len(x) > self.max_queue:
                raise QueueFull(f"queue full ({self._rows} rows waiting, max {self.max_queue})")
            self._q.append(_Item(x, fut, loop, time.perf_counter()))
            self._rows += len(x)
            self._cv.notify_all()
        return await fut

    def _take(self) -> list[_Item] | None:
        with self._cv:
            while not self._q:
                if self._stop:
                    return None
                self._cv.wait()
            while not self._stop:
                if sum(len(i.x) for i in self._q) >= self.max_batch:
                    break
                left = self._q[0].t + self.max_delay - time.perf_counter()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch, n = [], 0
            while self._q and (not batch or n + len(self._q[0].x) <= self.max_batch):
                it = self._q.popleft()
                batch.append(it)
                n += len(it.x)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            n = sum(len(i.x) for i in batch)
            t0 = time.perf_counter()
            x = np.concatenate([i.x for i in batch]) if len(batch) > 1 else batch[0].x
            t1 = time.perf_counter()
            try:
                out, err = self.fn(x), None
            except Exception as e:  # noqa: BLE001 - a runtime failure answers these requests (500), not the server
                out, err = None, e
            t2 = time.perf_counter()
            parts, k = [], 0
            for it in batch:
                parts.append(None if out is None else out[k:k + len(it.x)])
                k += len(it.x)
            # recorded before the answers go out: a client that reads the statistics after its answer sees its batch
            self.on_batch(BatchRun(n, [t0 - i.t for i in batch], t1 - t0, t2 - t1, time.perf_counter() - t2,
                                   err is None))
            for it, part in zip(batch, parts, strict=True):
                it.loop.call_soon_threadsafe(_settle, it.fut, part, err)
            with self._cv:
                self._rows -= n
