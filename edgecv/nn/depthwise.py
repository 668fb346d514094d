"""The weight gradient of a depthwise convolution on the CPU, summed tap by tap where oneDNN's kernel is slow.

oneDNN's depthwise backward-weights kernel is slow when the input plane is smaller than the kernel: the 3x3 and 5x5
depthwise convolutions of MobileNetV3's and EfficientNet-Lite's last stages, whose planes are 2-4 px at the 64-96 px
inputs edgecv trains students at. Measured on a 2-core AMD EPYC (AVX2), mobilenet_v3_small at 64 px, batch 64: a
5x5 depthwise conv on a 2x2 plane took 25-43 ms for its weight gradient against 2-4 ms summed over its 25 taps (one
shifted product each), and the whole training step was 1.75x faster; on planes as large as its kernel or larger
oneDNN was as fast or faster (benchmarks/depthwise_backward.py, benchmarks/RESULTS.md).

:func:`fast_depthwise_backward` routes, for the duration of a training epoch, each depthwise ``nn.Conv2d`` (the QAT
modules' convs too) whose input plane is smaller than its kernel (:func:`covers`) through :class:`_DepthwiseConv`: the forward
and the input gradient are ATen's own, the weight gradient is the tap sum; the same sums in another order (equal
to float rounding; tests/test_depthwise.py). The rule is a shape test, not a timing, so a run replays bit for bit.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# how the routing reads in run.json (compress.softlabels.student_step_path)
RULE = "tap sum where the input plane is smaller than the kernel, else ATen (edgecv.nn.depthwise)"


def covers(kernel: tuple[int, int], in_hw: tuple[int, int]) -> bool:
    """Whether the tap sum computes this depthwise conv's weight gradient: its input plane is smaller than its
    kernel in both directions, where oneDNN's kernel is slow (5x5 on 4x4, 3x3 on 2x2: 4-50x); from a plane as
    large as the kernel on, oneDNN is as fast or faster (benchmarks/depthwise_backward.py)."""
    return in_hw[0] < kernel[0] and in_hw[1] < kernel[1]


def weight_grad_taps(x: torch.Tensor, g: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """``dL/dW`` of a depthwise conv (weight ``(C, 1, kh, kw)``): for each tap, the input plane it saw times the
    output gradient, summed over the batch and the output plane."""
    kh, kw = kernel
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = g.shape[-2:]
    xp = F.pad(x, (pw, pw, ph, ph))
    taps = [(xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] * g).sum((0, 2, 3))
            for i in range(kh) for j in range(kw)]
    return torch.stack(taps, 1).view(x.shape[1], 1, kh, kw)


class _DepthwiseConv(torch.autograd.Function):
    """ATen's depthwise forward and input gradient; the weight gradient by :func:`weight_grad_taps`."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x:
            gx = torch.ops.aten.convolution_backward(
                g, x, weight, None, list(stride), list(padding), list(dilation), False, [0, 0], x.shape[1],
                [True, False, False])[0]
        if need_w:
            gw = weight_grad_taps(x, g, tuple(weight.shape[-2:]), stride, padding, dilation)
        if ctx.has_bias and need_b:
            gb = g.sum((0, 2, 3))
        return gx, gw, gb, None, None, None


def _conv_forward(self: nn.Conv2d, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    if (input.device.type == "cpu" and input.dim() == 4 and torch.is_grad_enabled()
            and covers(self.kernel_size, tuple(input.shape[-2:]))):
        return _DepthwiseConv.apply(input, weight, bias, self.stride, self.padding, self.dilation)
    return type(self)._conv_forward(self, input, weight, bias)


def eligible(m: nn.Module) -> bool:
    """A plain depthwise ``nn.Conv2d`` (or subclass) with zero padding given as sizes."""
    return (isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
            and m.padding_mode == "zeros" and not isinstance(m.padding, str))


@contextmanager
def fast_depthwise_backward(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Route ``model``'s eligible depthwise convs through the tap-sum weight gradient while the block runs (the
    count is yielded); every conv is given back its own forward on exit, so tracing, pruning and export never
    see the patch. CPU only: on another device a patched conv takes its own path."""
    patched: list[nn.Conv2d] = []
    if enabled:
        for m in model.modules():
            if eligible(m) and "_conv_forward" not in m.__dict__:  # not already routed by an outer block
                m._conv_forward = types.MethodType(_conv_forward, m)
                patched.append(m)
    try:
        yield len(patched)
    finally:
        for m in patched:
            m.__dict__.pop("_conv_forward", None)
