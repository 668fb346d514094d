"""OpenVINO runner: CPU (INFERENCE_NUM_THREADS, PERFORMANCE_HINT=LATENCY), GPU when present; IR or ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecv.runtimes.base import RunnerBase, RuntimeUnavailable, predict_in_chunks


class OpenVinoRunner(RunnerBase):
    runtime = "openvino"

    def __init__(self, path: Path, threads: int | None = 1, device: str = "cpu", hint: str = "LATENCY",
                 batch_size: int | None = None, inference_precision: str | None = "f32"):
        try:
            import openvino as ov
        except ImportError as e:
            raise RuntimeUnavailable(f"openvino is not installed ({e})") from None
        core = ov.Core()
        dev = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}.get(device.split(":")[0].lower(), device.upper())
        if dev.split(".")[0] not in core.available_devices and not any(d.startswith(dev) for d in core.available_devices):
            raise RuntimeUnavailable(f"openvino: device {dev} not available (available: {core.available_devices})")
        model = core.read_model(str(path))
        inp = model.inputs[0]
        if batch_size:  # pin a dynamic batch for a static, faster compiled model
            ps = inp.get_partial_shape()
            ps[0] = int(batch_size)
            model.reshape({inp.any_name: ps})
        cfg: dict = {"PERFORMANCE_HINT": hint}
        if threads and dev == "CPU":
            cfg["INFERENCE_NUM_THREADS"] = int(threads)
        if inference_precision and dev == "CPU":
            # CPUs with bf16/AMX default float layers to bf16, which breaks fp32 parity (measured: 93 % top-1
            # agreement on an AVX512-BF16 EPYC); int8 layers stay int8 regardless of this hint
            cfg["INFERENCE_PRECISION_HINT"] = inference_precision
        self.inference_precision = inference_precision
        self.compiled = core.compile_model(model, dev, cfg)
        self.request = self.compiled.create_infer_request()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape())
        self.batch_size = self.input_shape[0]
        self.threads = threads
        self.device = dev
        self._ov_version = ov.get_version()

    def _run(self, x: np.ndarray) -> np.ndarray:
        res = self.request.infer({0: x})
        return np.asarray(res[self.compiled.outputs[0]], dtype=np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return predict_in_chunks(self._run, x, self.batch_size).copy()

    def describe(self) -> dict:
        d = super().describe()
        d["version"] = self._ov_version
        d["inference_precision"] = self.inference_precision
        try:
            d["execution_devices"] = list(self.compiled.get_property("EXECUTION_DEVICES"))
        except Exception:
            pass
        return d


def load(path: Path, threads: int | None = 1, device: str = "cpu", **opts) -> OpenVinoRunner:
    return OpenVinoRunner(path, threads=threads, device=device, **opts)
