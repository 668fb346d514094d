"""TorchScript-lite (.ptl) for the PyTorch Mobile lite interpreter, and the full TorchScript module the torch-cuda
runtime (the eager GPU baseline) loads.

``optimize_for_mobile`` (conv/BN fold, XNNPACK prepacking) needs a torch build with XNNPACK; x86 wheels lack it
and the call raises. That is detected and recorded (``extra.optimize_for_mobile``), the unoptimized module is
saved instead, never a crash.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from edgecv.utils import atomic_path


def export_torchscript(model: nn.Module, path: Path, img_size: int, precision: str) -> dict:
    """The traced module with its weights in ``precision`` (not frozen: the runner reads the dtype from them)."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            scripted = torch.jit.trace(copy.deepcopy(model).eval().to(dtype),
                                       torch.zeros(1, 3, img_size, img_size, dtype=dtype), check_trace=False)
        with atomic_path(path) as tmp:
            torch.jit.save(scripted, str(tmp))
    return {"method": "torch.jit.trace", "dtype": str(dtype).removeprefix("torch.")}


def export_ptl(model: nn.Module, path: Path, img_size: int, optimize: bool = True) -> dict:
    model = model.eval()
    dummy = torch.zeros(1, 3, img_size, img_size)
    info: dict = {"method": "torch.jit.trace + freeze", "optimize_for_mobile": "not requested"}
    with warnings.catch_warnings():
        # TorchScript and the lite interpreter are deprecated upstream (FutureWarning on every call); the format is
        # still what PyTorch Mobile apps load, so it is written without the noise
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            scripted = torch.jit.trace(model, dummy, check_trace=False)
            scripted = torch.jit.freeze(scripted.eval())
        if optimize:
            try:
                from torch.utils.mobile_optimizer import optimize_for_mobile

                scripted = optimize_for_mobile(scripted)
                info["optimize_for_mobile"] = "applied"
            except Exception as e:  # x86 torch builds: no XNNPACK / mobile passes
                info["optimize_for_mobile"] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        with atomic_path(path) as tmp:
            scripted._save_for_lite_interpreter(str(tmp))
    return info
