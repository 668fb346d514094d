"""Runtime introspection: which kernels a runtime really runs, and what a measurement ran on."""

from __future__ import annotations

import platform
from collections import Counter
from pathlib import Path

from edgecv.runtimes.base import host_description

INT8_OPS = ("QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
            "MatMulIntegerToFloat", "NhwcFusedConv_q", "QLinearGlobalAveragePool", "QLinearAdd", "QLinearMul",
            "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool", "QLinearSoftmax")


def ort_int8_kernels(path: Path, threads: int = 1) -> dict:
    """Which kernels ONNX Runtime (CPU, ORT_ENABLE_ALL) really runs: counts of the optimized graph's ops."""
    import tempfile

    import onnx
    import onnxruntime as ort

    src = onnx.load(str(path))
    n_conv_src = sum(1 for n in src.graph.node if n.op_type == "Conv")
    n_gemm_src = sum(1 for n in src.graph.node if n.op_type in ("Gemm", "MatMul"))
    with tempfile.TemporaryDirectory() as d:
        opt = Path(d) / "opt.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.optimized_model_filepath = str(opt)
        so.log_severity_level = 3  # not the "optimized model is hardware specific" warning: it is only inspected
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        om = onnx.load(str(opt))
    ops = Counter(n.op_type for n in om.graph.node)
    int8 = {k: v for k, v in ops.items() if k in INT8_OPS}
    float_convs = ops.get("Conv", 0) + ops.get("FusedConv", 0) + ops.get("NhwcFusedConv", 0)
    int8_convs = ops.get("QLinearConv", 0) + ops.get("ConvInteger", 0)
    return {
        "runtime": "onnxruntime " + ort.__version__,
        "convs_in_model": n_conv_src,
        "gemm_in_model": n_gemm_src,
        "int8_convs": int8_convs,
        "float_convs": float_convs,
        "int8_ops": int8,
        "optimized_ops": dict(ops.most_common()),
        "int8_kernels": int8_convs > 0 and int8_convs >= n_conv_src * 0.5,
    }


def measured_on(runner, threads: int | None) -> tuple[str, str]:
    """(measured_on, device) from the runner: host CPU + threads, or the accelerator's name."""
    try:
        d = runner.describe() or {}
    except Exception:  # noqa: BLE001 - describe() is informative only
        d = {}
    device = str(d.get("device") or getattr(runner, "device", "cpu"))
    if device.lower().startswith("cpu"):
        return f"{host_description()}, {platform.machine()}, {threads or 'default'} thread(s)", device
    name = d.get("gpu") or d.get("device_name") or d.get("device_full_name")
    if not name and device.startswith("cuda"):
        try:
            import torch

            name = torch.cuda.get_device_name(int(device.split(":")[1]) if ":" in device else 0)
        except Exception:  # noqa: BLE001
            name = None
    return f"{name or device} ({device}) on {platform.node() or 'host'}", device
