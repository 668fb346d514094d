"""Fine-tuning policy: what --freeze freezes (through a real training step of the one loop), frozen BatchNorms
kept in eval mode, the dataset-size default, and the backbone's scaled learning rate in the optimizer."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from edgecv.errors import UserError
from edgecv.models.registry import ARCHS, create_model
from edgecv.training.finetune import apply_policy, blocks, head_blocks, last_blocks, resolve_freeze
from edgecv.training.loop import TrainConfig, _Trainer, fit


def _data(n=16, size=32, classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % classes
    return TensorDataset(x, y)


CFG = TrainConfig(epochs=1, batch_size=8, lr=1e-2, workers=0, device="cpu", warmup_epochs=0)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("freeze,frozen_prefix,trained_prefix", [
    ("until:layer3", ("conv1.", "bn1.", "layer1.", "layer2."), ("layer3.", "layer4.", "fc.")),
    ("backbone", ("conv1.", "layer1.", "layer4."), ("fc.",)),
])
def test_frozen_params_and_bn_stats_unchanged_after_training(freeze, frozen_prefix, trained_prefix):
    torch.manual_seed(0)
    model = create_model("resnet18", 2)
    pol, params = apply_policy(model, freeze, 16, {"kind": "file"})
    before = _snapshot(model)
    fit(model, _data(), _data(8, seed=1), CFG, params=params)  # model.train() every epoch: frozen BN stays eval
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(frozen_prefix)]
    assert any(k.endswith("running_mean") for k in frozen)
    for k in frozen:  # weights, biases, running_mean / running_var / num_batches_tracked
        assert torch.equal(before[k], after[k]), k
    changed = [k for k in before if k.startswith(trained_prefix) and k.endswith("weight")
               and not torch.equal(before[k], after[k])]
    assert changed
    if freeze == "until:layer3":  # a trainable BN tracks the batches
        assert not torch.equal(before["layer3.0.bn1.running_mean"], after["layer3.0.bn1.running_mean"])
    assert pol.frozen_bn > 0 and pol.frozen_params > 0
    model.train()
    assert not model.bn1.training and model.fc.training


def test_auto_policy_trains_everything_from_weights_too():
    """auto = none at every data size, from scratch and from weights (measured from ImageNet weights: none beat the
    head only on 245 photos and the last blocks on 10,000 images; docs/finetune.md); the other policies by name."""
    for n in (245, 5_000, 20_000):
        assert resolve_freeze("auto", n, True)[0] == "none"
    assert resolve_freeze("auto", 500, False) == ("none", "from scratch")
    assert resolve_freeze("backbone", 500, True) == ("backbone", "--freeze")
    mb = create_model("mobilenet_v3_small", 2)
    assert resolve_freeze(f"until:{last_blocks('mobilenet_v3_small', mb)}", 5_000, True)[0] == "until:features.9"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_has_valid_last_blocks_and_head(arch):
    m = create_model(arch, 3)
    lb = last_blocks(arch, m)
    assert lb in blocks(m)
    pol, _ = apply_policy(m, f"until:{lb}", 100, {"kind": "file"})
    assert pol.trainable_blocks[0] == lb and pol.frozen_params > 0
    assert head_blocks(m) and head_blocks(m)[-1] == pol.trainable_blocks[-1]


def test_unknown_layer_lists_the_blocks():
    m = create_model("resnet18", 2)
    with pytest.raises(UserError) as e:
        apply_policy(m, "until:layer9", 100, None)
    msg = str(e.value)
    assert "until:layer9" in msg and "conv1, bn1, layer1, layer2, layer3, layer4, fc" in msg
    with pytest.raises(UserError, match="auto, none, backbone or until:LAYER"):
        apply_policy(m, "sideways", 100, None)


def test_param_groups_get_the_scaled_lr_through_the_schedule():
    m = create_model("resnet18", 2)
    pol, params = apply_policy(m, "none", 16, {"kind": "file"}, backbone_lr_scale=0.25)
    assert [g["name"] for g in params] == ["head", "backbone"]
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, workers=0, device="cpu", warmup_epochs=1)
    tr = _Trainer(m, _data(), cfg, params, lambda s: None)
    head = {id(p) for p in m.fc.parameters()}
    for step in range(10):  # warm-up then cosine: the ratio holds at every step
        lrs = {}
        for g in tr.opt.param_groups:
            if g["params"]:
                lrs.setdefault("head" if id(g["params"][0]) in head else "backbone", set()).add(g["lr"])
        (h,), (b,) = lrs["head"], lrs["backbone"]
        assert b == pytest.approx(0.25 * h), step
        tr.opt.step()
        tr.sched.step()
    assert h < cfg.lr  # the schedule moved both groups
    # defaults: from pretrained/init weights 0.1 on a small set, 1.0 from 1,000 images; 1.0 (one group, as before)
    # from scratch
    assert apply_policy(create_model("resnet18", 2), "none", 16, {"kind": "file"})[0].backbone_lr_scale == 0.1
    assert apply_policy(create_model("resnet18", 2), "none", 999, {"kind": "file"})[0].backbone_lr_scale == 0.1
    assert apply_policy(create_model("resnet18", 2), "none", 1000, {"kind": "file"})[0].backbone_lr_scale == 1.0
    pol0, params0 = apply_policy(create_model("resnet18", 2), "auto", 16, None)
    assert pol0.backbone_lr_scale == 1.0 and pol0.resolved == "none" and params0 is None
