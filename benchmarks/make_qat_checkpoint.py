"""Make a small float + INT8-QAT checkpoint pair for export tests/benchmarks (no compress run needed).

    python benchmarks/make_qat_checkpoint.py --data digits --arch tf_mobilenetv3_small_minimal_100 \
        --img-size 32 --epochs 2 --qat-epochs 1 --out benchmarks/_work/ck

writes OUT/float.pt (edgecv train-style checkpoint) and OUT/qat.pt (meta["quant"], rebuildable by
checkpoint.build()), plus OUT/run/run.json in the compress RUN_DIR layout (prune = float, quantize = QAT).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from edgecv.data.datasets import load_train_val, sample_calibration
from edgecv.models.checkpoint import save_checkpoint
from edgecv.models.registry import create_model
from edgecv.quant import QuantConfig, calibrate, freeze_bn, prepare_qat
from edgecv.training.loop import TrainConfig, fit
from edgecv.utils import sha256_file


def make(data: str, arch: str, img_size: int, epochs: int, qat_epochs: int, out: Path, lr: float = 3e-3,
         batch_size: int = 64, seed: int = 0, log=print) -> dict:
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    b = load_train_val(data, img_size=img_size, seed=seed)
    pre = b.preprocess if b.preprocess.input_size == img_size else b.preprocess.with_size(img_size)
    tr, va = b.train.with_transform(pre.train_transform()), b.val.with_transform(pre.eval_transform())
    model = create_model(arch, b.num_classes)
    t0 = time.perf_counter()
    res = fit(model, tr, va, TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, workers=0, seed=seed,
                                          device="cpu", desc="float"), log=log) if epochs else None
    f_top1 = res.best_top1 if res else float("nan")
    save_checkpoint(out / "float.pt", model, arch, b.class_names, pre,
                    metrics={"val_top1": f_top1, "data": b.source})
    qcfg = QuantConfig(trace_size=img_size)
    prepare_qat(model, qcfg)
    cal = sample_calibration(b.train, 256, seed).with_transform(pre.eval_transform())
    calibrate(model, torch.utils.data.DataLoader(cal, batch_size=64))
    q_top1 = None
    if qat_epochs:
        def on_epoch_start(ep, m):
            if ep >= max(0, qat_epochs - 1):
                freeze_bn(m)

        r = fit(model, tr, va, TrainConfig(epochs=qat_epochs, batch_size=batch_size, lr=lr / 10, warmup_epochs=0,
                                            workers=0, seed=seed, device="cpu", desc="qat"),
                on_epoch_start=on_epoch_start, log=log)
        q_top1 = r.best_top1
    save_checkpoint(out / "qat.pt", model.eval(), arch, b.class_names, pre,
                    metrics={"val_top1": q_top1, "data": b.source}, meta={"quant": model.edgecv_quant})
    run = out / "run"
    run.mkdir(exist_ok=True)
    stages = {}
    for name, f in (("prune", "float.pt"), ("quantize", "qat.pt")):
        dst = run / f"{name}.pt"
        dst.write_bytes((out / f).read_bytes())
        stages[name] = {"status": "done", "checkpoint": dst.name, "sha256": sha256_file(dst),
                        "val_top1": f_top1 if name == "prune" else q_top1}
    (run / "run.json").write_text(json.dumps({
        "schema": "edgecv.run/1", "stages": stages, "completed": list(stages), "img_size": img_size,
        "class_names": b.class_names, "data": b.source, "arch": arch}, indent=2))
    return {"float_top1": f_top1, "qat_top1": q_top1, "wall_s": round(time.perf_counter() - t0, 1),
            "float": str(out / "float.pt"), "qat": str(out / "qat.pt"), "run": str(run)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--arch", default="tf_mobilenetv3_small_minimal_100")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", default="benchmarks/_work/ck")
    a = ap.parse_args()
    torch.set_num_threads(2)
    print(json.dumps(make(a.data, a.arch, a.img_size, a.epochs, a.qat_epochs, Path(a.out), a.lr), indent=2))
