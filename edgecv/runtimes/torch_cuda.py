"""PyTorch on CUDA: the ``torch`` artifact (a traced TorchScript module, weights in its precision) run in that dtype,
channels_last, with CUDA-graph replay for a fixed batch shape. The eager GPU baseline next to TensorRT. Raises
:class:`RuntimeUnavailable` without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecv.runtimes.base import RunnerBase, RuntimeUnavailable


class TorchCudaRunner(RunnerBase):
    runtime = "torch_cuda"

    def __init__(self, path: Path, threads: int | None = 1, device: str = "cuda", cuda_graph: bool = True):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeUnavailable("torch_cuda: no CUDA GPU visible to torch")
        dev = torch.device(device if device.startswith("cuda") else "cuda")
        model = torch.jit.load(str(path), map_location=dev).eval()
        self.dtype = next(model.parameters(), torch.zeros(0)).dtype
        model = model.to(memory_format=torch.channels_last)
        self.model, self.torch, self.dev = model, torch, dev
        self.cuda_graph = cuda_graph
        self._graph = None
        self._static_in = self._static_out = None
        self.threads = threads
        self.device = str(dev)
        self.batch_size = None
        self.precision = "fp16" if self.dtype == torch.float16 else "fp32"

    def _capture(self, shape):
        torch = self.torch
        self._static_in = torch.zeros(shape, device=self.dev, dtype=self.dtype).contiguous(
            memory_format=torch.channels_last)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            for _ in range(3):  # warm up (cudnn autotune) outside the graph
                self.model(self._static_in)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g), torch.no_grad():
            self._static_out = self.model(self._static_in)
        self._graph = g

    def predict(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if not self.cuda_graph:
            with torch.no_grad():
                xd = x.to(self.dev, self.dtype).contiguous(memory_format=torch.channels_last)
                return self.model(xd).float().cpu().numpy()
        if self._graph is None or tuple(self._static_in.shape) != tuple(x.shape):
            self._capture(tuple(x.shape))
        self._static_in.copy_(x.to(self.dev, self.dtype))
        self._graph.replay()
        return self._static_out.float().cpu().numpy()

    def describe(self) -> dict:
        d = super().describe()
        d.update(version=self.torch.__version__, gpu=self.torch.cuda.get_device_name(self.dev),
                 precision=self.precision, cuda_graph=self.cuda_graph)
        return d


def load(path: Path, threads: int | None = 1, device: str = "cuda", **opts) -> TorchCudaRunner:
    if device == "cpu":
        device = "cuda"
    return TorchCudaRunner(path, threads=threads, device=device, **opts)
