"""Knowledge distillation loss (edgecv.compress.distill)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgecv.compress.distill import KDConfig, KDLoss, last_feature_module
from edgecv.data.datasets import load_train_val
from edgecv.data.preprocess import Preprocess
from edgecv.models.registry import create_model
from edgecv.training.loop import TrainConfig, fit


def _tiny(n=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n))


def test_kd_loss_reduces_to_ce_when_teacher_equals_student():
    m = _tiny()
    pre = Preprocess(input_size=16)
    kd = KDLoss(m, KDConfig(temperature=4.0, alpha=0.7), pre, pre)
    x = torch.randn(5, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0, 1])
    loss = kd(m(x), y, x)
    assert torch.allclose(loss, 0.3 * F.cross_entropy(m(x), y), atol=1e-5)


def test_kd_teacher_frozen_and_gradient_reaches_student_only():
    teacher, student = _tiny(), _tiny()
    teacher.train()
    pre = Preprocess(input_size=16)
    kd = KDLoss(teacher, KDConfig(), pre, pre)
    assert not teacher.training
    x = torch.randn(4, 3, 16, 16)
    kd(student(x), torch.tensor([0, 1, 2, 0]), x).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_teacher_input_resized_and_renormalised():
    s_pre = Preprocess(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    t_pre = Preprocess(input_size=32)  # ImageNet mean/std
    kd = KDLoss(_tiny(), KDConfig(), s_pre, t_pre)
    raw = torch.rand(1, 3, 1, 1).expand(2, 3, 16, 16)  # a flat colour: resizing must not change it
    xs = (raw - 0.5) / 0.5
    xt = kd.teacher_input(xs)
    assert xt.shape == (2, 3, 32, 32)
    mean = torch.tensor(t_pre.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(t_pre.std).reshape(1, 3, 1, 1)
    assert torch.allclose(xt, (raw[:, :, :1, :1] - mean) / std, atol=1e-5)


def test_feature_kd_adapter_trains():
    student = create_model("mobilenet_v3_small", 3)
    teacher = create_model("resnet18", 3)
    mod, ch = last_feature_module(teacher, 32)
    assert ch == 512
    pre = Preprocess(input_size=32)
    kd = KDLoss(teacher, KDConfig(beta=1.0), pre, pre, student=student)
    assert kd.extra_params()
    student.train()
    x = torch.randn(4, 3, 32, 32)
    loss = kd(student(x), torch.tensor([0, 1, 2, 0]), x)
    assert torch.isfinite(loss)
    loss.backward()
    assert kd.adapter.weight.grad is not None and kd.adapter.weight.grad.abs().sum() > 0
    kd.close()


def test_fit_with_kd_loss(tiny_folder_session):
    b = load_train_val(str(tiny_folder_session), img_size=16)
    train = b.train.with_transform(b.preprocess.train_transform())
    val = b.val.with_transform(b.preprocess.eval_transform())
    student = create_model("mobilenet_v3_small", 3)
    kd = KDLoss(_tiny(), KDConfig(), b.preprocess, b.preprocess.with_size(24))
    res = fit(student, train, val, TrainConfig(epochs=1, batch_size=16, workers=0), loss_fn=kd)
    assert len(res.history) == 1 and 0 <= res.best_top1 <= 100
