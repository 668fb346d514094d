"""One Runner protocol for every runtime.

A runner loads one artifact and maps an ``NCHW float32`` batch (preprocessed with the manifest's
:class:`~edgecv.data.preprocess.Preprocess`) to ``float32`` logits. Runtimes that are not installed (or whose
hardware is absent) raise :class:`RuntimeUnavailable` with a reason; callers report ``skipped: <reason>``.
"""

from __future__ import annotations

import importlib
import platform
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edgecv.utils import progress


class RuntimeUnavailable(Exception):
    """The runtime (package, delegate or device) is missing here; ``str(e)`` is the reason."""


@runtime_checkable
class Runner(Protocol):
    runtime: str  # e.g. "onnxruntime"
    device: str  # e.g. "cpu", "cuda:0", "GPU"
    threads: int | None
    batch_size: int | None  # fixed batch size the artifact accepts, None if dynamic
    input_shape: tuple[int | None, ...] | None  # NCHW the artifact declares (None: a dynamic dim / not recorded)

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def warmup(self, batch: np.ndarray, n: int = 5) -> None: ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...


class RunnerBase:
    """Shared behaviour; subclasses set ``runtime`` and implement ``predict``."""

    runtime = "?"
    device = "cpu"
    threads: int | None = None
    batch_size: int | None = None
    input_shape: tuple[int | None, ...] | None = None  # read from the loaded artifact by each runtime

    def predict(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement predict")

    def warmup(self, batch: np.ndarray, n: int = 5) -> None:
        for _ in range(n):
            self.predict(batch)

    def describe(self) -> dict:
        return {"runtime": self.runtime, "device": self.device, "threads": self.threads,
                "host": host_description()}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def close_all(runners) -> None:
    """Close every runner; a runner that fails to close does not keep the others open."""
    for r in runners:
        try:
            r.close()
        except Exception:  # noqa: BLE001
            pass


# runtime name -> module implementing ``load(path, threads=..., device=..., **opts) -> Runner``
RUNTIME_MODULES = {
    "onnxruntime": "edgecv.runtimes.ort",
    "openvino": "edgecv.runtimes.openvino",
    "ptl": "edgecv.runtimes.ptl",
    "executorch": "edgecv.runtimes.pte",
    "tensorrt": "edgecv.runtimes.tensorrt",
    "torch_cuda": "edgecv.runtimes.torch_cuda",
}


def load_runner(runtime: str, path: str | Path, threads: int | None = 1, device: str = "cpu", **opts) -> Runner:
    """Load ``path`` with ``runtime``. Raises :class:`RuntimeUnavailable` when it cannot run here."""
    mod_name = RUNTIME_MODULES.get(runtime)
    if mod_name is None:
        raise RuntimeUnavailable(f"unknown runtime '{runtime}'")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:  # the runtime module itself imports lazily; this is a packaging error
        raise RuntimeUnavailable(f"{runtime}: {e}") from None
    return mod.load(Path(path), threads=threads, device=device, **opts)


def host_description() -> str:
    """CPU model name (and core count) of this host, for ``measured_on``."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return f"{name} ({os.cpu_count()} logical cores)"


def pad_to(part: np.ndarray, size: int) -> np.ndarray:
    """``part`` zero-padded along the batch axis to ``size`` rows (the input a fixed-batch artifact accepts)."""
    n = part.shape[0]
    return part if n >= size else np.concatenate([part, np.zeros((size - n, *part.shape[1:]), part.dtype)])


def predict_in_chunks(fn, batch: np.ndarray, fixed_batch: int | None) -> np.ndarray:
    """Run ``fn`` on ``batch`` as-is (dynamic batch) or in ``fixed_batch`` slices (the last one zero-padded)."""
    if not fixed_batch or batch.shape[0] == fixed_batch:
        return fn(batch)
    outs = []
    for i in range(0, batch.shape[0], fixed_batch):
        part = batch[i : i + fixed_batch]
        outs.append(fn(pad_to(part, fixed_batch))[:part.shape[0]])
    return np.concatenate(outs)


def predict_all(runner, x: np.ndarray, batch_size: int = 32, desc: str = "accuracy") -> np.ndarray:
    """Logits for every row of ``x`` through ``runner``, respecting a fixed batch size."""
    b = runner.batch_size or batch_size
    outs = []
    for i in progress(range(0, len(x), b), desc=desc, total=(len(x) + b - 1) // b):
        chunk = x[i:i + b]
        n = len(chunk)
        if runner.batch_size:
            chunk = pad_to(chunk, b)
        out = np.asarray(runner.predict(chunk), dtype=np.float32).reshape(len(chunk), -1)
        outs.append(out[:n])
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def runner_for_entry(bundle_dir: str | Path, entry, threads: int | None = 1, device: str = "cpu", verify: bool = True,
                     **opts) -> Runner:
    """Load the runner for a manifest :class:`~edgecv.contracts.manifest.ArtifactEntry` (sha256-verified first)."""
    if not entry.runtime:
        raise RuntimeUnavailable(f"{entry.file}: {entry.format} is not a runnable model")
    if verify:
        from edgecv.contracts.manifest import verify_artifact

        verify_artifact(bundle_dir, entry)
    return load_runner(entry.runtime, Path(bundle_dir) / entry.file, threads=threads, device=device, **opts)
