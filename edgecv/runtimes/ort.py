"""ONNX Runtime runner: CPU, and the CUDA / TensorRT execution providers when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecv.runtimes.base import RunnerBase, RuntimeUnavailable

_EP = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OrtRunner(RunnerBase):
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = 1, device: str = "cpu", optimized_model_path: str | None = None,
                 graph_optimization: str = "all"):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeUnavailable(f"onnxruntime is not installed ({e})") from None
        ep = _EP.get(device.split(":")[0])
        if ep is None:
            raise RuntimeUnavailable(f"onnxruntime: unknown device '{device}' (cpu, cuda, tensorrt)")
        if ep not in ort.get_available_providers():
            raise RuntimeUnavailable(f"onnxruntime: {ep} is not available in this build")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        if optimized_model_path:
            so.optimized_model_filepath = str(optimized_model_path)
        providers = [ep] if ep == "CPUExecutionProvider" else [ep, "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        self.batch_size = self.input_shape[0]
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        self.threads = threads
        self.device = device

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return out.astype(np.float32, copy=False)

    def describe(self) -> dict:
        d = super().describe()
        d["providers"] = self.session.get_providers()
        import onnxruntime as ort

        d["version"] = ort.__version__
        return d


def load(path: Path, threads: int | None = 1, device: str = "cpu", **opts) -> OrtRunner:
    return OrtRunner(path, threads=threads, device=device, **opts)
