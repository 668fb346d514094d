"""Real test bundles for bench/gate tests: small torch models exported with torch.onnx.export + a real manifest."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgecv.contracts.manifest import ArtifactEntry, Manifest
from edgecv.data.preprocess import Preprocess
from edgecv.utils import sha256_file


class TinyNet(nn.Module):
    """A small conv classifier; ``width`` and ``depth`` scale its compute (for 'slower candidate' tests)."""

    def __init__(self, num_classes: int = 3, width: int = 16, depth: int = 2):
        super().__init__()
        layers = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class ColourNet(nn.Module):
    """logits = per-channel image mean: classifies the red/green/blue test images by colour (a known-good model)."""

    def __init__(self, perm=(0, 1, 2)):
        super().__init__()
        self.perm = list(perm)

    def forward(self, x):
        return x.mean(dim=(2, 3))[:, self.perm] * 10.0


def export_onnx(model: nn.Module, path: Path, size: int = 32, dynamic_batch: bool = True) -> Path:
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}} if dynamic_batch else {}
    torch.onnx.export(model, torch.randn(1, 3, size, size), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False, **kw)
    return path


def make_bundle(root: Path, model: nn.Module | None = None, size: int = 32, class_names=("red", "green", "blue"),
                extra_entries: list[ArtifactEntry] | None = None, target: str = "x86", seed: int = 0,
                name: str = "model_fp32.onnx") -> Path:
    """A bundle folder with one real ONNX FP32 artifact (+ optional extra manifest entries)."""
    torch.manual_seed(seed)
    model = model or TinyNet(len(class_names))
    root.mkdir(parents=True, exist_ok=True)
    f = export_onnx(model, root / name, size)
    pre = Preprocess(input_size=size)
    entry = ArtifactEntry(file=f.name, format="onnx", precision="fp32", runtime="onnxruntime",
                          size_bytes=f.stat().st_size, sha256=sha256_file(f), input_shape=[1, 3, size, size])
    man = Manifest(target=target, source={"kind": "test", "arch": type(model).__name__}, preprocess=pre.to_dict(),
                   class_names=list(class_names), input={"name": "input", "shape": [1, 3, size, size],
                                                         "dtype": "float32", "layout": "NCHW"},
                   output={"name": "logits", "shape": [1, len(class_names)]},
                   artifacts=[entry, *(extra_entries or [])])
    man.write(root)
    return root
