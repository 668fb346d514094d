"""The tap-sum weight gradient of depthwise convs (edgecv.nn.depthwise): the same gradients as ATen's, on every
shape it takes, through whole students (float and QAT) and the training loop, and nothing left patched after."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecv.models.registry import create_model
from edgecv.nn.depthwise import covers, eligible, fast_depthwise_backward, weight_grad_taps


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("k", "s", "p", "d", "hw"), [
    (3, 1, (1, 1), (1, 1), (1, 1)), (3, 2, (1, 1), (1, 1), (2, 2)), (3, 1, (1, 1), (1, 1), (9, 7)),
    (5, 1, (2, 2), (1, 1), (2, 2)), (5, 2, (2, 2), (1, 1), (4, 4)), (5, 1, (2, 2), (1, 1), (12, 12)),
    (3, 1, (2, 2), (2, 2), (3, 5)), (5, 2, (1, 2), (1, 1), (5, 6)), (3, 1, (0, 0), (1, 1), (4, 4)),
])
def test_weight_grad_taps_equals_aten(channels_last, k, s, p, d, hw):
    torch.manual_seed(0)
    c = 12
    x = torch.randn(5, c, *hw)
    w = torch.randn(c, 1, k, k)
    if channels_last:
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(F.conv2d(x, w, None, s, p, d, c))
    ref = torch.ops.aten.convolution_backward(g, x, w, None, [s, s], list(p), list(d), False, [0, 0], c,
                                              [False, True, False])[1]
    got = weight_grad_taps(x, g, (k, k), (s, s), p, d)
    assert got.shape == ref.shape
    assert _rel(got, ref) < 1e-5


def test_covers_is_a_shape_rule():
    # the input plane against the kernel: 5x5 on 4x4 and 2x2, 3x3 on 2x2 and 1x1 take the tap sum
    assert covers((5, 5), (4, 4)) and covers((5, 5), (2, 2)) and covers((3, 3), (2, 2)) and covers((3, 3), (1, 1))
    assert not covers((3, 3), (3, 3)) and not covers((5, 5), (8, 8)) and not covers((5, 5), (4, 5))


def test_eligible_only_plain_depthwise():
    assert eligible(nn.Conv2d(8, 8, 3, groups=8, padding=1))
    assert not eligible(nn.Conv2d(8, 16, 3, groups=8, padding=1))  # channel multiplier
    assert not eligible(nn.Conv2d(8, 8, 3, groups=2, padding=1))  # grouped, not depthwise
    assert not eligible(nn.Conv2d(8, 8, 1))
    assert not eligible(nn.Conv2d(8, 8, 3, groups=8, padding=1, padding_mode="reflect"))
    assert not eligible(nn.Conv2d(8, 8, 3, groups=8, padding="same"))


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    torch.manual_seed(1)  # the same dropout mask in both passes
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _patched_count(model: nn.Module) -> int:
    return sum("_conv_forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("channels_last", [True, False])
def test_student_gradients_unchanged_and_nothing_left_patched(channels_last):
    torch.manual_seed(0)
    m = create_model("mobilenet_v3_small", 10).train()
    x = torch.randn(6, 3, 64, 64)
    if channels_last:
        m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (6,))
    m2 = copy.deepcopy(m)
    ref = _grads(m, x, y)
    with fast_depthwise_backward(m2) as n:
        # at 64 px the last stages' 5x5 depthwise convs see 2-4 px planes
        assert n == sum(eligible(mod) for mod in m2.modules()) > 0
        got = _grads(m2, x, y)
        with torch.no_grad():  # eval and no-grad take ATen's own path: bit for bit
            m.eval(), m2.eval()
            assert torch.equal(m(x), m2(x))
            m.train(), m2.train()
    assert len(got) == len(ref) and max(_rel(a, b) for a, b in zip(got, ref, strict=True)) < 1e-4
    assert _patched_count(m2) == 0
    copy.deepcopy(m2)  # a plain module again


def test_qat_student_takes_the_same_path():
    from edgecv.quant import QuantConfig, prepare_qat

    torch.manual_seed(0)
    q = prepare_qat(create_model("mobilenet_v3_small", 10).eval(), QuantConfig(trace_size=64)).train()
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    q2 = copy.deepcopy(q)
    ref = _grads(q, x, y)
    with fast_depthwise_backward(q2) as n:
        assert n > 0
        got = _grads(q2, x, y)
    assert max(_rel(a, b) for a, b in zip(got, ref, strict=True)) < 1e-4
    assert _patched_count(q2) == 0


def test_restored_after_an_exception_and_disabled_is_a_no_op():
    m = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match="boom"), fast_depthwise_backward(m):
        assert _patched_count(m) == 1
        raise RuntimeError("boom")
    assert _patched_count(m) == 0
    with fast_depthwise_backward(m, enabled=False) as n:
        assert n == 0 and _patched_count(m) == 0


def test_bias_and_input_gradients():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 5, padding=2, groups=6, bias=True)
    x = torch.randn(3, 6, 2, 3, requires_grad=True)
    conv2 = copy.deepcopy(conv)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(3, 6, 2, 3)
    conv(x).backward(g)
    with fast_depthwise_backward(conv2):
        conv2(x2).backward(g)
    assert _rel(x2.grad, x.grad) < 1e-5
    assert _rel(conv2.weight.grad, conv.weight.grad) < 1e-5
    assert _rel(conv2.bias.grad, conv.bias.grad) < 1e-5


def test_the_training_loop_patches_each_epoch_and_unpatches(tmp_path):
    from torch.utils.data import TensorDataset

    from edgecv.training.config import TrainConfig
    from edgecv.training.loop import fit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 5, padding=2, groups=3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 2))
    seen = []

    def loss_fn(logits, targets, images):
        seen.append(_patched_count(model))
        return F.cross_entropy(logits, targets)

    ds = TensorDataset(torch.randn(32, 3, 4, 4), torch.randint(0, 2, (32,)))
    fit(model, ds, ds, TrainConfig(epochs=2, batch_size=8, device="cpu", workers=0), loss_fn=loss_fn)
    assert seen and all(n == 1 for n in seen)
    assert _patched_count(model) == 0
