"""ExecuTorch runner: ``Runtime.get().load_program(path).load_method("forward").execute([x])`` (XNNPACK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecv.runtimes.base import RunnerBase, RuntimeUnavailable, predict_in_chunks

_pool_threads: int | None = None  # what this process last set XNNPACK's (process-wide) threadpool to


def _set_pool_threads(threads: int) -> None:
    """Resize XNNPACK's threadpool only when the size changes: every reset logs a line from C++, and the gate
    loads a session pair several times per artifact."""
    global _pool_threads
    if threads == _pool_threads:
        return
    try:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(int(threads))
        _pool_threads = int(threads)
    except Exception:  # noqa: BLE001 - an executorch build without the pybinding: its default pool
        pass


class PteRunner(RunnerBase):
    runtime = "executorch"

    def __init__(self, path: Path, threads: int | None = 1, device: str = "cpu"):
        try:
            import torch
            from executorch.runtime import Runtime
        except ImportError as e:
            raise RuntimeUnavailable(f"executorch is not installed ({e})") from None
        if device != "cpu":
            raise RuntimeUnavailable(f"executorch runner: cpu only here, not '{device}'")
        self._torch = torch
        rt = Runtime.get()
        if threads:
            _set_pool_threads(int(threads))
        self.program = rt.load_program(Path(path))
        self.method = self.program.load_method("forward")
        meta = self.method.metadata
        shape = None
        try:
            shape = list(meta.input_tensor_meta(0).sizes())
        except Exception:
            pass
        self.input_shape = tuple(int(s) for s in shape) if shape else None
        self.batch_size = int(shape[0]) if shape else 1
        self.threads = threads
        self.device = "cpu"
        import executorch

        self._version = getattr(executorch, "__version__", "?")

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.method.execute([self._torch.from_numpy(x)])
        return out[0].detach().numpy().astype(np.float32, copy=True)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return predict_in_chunks(self._run, x, self.batch_size)

    def describe(self) -> dict:
        d = super().describe()
        d["version"] = self._version
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d


def load(path: Path, threads: int | None = 1, device: str = "cpu", **opts) -> PteRunner:
    return PteRunner(path, threads=threads, device=device)
