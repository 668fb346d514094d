"""TorchScript-lite runner: the PyTorch Mobile lite interpreter (``_load_for_lite_interpreter``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecv.runtimes.base import RunnerBase, RuntimeUnavailable


class PtlRunner(RunnerBase):
    runtime = "ptl"

    def __init__(self, path: Path, threads: int | None = 1, device: str = "cpu"):
        try:
            import torch
            from torch.jit.mobile import _load_for_lite_interpreter
        except ImportError as e:
            raise RuntimeUnavailable(f"torch lite interpreter unavailable ({e})") from None
        if device != "cpu":
            raise RuntimeUnavailable(f"ptl: the lite interpreter runs on cpu only, not '{device}'")
        self._torch = torch
        self.module = _load_for_lite_interpreter(str(path), map_location="cpu")
        self.threads = threads
        self.device = "cpu"
        self.batch_size = None  # traced conv nets accept any batch

    def predict(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        prev = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        try:
            with torch.no_grad():
                out = self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        finally:
            if self.threads:
                torch.set_num_threads(prev)
        return out.detach().numpy().astype(np.float32, copy=False)

    def describe(self) -> dict:
        d = super().describe()
        d["version"] = self._torch.__version__
        return d


def load(path: Path, threads: int | None = 1, device: str = "cpu", **opts) -> PtlRunner:
    return PtlRunner(path, threads=threads, device=device)
