"""Augmentation presets (edgecv.data.augment) and their plumbing: replayable views, the light preset equal to the
historical pad-crop-flip transform, strong's MixUp/CutMix soft targets through the loop and the KD loss, the
preset recorded in checkpoints and reused by compress."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from edgecv.data.augment import PRESETS, Augment, default_preset, resolve_preset
from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError
from tests.conftest import make_image_folder


def _photo(w: int = 61, h: int = 45, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _px(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_replays_a_view_from_its_params(preset):
    pre = Preprocess(input_size=24, augment=preset)
    aug = pre.augmenter()
    assert aug.replayable
    base = pre.train_base(_photo())
    views = []
    for seed in range(6):
        p = aug.sample(*base.size, torch.Generator().manual_seed(seed))
        assert len(p) == Augment.N_PARAMS and all(isinstance(v, float) for v in p)
        a, b = aug.apply(base, p), aug.apply(base, tuple(p))
        assert a.size == (24, 24) and a.mode == "RGB"
        np.testing.assert_array_equal(_px(a), _px(b))  # same (base, params) -> same pixels
        # the params survive a float64 tensor round trip (how the soft-label cache stores them)
        np.testing.assert_array_equal(_px(aug.apply(base, tuple(torch.tensor(p, dtype=torch.float64).tolist()))),
                                      _px(a))
        # __call__ with an equally seeded generator draws the same view
        np.testing.assert_array_equal(_px(aug(base, torch.Generator().manual_seed(seed))), _px(a))
        views.append(_px(a))
    distinct = len({v.tobytes() for v in views})
    assert distinct == 1 if preset == "none" else distinct > 1


def test_none_is_the_evaluation_crop():
    pre = Preprocess(input_size=24, augment="none")
    img = _photo(50, 37)
    x = pre.train_transform()(img)
    np.testing.assert_array_equal(x.numpy(), pre.to_array(img))


def _old_train_transform(pre: Preprocess):
    """The train_transform of edgecv before presets, verbatim: centre crop, RandomCrop(pad, reflect), flip."""
    from torchvision import transforms as T

    pad = max(1, pre.input_size // 8)
    aug = [T.RandomCrop(pre.input_size, padding=pad, padding_mode="reflect")]
    if pre.hflip:
        aug.append(T.RandomHorizontalFlip())
    aug = T.Compose(aug)

    def _t(img):
        img = img.convert("RGB")
        w, h = img.size
        s = pre.resize_size
        nw, nh = (s, max(1, int(round(h * s / w)))) if w <= h else (max(1, int(round(w * s / h))), s)
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - pre.input_size) // 2, (nh - pre.input_size) // 2
        img = aug(img.crop((left, top, left + pre.input_size, top + pre.input_size)))
        a = (np.asarray(img, dtype=np.float32) / 255.0 - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))

    return _t


@pytest.mark.parametrize("hflip", [True, False])
@pytest.mark.parametrize("size", [(61, 45), (32, 80), (33, 33)])
def test_light_reproduces_the_old_transform(hflip, size):
    pre = Preprocess(input_size=32, hflip=hflip)  # augment "" (files before presets) means light
    assert pre.augment_preset == "light"
    img = _photo(*size)
    old, new = _old_train_transform(pre), pre.train_transform()
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        a = old(img)
        torch.manual_seed(seed)
        b = new(img)
        assert b.shape == (3, 32, 32)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        p = pre.augmenter().sample(32, 32, torch.Generator().manual_seed(seed))
        assert 0 <= p[0] <= 2 * 4 and 0 <= p[1] <= 2 * 4  # random crop of the 32 + 2 x 4 padded image
        flips.add(p[4])
    assert flips == ({0.0, 1.0} if hflip else {0.0})


def test_light_params_mean_pad_crop_flip():
    pre = Preprocess(input_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    aug = pre.augmenter()
    base = pre.train_base(_photo(16, 16))
    centre = _px(base)
    # offset (pad, pad) without flip: the centre crop itself; (0, 0): shifted by the pad, reflect-padded
    p = [0.0] * Augment.N_PARAMS
    p[0] = p[1] = float(aug.pad)
    np.testing.assert_array_equal(_px(aug.apply(base, tuple(p))), centre)
    p[4] = 1.0
    np.testing.assert_array_equal(_px(aug.apply(base, tuple(p))), centre[:, ::-1])
    p = [0.0] * Augment.N_PARAMS
    shifted = _px(aug.apply(base, tuple(p)))
    np.testing.assert_array_equal(shifted[aug.pad:, aug.pad:], centre[:16 - aug.pad, :16 - aug.pad])
    np.testing.assert_array_equal(shifted[0, aug.pad:], centre[aug.pad, :16 - aug.pad])  # reflect: row pad mirrors


def test_default_and_resolved_presets():
    assert default_preset(32) == "light" and default_preset(64) == "light" and default_preset(128) == "standard"
    assert resolve_preset("auto", 224) == "standard" and resolve_preset("auto", 32) == "light"
    assert resolve_preset("auto", 224, "strong") == "strong" and resolve_preset("none", 224, "strong") == "none"
    with pytest.raises(UserError, match="--augment"):
        resolve_preset("heavy", 32)
    with pytest.raises(UserError, match="augmentation preset 'heavy'"):
        Preprocess(augment="heavy")
    old = Preprocess.from_dict({k: v for k, v in Preprocess(input_size=32).to_dict().items() if k != "augment"})
    assert old.augment == "" and old.augment_preset == "light"
    assert Preprocess.from_dict(Preprocess(augment="strong").to_dict()).augment == "strong"


def test_strong_mixup_cutmix_soft_targets_reach_the_loss():
    """The loop mixes every batch under 'strong' and hands (N, C) soft targets to the loss; KD's hard term and
    ClassificationLoss both take them."""
    from edgecv.compress.distill import KDConfig, KDLoss
    from edgecv.training.loop import TrainConfig, fit
    from edgecv.training.losses import ClassificationLoss, mix_batch

    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    seen = []
    for _ in range(20):
        xm, mixed = mix_batch(x, y)
        t = mixed.soft(3)
        assert xm.shape == x.shape and t.shape == (16, 3)
        torch.testing.assert_close(t.sum(1), torch.ones(16))
        assert 0.0 <= mixed.lam <= 1.0
        # each row: lam on its own label, 1 - lam on its partner's
        assert torch.allclose(t[torch.arange(16), y] >= mixed.lam - 1e-6, torch.ones(16, dtype=torch.bool))
        seen.append(bool(torch.equal(xm, x * mixed.lam + x[mixed.perm] * (1 - mixed.lam))))
    assert any(seen) and not all(seen)  # both MixUp and CutMix occur
    logits = torch.randn(16, 3, requires_grad=True)
    for loss in (ClassificationLoss("ce", 0.1), ClassificationLoss("focal", 0.1, torch.ones(3))):
        v = loss(logits, t)
        v.backward()
        assert torch.isfinite(v) and logits.grad is not None
    kd = KDLoss(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)), KDConfig(), Preprocess(input_size=8), None)
    assert torch.isfinite(kd(torch.randn(16, 3), t, x))

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    ds = torch.utils.data.TensorDataset(x, y)
    shapes = []

    def loss_fn(logits, targets, images):
        shapes.append(tuple(targets.shape))
        return F.cross_entropy(logits, targets)

    res = fit(model, ds, ds, TrainConfig(epochs=1, batch_size=8, workers=0, device="cpu", augment="strong"),
              loss_fn=loss_fn)
    assert shapes == [(8, 3), (8, 3)] and res.history[0]["val_balanced_acc"] is not None
    shapes.clear()
    fit(model, ds, ds, TrainConfig(epochs=1, batch_size=8, workers=0, device="cpu", augment="light"), loss_fn=loss_fn)
    assert shapes == [(8,), (8,)]


def test_preset_saved_in_checkpoint_and_reused_by_compress(tmp_path):
    from edgecv.compress.config import CompressConfig
    from edgecv.compress.pipeline import _load_inputs, train_config
    from edgecv.models.checkpoint import load_checkpoint
    from edgecv.training.loop import TrainConfig
    from edgecv.training.teacher import train_classifier

    data = make_image_folder(tmp_path / "data", n_train=4, n_val=2, size=20)
    out = tmp_path / "t.pt"
    cfg = TrainConfig(epochs=1, batch_size=4, workers=0, device="cpu", augment="standard")
    res = train_classifier(str(data), "resnet18", out, cfg, img_size=16, decode_cache="off")
    ck = load_checkpoint(out)
    assert ck.preprocess.augment == "standard" and ck.meta["train_config"]["augment"] == "standard"
    assert "val_balanced_acc" in res.fit.history[0]

    def student_pre(augment):
        c = CompressConfig(teacher=str(out), data=str(data), augment=augment, workers=0, device="cpu")
        c.validate()
        bundle, _, _, size = _load_inputs(c, lambda s: None)
        return bundle.preprocess, train_config(c, 1, "distill", augment=bundle.preprocess.augment_preset)

    pre, tcfg = student_pre("auto")  # auto: the teacher's recorded preset
    assert pre.augment == "standard" and pre.input_size == 16 and tcfg.augment == "standard"
    pre, tcfg = student_pre("strong")  # an explicit choice wins
    assert pre.augment == "strong" and tcfg.augment == "strong"
    with pytest.raises(UserError, match="--augment"):
        CompressConfig(augment="heavy").validate()
