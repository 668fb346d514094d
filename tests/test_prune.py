"""Structured pruning (edgecv.compress.prune): MobileNetV3 stays valid, MAC target reached, spec reload exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from edgecv.compress.prune import (
    check_se_consistency,
    finetune_schedule,
    milestones,
    plan_rounds,
    prune_to_macs,
    recalibrate_bn,
    reconstruct,
    residual_layers,
    widths,
)
from edgecv.errors import UserError
from edgecv.models.registry import create_model
from edgecv.nn.graph import count_macs
from edgecv.nn.spec import channel_spec_of


@pytest.fixture(scope="module")
def pruned_mnv3():
    torch.manual_seed(0)
    m = create_model("mobilenet_v3_small", 5)
    base = count_macs(m, 32)
    macs = prune_to_macs(m, 32, 5, int(0.5 * base))
    return m, base, macs


def test_prune_reaches_mac_target(pruned_mnv3):
    m, base, macs = pruned_mnv3
    assert macs <= 0.5 * base
    assert macs == count_macs(m, 32)
    assert macs > 0.2 * base  # pruned in small steps, not collapsed


def test_pruned_mnv3_valid(pruned_mnv3):
    m, _, _ = pruned_mnv3
    m.eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert check_se_consistency(m) == []
    for name, c in m.named_modules():
        if isinstance(c, nn.Conv2d):
            assert c.out_channels % 8 == 0, (name, c.out_channels)
            if c.groups > 1:  # depthwise stays depthwise
                assert c.groups == c.in_channels == c.out_channels
    assert m.classifier[-1].out_features == 5
    # SE blocks still scale their block's channels: fc2 output == the depthwise conv output before it
    n_se = 0
    for blk in m.features[1:-1]:
        layers = list(blk.block)
        for i, layer in enumerate(layers):
            if isinstance(layer, SqueezeExcitation):
                n_se += 1
                assert layer.fc2.out_channels == layer.fc1.in_channels == layers[i - 1][0].out_channels
    assert n_se == 9


def test_pruned_reload_from_spec_identical(pruned_mnv3):
    m, _, _ = pruned_mnv3
    spec = channel_spec_of(m)
    m2 = create_model("mobilenet_v3_small", 5, spec)
    m2.load_state_dict(m.state_dict())
    m.eval(), m2.eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(m(x), m2(x))


def test_taylor_importance_uses_gradients():
    torch.manual_seed(0)
    m = create_model("mobilenet_v3_small", 3)
    calls = []

    def grad_fn(model):
        calls.append(1)
        model.train()
        x = torch.randn(4, 3, 32, 32)
        F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()

    before = count_macs(m, 32)
    prune_to_macs(m, 32, 3, int(0.9 * before), importance="taylor", ratio=0.1, grad_fn=grad_fn)
    assert calls and count_macs(m, 32) <= 0.9 * before
    assert check_se_consistency(m) == []


def test_rounding_does_not_compound_on_narrow_layers():
    """Every prunable layer keeps about the same share of its channels: rounding to 8 happens against the round's
    starting widths, not once per step (which took a 40-channel layer to 16 while wide ones kept 75 %)."""
    torch.manual_seed(0)
    m = create_model("efficientnet_lite0", 10)
    before = widths(m)
    base = count_macs(m, 96)
    for mark in milestones(base, 0.5, 4):  # the prune stage's rounds, each relative to the unpruned widths
        prune_to_macs(m, 96, 10, mark, start=before)
    assert count_macs(m, 96) <= 0.5 * base
    kept = {n: c.out_channels / before[n] for n, c in m.named_modules() if n in before}
    assert min(kept.values()) >= 0.5, kept  # the old per-step rounding: 16/40 = 0.4 for the stage-2 stream
    wide = [k for n, k in kept.items() if before[n] >= 256]
    assert max(wide) - min(wide) < 0.05, kept  # one ratio for every wide layer


@pytest.mark.parametrize("arch, stream", [
    ("efficientnet_lite0", {f"blocks.{s}.{b}.conv_pwl" for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 4))
                            for b in range(n)}),
    ("resnet18", {"conv1", *(f"layer{i}.{b}.conv2" for i in range(1, 5) for b in (0, 1)),
                  *(f"layer{i}.0.downsample.0" for i in (2, 3, 4))}),
])
def test_residual_layers_are_the_convs_that_feed_an_add(arch, stream):
    m = create_model(arch, 10).eval()
    names = {c: n for n, c in m.named_modules()}
    assert {names[c] for c in residual_layers(m, torch.randn(2, 3, 64, 64))} == stream


def test_inner_scope_keeps_the_residual_stream_and_reaches_the_target():
    """``--prune-scope inner``: the residual stream keeps every channel, the inner channels pay for the MACs."""
    torch.manual_seed(0)
    m = create_model("efficientnet_lite0", 10)
    before, base = widths(m), count_macs(m, 96)
    stream = {n for n, c in m.named_modules() if c in residual_layers(m.eval(), torch.randn(2, 3, 96, 96))}
    macs = prune_to_macs(m, 96, 10, int(0.5 * base), scope="inner", start=before)
    assert macs <= 0.5 * base and macs == count_macs(m, 96)
    after = widths(m)
    assert all(after[n] == before[n] for n in stream)
    assert after["blocks.5.1.conv_pw"] < 0.6 * before["blocks.5.1.conv_pw"]  # deeper than the uniform cut's ~0.7
    m.eval()
    assert m(torch.randn(2, 3, 96, 96)).shape == (2, 10)
    with pytest.raises(UserError, match="--prune-scope must be one of all, inner"):
        prune_to_macs(m, 96, 10, 1, scope="outer")


def test_schedules():
    assert milestones(1000, 0.5, 4) == [875, 750, 625, 500]
    assert finetune_schedule(6, 4) == [1, 1, 1, 3]
    assert finetune_schedule(0, 3) == [0, 0, 0]
    assert sum(finetune_schedule(10, 4)) == 10


def test_plan_rounds_never_cuts_without_recovery():
    assert plan_rounds(6, 4) == (4, [1, 1, 1, 3], None)  # the defaults: as finetune_schedule
    assert plan_rounds(4, 4)[:2] == (3, [1, 1, 2])  # finetune_schedule would give [0, 0, 0, 4]
    assert plan_rounds(5, 2)[:2] == (2, [1, 4])
    rounds, sched, note = plan_rounds(3, 4)  # the real-photo run's [0, 0, 0, 3]; [1, 1, 1] until 2026-12-07
    assert (rounds, sched) == (2, [1, 2]) and "--prune-steps 4 with --epochs-prune 3" in note
    assert plan_rounds(2, 4)[:2] == (1, [2]) and plan_rounds(1, 4)[:2] == (1, [1])
    rounds, sched, note = plan_rounds(0, 4)
    assert (rounds, sched) == (1, [0]) and "one cut without fine-tune" in note
    assert plan_rounds(0, 1) == (1, [0], None)
    for total in range(0, 12):
        for steps in range(1, 7):
            r, s, _ = plan_rounds(total, steps)
            assert len(s) == r <= steps and sum(s) == total and (total == 0 or min(s) >= 1)
            assert total < 2 or s[-1] >= 2  # the last cut, to the target, gets two where it can


def test_recalibrate_bn_matches_the_data_and_keeps_weights():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Dropout(0.5))
    m.eval()
    x = torch.randn(64, 3, 8, 8) * 3 + 1
    w = m[0].weight.clone()
    seen = recalibrate_bn(m, [(x[:32], None), (x[32:], None)])
    assert seen == 64 and not m.training and m[1].momentum == 0.1  # mode and momentum restored
    feats = m[0](x)
    torch.testing.assert_close(m[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert torch.equal(m[0].weight, w)
    assert int(m[1].num_batches_tracked) == 2


def test_kept_channels_name_the_slices_the_cut_left():
    """``prune_to_macs(kept=...)`` records, per dense layer, which of its channels survive the whole call (several
    5 % steps): each pruned weight is exactly the original weight at those output and input channels."""
    import copy

    torch.manual_seed(0)
    m = create_model("efficientnet_lite0", 10)
    orig = copy.deepcopy(m)
    kept: dict = {}
    prune_to_macs(m, 64, 10, int(0.7 * count_macs(m, 64)), kept=kept)
    mods = dict(m.named_modules())
    assert any(len(k["in"]) < orig.get_submodule(n).weight.shape[1] for n, k in kept.items())  # inputs were cut
    for name, k in kept.items():
        w, w0 = mods[name].weight, orig.get_submodule(name).weight
        assert w.shape[:2] == (len(k["out"]), len(k["in"])), name
        assert torch.equal(w, w0[k["out"]][:, k["in"]]), name


def test_reconstruct_folds_a_cut_channel_into_the_kept_ones():
    """Channels 4-7 of the first layer are half of channels 0-3: with them cut, refitting the next layer (weights
    and bias) by least squares gives back the unpruned output exactly (the plain cut does not)."""
    torch.manual_seed(0)
    orig = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    with torch.no_grad():
        orig[0].weight[4:] = 0.5 * orig[0].weight[:4]
    pruned = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    pruned.load_state_dict({"0.weight": orig[0].weight[:4], "1.weight": orig[1].weight[:, :4], "1.bias": orig[1].bias,
                            "3.weight": orig[3].weight, "3.bias": orig[3].bias})
    kept = {"0": {"out": [0, 1, 2, 3], "in": [0, 1, 2]}, "1": {"out": [0, 1, 2, 3], "in": [0, 1, 2, 3]},
            "3": {"out": [0, 1, 2], "in": list(range(100))}}
    x = torch.randn(16, 3, 5, 5)
    with torch.no_grad():
        want, cut = orig(x), pruned(x)
    assert (cut - want).abs().max() > 1e-2
    assert reconstruct(orig, pruned, kept, [torch.randn(32, 3, 5, 5)], ridge=1e-9) == ["1"]
    with torch.no_grad():
        assert torch.allclose(pruned(x), want, atol=1e-4)


def test_reconstruct_brings_a_cut_network_closer_to_the_unpruned_one():
    """On a real cut (EfficientNet-Lite0 to 0.7 of its MACs), the refitted model's logits are closer to the unpruned
    model's than the plain cut's on images it was not fitted on; the head's bias is refitted with its weights."""
    import copy

    torch.manual_seed(0)
    m = create_model("efficientnet_lite0", 10).eval()
    with torch.no_grad():  # a trained-like head: random logits of a useful scale
        m.classifier.weight.mul_(20)
    orig = copy.deepcopy(m)
    kept: dict = {}
    prune_to_macs(m, 64, 10, int(0.7 * count_macs(m, 64)), kept=kept)
    x = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        want, cut = orig(x), m(x)
    done = reconstruct(orig, m, kept, [torch.randn(16, 3, 64, 64) for _ in range(2)])
    assert "classifier" in done and all(n.endswith(("conv_pw", "conv_pwl", "conv_head", "classifier")) for n in done)
    with torch.no_grad():
        after = m(x)
    assert F.mse_loss(after, want) < 0.5 * F.mse_loss(cut, want)
