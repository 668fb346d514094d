"""TensorRT runner (TensorRT >= 10 API): deserialize the engine, device buffers via cuda-python
(``cuda.bindings.runtime``), ``set_input_shape`` within the optimization profile, ``set_tensor_address`` and
``execute_async_v3`` on a CUDA stream. Needs ``tensorrt``, ``cuda-python`` and an NVIDIA GPU; raises
:class:`RuntimeUnavailable` otherwise (engines only run on the kind of GPU that built them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecv.runtimes.base import RunnerBase, RuntimeUnavailable, predict_in_chunks


def _check(res):
    """cuda-python calls return (err, *values); raise on error, return the values."""
    err, *vals = res if isinstance(res, tuple) else (res,)
    from cuda.bindings import runtime as cudart

    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA error: {cudart.cudaGetErrorName(err)[1]}")
    return vals[0] if len(vals) == 1 else vals


class TensorRTRunner(RunnerBase):
    runtime = "tensorrt"

    def __init__(self, path: Path, threads: int | None = 1, device: str = "cuda:0"):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise RuntimeUnavailable(f"tensorrt is not installed ({e})") from None
        try:
            from cuda.bindings import runtime as cudart
        except ImportError as e:
            raise RuntimeUnavailable(f"cuda-python (cuda.bindings) is not installed ({e})") from None
        err, n = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or n == 0:
            raise RuntimeUnavailable("tensorrt: no CUDA GPU visible")
        self._cudart, self._trt = cudart, trt
        dev_idx = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        _check(cudart.cudaSetDevice(dev_idx))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.trt_runtime = trt.Runtime(self.logger)
        self.engine = self.trt_runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeUnavailable(f"tensorrt: cannot deserialize {path} (built for another GPU / TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1:
            raise RuntimeUnavailable(f"tensorrt: expected one input tensor, engine has {self.inputs}")
        self.in_name, self.out_name = self.inputs[0], self.outputs[0]
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.in_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.out_name)))
        shape = tuple(self.engine.get_tensor_shape(self.in_name))
        self.input_shape = tuple(int(d) if d >= 0 else None for d in shape)
        if shape[0] == -1:
            mn, _opt, mx = self.engine.get_tensor_profile_shape(self.in_name, 0)
            self.max_batch = int(mx[0])
            self.batch_size = None
        else:
            self.max_batch = int(shape[0])
            self.batch_size = int(shape[0])
        self.stream = _check(cudart.cudaStreamCreate())
        self._bufs: dict[str, tuple[int, int]] = {}  # name -> (ptr, nbytes)
        self.threads = threads
        self.device = f"cuda:{dev_idx}"

    def _buf(self, name: str, nbytes: int) -> int:
        ptr, cap = self._bufs.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr))
            ptr = _check(self._cudart.cudaMalloc(nbytes))
            self._bufs[name] = (ptr, nbytes)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def _run(self, x: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        x = np.ascontiguousarray(x, dtype=self.in_dtype)
        self.context.set_input_shape(self.in_name, x.shape)
        out_shape = tuple(self.context.get_tensor_shape(self.out_name))
        out = np.empty(out_shape, dtype=self.out_dtype)
        in_ptr = self._buf(self.in_name, x.nbytes)
        out_ptr = self._buf(self.out_name, out.nbytes)
        for extra in self.outputs[1:]:
            shp = tuple(self.context.get_tensor_shape(extra))
            self._buf(extra, int(np.prod(shp)) * np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(extra))).itemsize)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(in_ptr, x.ctypes.data, x.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("tensorrt: execute_async_v3 failed")
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, out_ptr, out.nbytes, d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return out.astype(np.float32, copy=False)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.batch_size is None and batch.shape[0] > self.max_batch:
            return predict_in_chunks(self._run, batch, self.max_batch)
        return predict_in_chunks(self._run, batch, self.batch_size)

    def describe(self) -> dict:
        d = super().describe()
        d["version"] = self._trt.__version__
        return d

    def close(self) -> None:
        for ptr, _ in self._bufs.values():
            self._cudart.cudaFree(ptr)
        self._bufs.clear()
        if getattr(self, "stream", None) is not None:
            self._cudart.cudaStreamDestroy(self.stream)
            self.stream = None


def load(path: Path, threads: int | None = 1, device: str = "cuda:0", **opts) -> TensorRTRunner:
    if device == "cpu":
        device = "cuda:0"  # TensorRT is GPU-only; "cpu" is the generic default of callers
    return TensorRTRunner(path, threads=threads, device=device)
