"""INT8 fidelity of every runtime against the QAT-form model it comes from, on a model built from local weights:
ONNX Runtime and OpenVINO (the QDQ ONNX; OpenVINO with and without the ``DQ -> Clip -> Q`` guard) and, with
``--pte``, ExecuTorch (the QAT model written as PT2E q/dq).

    python benchmarks/int8_fidelity.py --arch efficientnet_lite0 \\
        --weights ~/.cache/edgecv/weights/efficientnet_lite0_imagenet.pt --data ~/.cache/edgecv/hymenoptera \\
        --img-size 96 --num-images 96 --calib 32 [--pte] [--json]

The model keeps the weights' own head (``--num-classes``, 1000 for ImageNet weights: a sensitive top-1); its QAT
form is a PTQ calibrated on ``--calib`` training images (:func:`edgecv.quant.ptq`). Rows: top-1 agreement with the
QAT model and with ONNX Runtime, mean |dlogit| vs ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return round(100.0 * float((a.argmax(1) == b.argmax(1)).mean()), 2)


def _openvino_unguarded(onnx_path: Path, xml: Path) -> None:
    """The IR as before the ``DQ -> Clip`` guard: only the residual guard applied."""
    import onnx
    import openvino as ov

    from edgecv.export.openvino import guard_residual_output_fq

    m = onnx.load(str(onnx_path))
    guard_residual_output_fq(m)
    src = xml.with_suffix(".onnx")
    onnx.save(m, str(src))
    ov.save_model(ov.convert_model(str(src)), str(xml), compress_to_fp16=False)


def main() -> None:
    from edgecv.data.arrays import to_arrays
    from edgecv.data.datasets import load_train_val
    from edgecv.data.preprocess import Preprocess
    from edgecv.export import onnx as E
    from edgecv.export import openvino as OV
    from edgecv.models.pretrained import init_weights_model
    from edgecv.quant import deploy, ptq
    from edgecv.runtimes.base import host_description
    from edgecv.runtimes.openvino import load as ov_load
    from edgecv.runtimes.ort import load as ort_load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--data", required=True)
    ap.add_argument("--img-size", type=int, default=96)
    ap.add_argument("--num-images", type=int, default=96)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--pte", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    pre = Preprocess(input_size=a.img_size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    b = load_train_val(os.path.expanduser(a.data), preprocess=pre)
    xt, _ = to_arrays(b.train, pre, "calibration images")
    xv, _ = to_arrays(b.val, pre, "images")
    x = np.concatenate([xv, xt])[: a.num_images]
    model, _ = init_weights_model(a.arch, a.num_classes, os.path.expanduser(a.weights))
    qat, n_cal = ptq(model.eval(), [xt[i : i + 32] for i in range(0, a.calib, 32)], a.img_size)
    with torch.no_grad():
        ref = np.concatenate([qat(torch.from_numpy(x[i : i + 32])).numpy() for i in range(0, len(x), 32)])
    out: dict[str, np.ndarray] = {}
    info: dict = {}
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        E.export_int8_qdq(deploy(qat), d / "m.onnx", a.img_size, calib_batches=[xt[:32]])
        OV.convert(d / "m.onnx", d / "ov" / "m.xml", info)
        (d / "raw").mkdir()
        _openvino_unguarded(d / "m.onnx", d / "raw" / "m.xml")
        out["onnxruntime"] = ort_load(d / "m.onnx").predict(x)
        out["openvino (unguarded DQ->Clip)"] = ov_load(d / "raw" / "m.xml").predict(x)
        out["openvino"] = ov_load(d / "ov" / "m.xml").predict(x)
        if a.pte:
            from edgecv.export.pte import export_int8
            from edgecv.runtimes.pte import PteRunner

            export_int8(deploy(qat), d / "m.pte", a.img_size)
            out["executorch"] = PteRunner(d / "m.pte").predict(x)
    ort_out = out["onnxruntime"]
    rows = [{"runtime": k, "agreement_qat": _agree(v, ref), "agreement_ort": _agree(v, ort_out),
             "mean_abs_dlogit_ort": round(float(np.abs(v - ort_out).mean()), 4)} for k, v in out.items()]
    meta = {"arch": a.arch, "img_size": a.img_size, "images": len(x), "calibration_images": n_cal,
            "guards": info, "host": host_description()}
    if a.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return
    print(json.dumps(meta))
    for r in rows:
        print(f"{r['runtime']:32s} vs QAT {r['agreement_qat']:6.2f} %  vs ORT {r['agreement_ort']:6.2f} %  "
              f"mean|dlogit| vs ORT {r['mean_abs_dlogit_ort']:.4f}")


if __name__ == "__main__":
    main()
