"""Graph introspection of a torch model: one hooked zero-input forward, MACs and parameter counts."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def traced_forward(model: nn.Module, hooks: list[tuple[nn.Module, Callable]], img_size: int, batch: int = 1,
                   in_ch: int = 3) -> None:
    """One eval-mode, no-grad forward of zeros with temporary forward ``hooks`` ((module, fn) pairs); the hooks are
    removed and the training mode restored afterwards. How MACs, Conv+BN pairs and feature maps are found. The
    input takes the device/dtype of the first floating-point parameter (or buffer: a deploy-form QAT model)."""
    ref = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    device, dtype = (ref.device, ref.dtype) if ref is not None else ("cpu", torch.float32)
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(batch, in_ch, img_size, img_size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def count_macs(model: nn.Module, img_size: int, in_ch: int = 3) -> int:
    """Multiply-accumulates of one forward pass at ``img_size`` (conv + linear layers; the standard count)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * k

    def lin_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    hooks = [(m, conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [(m, lin_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    traced_forward(model, hooks, img_size, in_ch=in_ch)
    return int(total)


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
