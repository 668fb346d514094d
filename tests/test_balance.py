"""Class imbalance and its metrics: the balanced sampler (even classes, seeded, DDP shards), class weights, focal
loss, balanced accuracy / macro-F1 against scikit-learn, and where they are reported (training history, eval,
bench)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch import nn

from edgecv.data.metrics import confusion_matrix, logits_summary, summary
from edgecv.errors import UserError
from edgecv.training.balance import BalancedSampler, class_weights, labels_of
from edgecv.training.losses import ClassificationLoss
from tests.conftest import make_image_folder

SKEWED = np.array([0] * 600 + [1] * 60 + [2] * 6 + [3] * 30)


def test_sampler_draws_classes_evenly_on_an_imbalanced_set():
    s = BalancedSampler(SKEWED, seed=3)
    assert len(s) == len(SKEWED)
    counts = np.zeros(4)
    for epoch in range(5):
        s.set_epoch(epoch)
        idx = list(s)
        assert len(idx) == len(SKEWED) and all(0 <= i < len(SKEWED) for i in idx)
        counts += np.bincount(SKEWED[idx], minlength=4)
    expected = 5 * len(SKEWED) / 4
    assert np.all(np.abs(counts - expected) < 0.1 * expected), counts  # natural order would be 600:60:6:30
    s.set_epoch(0)
    again = BalancedSampler(SKEWED, seed=3)
    assert list(s) == list(again)  # seeded: the same list for the same (seed, epoch)
    again.set_epoch(1)
    assert list(s) != list(again)  # a new draw every epoch


@pytest.mark.parametrize("world", [2, 3])
def test_sampler_shards_are_disjoint_slices_of_one_draw(world):
    ranks = [BalancedSampler(SKEWED, seed=1, rank=r, world=world) for r in range(world)]
    for s in ranks:
        s.set_epoch(4)
    full = ranks[0].draw()
    assert all(s.draw() == full for s in ranks)  # every rank draws the same list
    shards = [list(s) for s in ranks]
    assert len({len(x) for x in shards}) == 1  # equal lengths: no rank waits in an all-reduce
    assert len(full) == world * len(shards[0]) >= len(SKEWED)
    positions = [set(range(r, len(full), world)) for r in range(world)]
    assert set.union(*positions) == set(range(len(full))) and sum(map(len, positions)) == len(full)  # disjoint
    for r, sh in enumerate(shards):
        assert sh == [full[p] for p in sorted(positions[r])]


def test_loader_uses_the_balanced_sampler_and_labels_without_decoding(tmp_path):
    from edgecv.data.datasets import load_train_val
    from edgecv.training.loop import make_loader

    root = make_image_folder(tmp_path / "d", classes=("a", "b"), n_train=2, n_val=1, size=8)
    for i in range(18):  # class a: 20 training images, class b: 2
        Image.new("RGB", (8, 8), (200, 40, i)).save(root / "train" / "a" / f"x{i:03d}.png")
    b = load_train_val(str(root), img_size=8)
    ds = b.train.with_transform(b.preprocess.eval_transform())
    assert labels_of(ds).tolist() == b.train.targets and np.bincount(labels_of(ds)).tolist() == [20, 2]
    loader = make_loader(ds, 4, True, 0, seed=0, balance=True)
    assert isinstance(loader.sampler, BalancedSampler)
    ys = torch.cat([y for _, y in loader]).numpy()
    assert len(ys) == 22 and 5 <= (ys == 1).sum() <= 17  # ~11 expected; unbalanced shuffling gives exactly 2
    with pytest.raises(UserError, match="labels"):
        labels_of(object())


def test_class_weights_inverse_frequency_mean_one():
    w = class_weights(SKEWED)
    counts = np.bincount(SKEWED)
    assert w.shape == (4,) and w.mean().item() == pytest.approx(1.0)
    np.testing.assert_allclose(w.numpy() * counts, (w[0] * counts[0]).item(), rtol=1e-5)  # w_c * n_c constant
    w5 = class_weights(SKEWED, num_classes=5)  # a class with no training image: neutral weight
    assert w5[4].item() == 1.0 and w5.mean().item() == pytest.approx(1.0)


def test_focal_loss_is_ce_at_gamma_zero_and_down_weights_easy_samples():
    torch.manual_seed(0)
    logits, y = torch.randn(32, 5) * 3, torch.randint(0, 5, (32,))
    w = torch.rand(5) + 0.5
    for ls in (0.0, 0.1):
        torch.testing.assert_close(ClassificationLoss("focal", ls, gamma=0.0)(logits, y),
                                   F.cross_entropy(logits, y, label_smoothing=ls))
    torch.testing.assert_close(ClassificationLoss("focal", 0.0, w, gamma=0.0)(logits, y),
                               F.cross_entropy(logits, y, weight=w))
    soft = torch.softmax(torch.randn(32, 5), 1)
    torch.testing.assert_close(ClassificationLoss("focal", 0.1, gamma=0.0)(logits, soft),
                               F.cross_entropy(logits, soft, label_smoothing=0.1))
    torch.testing.assert_close(ClassificationLoss("ce", 0.1, w)(logits, y),
                               F.cross_entropy(logits, y, weight=w, label_smoothing=0.1))
    # gamma 2: the per-sample reference formula
    p = torch.softmax(logits, 1)[torch.arange(32), y]
    ref = (-(1 - p) ** 2 * torch.log(p)).mean()
    torch.testing.assert_close(ClassificationLoss("focal")(logits, y), ref)
    easy = torch.tensor([[8.0, 0, 0]]), torch.tensor([0])
    hard = torch.tensor([[0.0, 2, 0]]), torch.tensor([0])
    r_easy = ClassificationLoss("focal")(*easy) / F.cross_entropy(*easy)
    r_hard = ClassificationLoss("focal")(*hard) / F.cross_entropy(*hard)
    assert r_easy < 0.01 < r_hard < 1.0
    with pytest.raises(UserError, match="--loss"):
        ClassificationLoss("hinge")


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_accuracy_and_macro_f1_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    c = 6
    y = rng.integers(0, c, 300)
    y[y == 5] = 4  # class 5 never true ...
    logits = rng.standard_normal((300, c)) + 2.0 * np.eye(c)[y]
    pred = logits.argmax(1)
    s = logits_summary(logits, y)
    assert s["balanced_acc"] == pytest.approx(100 * balanced_accuracy_score(y, pred))
    assert s["macro_f1"] == pytest.approx(100 * f1_score(y, pred, average="macro"))
    assert s["top1"] == pytest.approx(100 * (pred == y).mean())
    cm = confusion_matrix(y, pred, c)
    assert cm.sum() == 300 and summary(cm) == s


def test_training_history_eval_and_bench_report_them(tmp_path, cli):
    from edgecv.bench.accuracy import evaluate_runner, load_eval_arrays
    from edgecv.contracts.manifest import load_manifest
    from edgecv.runtimes.base import load_runner
    from edgecv.training.loop import TrainConfig
    from edgecv.training.metrics import evaluate_classifier
    from edgecv.training.teacher import train_classifier
    from tests.bench_util import TinyNet, make_bundle

    data = make_image_folder(tmp_path / "data", n_train=4, n_val=3, size=16)
    out = tmp_path / "t.pt"
    res = train_classifier(str(data), "resnet18", out, TrainConfig(epochs=1, batch_size=4, workers=0, device="cpu",
                                                                  balance="weights", loss="focal"),
                           img_size=16, decode_cache="off")
    rec = res.fit.history[0]
    assert {"val_top1", "val_balanced_acc", "val_macro_f1"} <= set(rec)
    assert set(res.fit.best_metrics) == {"val_balanced_acc", "val_macro_f1"}

    p = cli("eval", str(out), "--data", str(data), "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    cm = np.asarray(rep["confusion_matrix"])
    y = np.repeat(np.arange(3), cm.sum(1))
    pred = np.concatenate([np.repeat(np.arange(3), row) for row in cm])
    assert rep["balanced_acc"] == pytest.approx(100 * balanced_accuracy_score(y, pred))
    assert rep["macro_f1"] == pytest.approx(100 * f1_score(y, pred, average="macro"))

    # the loop's validation (confusion matrix, all-reduced under DDP) agrees with eval on the same images
    from edgecv.data.datasets import load_eval_dataset
    from edgecv.models.checkpoint import load_checkpoint

    ck = load_checkpoint(out)
    val = load_eval_dataset(str(data), ck.class_names).with_transform(ck.preprocess.eval_transform())
    m = evaluate_classifier(ck.build(), val, 4, torch.device("cpu"))
    assert m["n"] == rep["n"] and m["top1"] == pytest.approx(rep["top1"])
    assert m["balanced_acc"] == pytest.approx(rep["balanced_acc"]) and m["macro_f1"] == pytest.approx(rep["macro_f1"])

    torch.manual_seed(0)
    net = TinyNet(3).eval()
    b = make_bundle(tmp_path / "b", model=net)
    man = load_manifest(b)
    ev = load_eval_arrays(str(make_image_folder(tmp_path / "bd", size=32)), man.class_names, man.preprocess)
    got = evaluate_runner(load_runner("onnxruntime", b / "model_fp32.onnx", threads=1), ev, batch_size=8)
    with torch.no_grad():
        ref = net(torch.from_numpy(ev.x)).numpy().argmax(1)
    assert got["balanced_acc"] == pytest.approx(100 * balanced_accuracy_score(ev.y, ref))
    assert got["macro_f1"] == pytest.approx(100 * f1_score(ev.y, ref, average="macro"))


def test_bench_json_and_markdown_carry_them(tmp_path):
    import jsonschema

    from edgecv.bench.bench import BenchConfig, run_bench
    from edgecv.bench.report import to_markdown
    from edgecv.contracts.bench import load_schema
    from tests.bench_util import ColourNet, make_bundle

    b = make_bundle(tmp_path / "b", model=ColourNet())
    data = make_image_folder(tmp_path / "data", size=32)
    res = run_bench(str(b), BenchConfig(data=str(data), min_time_s=0.02, min_runs=3, warmup=1, rounds=1, batches=[1]))
    jsonschema.validate(res, load_schema("bench"))
    acc = {a["name"]: a for a in res["artifacts"]}["onnx-fp32"]["accuracy"]
    assert acc["top1"] == 100.0 and acc["balanced_acc"] == 100.0 and acc["macro_f1"] == 100.0
    md = to_markdown(res)
    assert "bal. acc / macro-F1 %" in md and "100.00 / 100.00" in md


def test_kd_hard_term_is_class_weighted():
    from edgecv.compress.distill import KDConfig, KDLoss
    from edgecv.data.preprocess import Preprocess

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    x, y, s = torch.randn(8, 3, 4, 4), torch.randint(0, 3, (8,)), torch.randn(8, 3)
    kd = KDLoss(teacher, KDConfig(alpha=0.0), Preprocess(input_size=4), None)
    torch.testing.assert_close(kd(s, y, x), F.cross_entropy(s, y))
    w = torch.tensor([0.2, 1.0, 1.8])
    kd.hard_loss = ClassificationLoss("ce", 0.0, w)
    torch.testing.assert_close(kd(s, y, x), F.cross_entropy(s, y, weight=w))
