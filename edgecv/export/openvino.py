"""OpenVINO IR (.xml + .bin) from the ONNX files: fp32 (no fp16 weight compression) and INT8 (from the QDQ
ONNX: OpenVINO turns Q/DQ into FakeQuantize and its low-precision transformations run int8 convolutions).

:func:`ov_int8_kernels` compiles the IR for CPU and reads ``get_runtime_model()``: every executed layer carries
``layerType`` and ``runtimePrecision`` in its rt_info, so "int8 really runs" is checked, not assumed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path


def convert(onnx_path: Path, xml_path: Path) -> list[Path]:
    """ONNX -> IR, written atomically (both files to a temp dir, .bin renamed before .xml). Returns [xml, bin]."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    bin_path = xml_path.with_suffix(".bin")
    tmpdir = Path(tempfile.mkdtemp(prefix=".ov.", dir=xml_path.parent))
    try:
        txml = tmpdir / xml_path.name
        ov.save_model(model, str(txml), compress_to_fp16=False)
        os.replace(txml.with_suffix(".bin"), bin_path)
        os.replace(txml, xml_path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return [xml_path, bin_path]


def ov_int8_kernels(xml_path: Path, device: str = "CPU", threads: int = 1) -> dict:
    """Runtime precision of the convolutions / matmuls OpenVINO really executes on ``device``."""
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": int(threads)} if device == "CPU" and threads else {}
    cfg["INFERENCE_PRECISION_HINT"] = "f32"  # as the runner: float layers in f32, not the CPU's bf16 default
    compiled = core.compile_model(core.read_model(str(xml_path)), device, cfg)
    per = Counter()
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        lt = str(rt["layerType"].astype(str)) if "layerType" in rt else op.get_type_name()
        prec = str(rt["runtimePrecision"].astype(str)).upper() if "runtimePrecision" in rt else "?"
        per[(lt, prec)] += 1
    convs = {f"{lt}:{p}": n for (lt, p), n in per.items() if lt in ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")}
    int8_convs = sum(n for (lt, p), n in per.items() if lt == "Convolution" and p in ("I8", "U8"))
    all_convs = sum(n for (lt, p), n in per.items() if lt == "Convolution")
    return {
        "runtime": "openvino " + ov.get_version(),
        "device": device,
        "layers": convs,
        "int8_convs": int8_convs,
        "convs": all_convs,
        "int8_kernels": all_convs > 0 and int8_convs >= 0.5 * all_convs,
    }
