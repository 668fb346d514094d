import json

import pytest
import torch

from edgecv.data.datasets import load_train_val
from edgecv.errors import TrainingError
from edgecv.models.registry import create_model
from edgecv.training.loop import TrainConfig, fit

ARCH = "tf_mobilenetv3_small_minimal_100"  # small, learns the coloured images in a few epochs


def test_train_then_eval_agree(tmp_path, tiny_folder, cli):
    out = tmp_path / "t.pt"
    p = cli("train", "--data", str(tiny_folder), "--arch", "resnet18", "--epochs", "2", "--img-size", "16",
            "--batch-size", "8", "--out", str(out), "--json", check=True)
    res = json.loads(p.stdout)
    assert out.is_file() and not (tmp_path / "t.pt.state").exists()
    assert res["effective_batch"] == 8 and len(res["history"]) == 2
    cm = tmp_path / "cm.png"
    e = cli("eval", str(out), "--data", str(tiny_folder), "--confusion", str(cm), "--json", check=True)
    rep = json.loads(e.stdout)
    # the training JSON rounds to 3 decimals; one image of 359 is 0.28 pt, so 0.01 means "the same images"
    assert abs(rep["top1"] - res["best_val_top1"]) < 0.01
    assert rep["n"] == 12 and set(rep["per_class"]) == {"blue", "green", "red"}
    assert cm.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_auto_batch_size_rule():
    from edgecv.training.loop import auto_batch_size
    assert auto_batch_size(10_000) == 64 and auto_batch_size(640) == 64  # >= 10 steps at 64: the default
    assert auto_batch_size(245) == 16  # hymenoptera: 3 steps at 64, 15 at 16
    assert auto_batch_size(245, world=2) == 8 and auto_batch_size(20) == 8  # never below 8
    assert auto_batch_size(1_300, world=2) == 64 and auto_batch_size(1_200, world=2) == 32


def test_train_default_batch_follows_dataset_size(tmp_path, tiny_folder, cli):
    out = tmp_path / "t.pt"
    p = cli("train", "--data", str(tiny_folder), "--arch", "resnet18", "--epochs", "1", "--img-size", "16",
            "--out", str(out), "--json", check=True)
    assert json.loads(p.stdout)["effective_batch"] == 8  # a few dozen images: the smallest auto batch
    assert "batch size 8 per process (auto:" in p.stderr
    ck = torch.load(out, map_location="cpu", weights_only=True)
    assert ck["meta"]["train_config"]["batch_size"] == 8  # the resolved value is what the checkpoint records


@pytest.mark.parametrize("args,needle", [
    (["train", "--data", "/definitely/not/here"], "no such directory"),
    (["train", "--arch", "nope"], "unknown arch"),
    (["eval", "/nope.pt"], "no such checkpoint"),
    (["train", "--epochs", "-1"], "Invalid value"),
])
def test_bad_input_exits_2_with_one_line(cli, args, needle):
    p = cli(*args)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr


def test_corrupt_image_exit_2_then_skip_bad(tmp_path, tiny_folder, cli):
    (tiny_folder / "train" / "red" / "zz.jpg").write_bytes(b"garbage")
    p = cli("train", "--data", str(tiny_folder), "--epochs", "0", "--img-size", "16", "--out", str(tmp_path / "x.pt"))
    assert p.returncode == 2 and "zz.jpg" in p.stderr
    assert not (tmp_path / "x.pt").exists()
    p = cli("train", "--data", str(tiny_folder), "--epochs", "1", "--img-size", "16", "--skip-bad",
            "--out", str(tmp_path / "x.pt"), check=True)
    assert (tmp_path / "x.pt").is_file()


def test_resume_continues_after_last_epoch(tmp_path, tiny_folder):
    b = load_train_val(str(tiny_folder), img_size=16)
    tr = b.train.with_transform(b.preprocess.train_transform())
    va = b.val.with_transform(b.preprocess.eval_transform())
    state = tmp_path / "s.state"
    cfg = TrainConfig(epochs=1, batch_size=8, workers=0)
    fit(create_model("resnet18", 3), tr, va, cfg, state_path=state)
    cfg2 = TrainConfig(epochs=3, batch_size=8, workers=0)
    logs = []
    r = fit(create_model("resnet18", 3), tr, va, cfg2, state_path=state, resume=True, log=logs.append)
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert any("resumed after epoch 1" in s for s in logs)


def test_nan_loss_stops_with_clear_error(tiny_folder):
    b = load_train_val(str(tiny_folder), img_size=16)
    tr = b.train.with_transform(b.preprocess.train_transform())
    va = b.val.with_transform(b.preprocess.eval_transform())

    def nan_loss(logits, y, x):
        return logits.sum() * torch.tensor(float("nan"))

    with pytest.raises(TrainingError, match="loss became nan"):
        fit(create_model("resnet18", 3), tr, va, TrainConfig(epochs=1, batch_size=8, workers=0), loss_fn=nan_loss)


def test_tensorboard_scalars(tmp_path, tiny_folder):
    pytest.importorskip("tensorboard")
    b = load_train_val(str(tiny_folder), img_size=16)
    tr = b.train.with_transform(b.preprocess.train_transform())
    va = b.val.with_transform(b.preprocess.eval_transform())
    fit(create_model("resnet18", 3), tr, va, TrainConfig(epochs=1, batch_size=8, workers=0,
                                                         tensorboard=str(tmp_path / "tb")))
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_digits_default_reaches_95(tmp_path, cli):
    out = tmp_path / "digits.pt"
    p = cli("train", "--data", "digits", "--epochs", "3", "--out", str(out), "--json", check=True)
    res = json.loads(p.stdout)
    assert res["best_val_top1"] >= 95.0
    rep = json.loads(cli("eval", str(out), "--data", "digits", "--json", check=True).stdout)
    # the training JSON rounds to 3 decimals; one image of 359 is 0.28 pt, so 0.01 means "the same images"
    assert abs(rep["top1"] - res["best_val_top1"]) < 0.01


def test_trainer_uses_fused_adamw_on_the_cpu():
    """The loop's AdamW runs its fused kernel for floating CPU parameters (measured faster, RESULTS.md)."""
    from edgecv.training.loop import _Trainer, fused_ok

    model = create_model("mobilenet_v3_small", 3)
    ds = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,)))
    tr = _Trainer(model, ds, TrainConfig(epochs=1, batch_size=4, device="cpu"), None, lambda s: None)
    assert all(g["fused"] for g in tr.opt.param_groups)
    assert not fused_ok([]) and not fused_ok([torch.zeros(2, dtype=torch.int64)])


def test_epoch_base_moves_the_epoch_the_data_sees():
    """``epoch_base`` (compress's later stages): the dataset's ``set_epoch`` and the shuffle follow
    ``epoch_base + epoch``, so a fit with base 3 draws what epochs 3.. of one long fit draw, not epoch 0's."""

    class Recording(torch.utils.data.TensorDataset):
        def __init__(self):
            super().__init__(torch.randn(12, 3, 8, 8), torch.arange(12) % 2)
            self.epochs, self.order = [], []

        def set_epoch(self, e):
            self.epochs.append(e)

        def __getitem__(self, i):
            self.order.append(i)
            return super().__getitem__(i)

    runs = {}
    for base, epochs in ((0, 5), (3, 2)):
        ds = Recording()
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
        fit(model, ds, torch.utils.data.TensorDataset(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])),
            TrainConfig(epochs=epochs, batch_size=4, device="cpu", epoch_base=base))
        runs[base] = ds
    assert runs[0].epochs == [0, 1, 2, 3, 4] and runs[3].epochs == [3, 4]
    assert runs[3].order == runs[0].order[36:]  # epochs 3 and 4 of the long fit: the same shuffles


def test_keep_start_returns_the_starting_weights_when_no_epoch_beats_them(tmp_path):
    """fit(keep_start=True): the starting weights are "epoch" 0 of the best-on-val choice. A model trained well,
    then "fine-tuned" towards the wrong labels, comes back unchanged, with the start's metrics; the same fit from
    an untrained model keeps a trained epoch. A resume keeps the start's record."""
    from tests.conftest import make_image_folder

    b = load_train_val(str(make_image_folder(tmp_path / "data", n_train=16, n_val=8, size=32)), img_size=32)
    tr = b.train.with_transform(b.preprocess.eval_transform())
    va = b.val.with_transform(b.preprocess.eval_transform())
    torch.manual_seed(0)
    m = create_model(ARCH, 3)
    good = fit(m, tr, va, TrainConfig(epochs=10, batch_size=16, lr=1e-2, workers=0, warmup_epochs=0))
    assert good.best_top1 > 90.0, good.history
    before = {k: v.clone() for k, v in m.state_dict().items()}

    def wrong(logits, y, x):  # every image taught the next class: no epoch can beat a model that learned
        return torch.nn.functional.cross_entropy(logits, (y + 1) % 3)

    logs = []
    r = fit(m, tr, va, TrainConfig(epochs=2, batch_size=16, lr=1e-2, workers=0), loss_fn=wrong, keep_start=True,
            log=logs.append, state_path=tmp_path / "k.state")
    assert r.kept_start and r.best_epoch == 0 and r.best_top1 == r.start["val_top1"] > 90.0
    assert all(h["val_top1"] < r.best_top1 for h in r.history) and len(r.history) == 2
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert r.best_metrics["val_balanced_acc"] == r.start["val_balanced_acc"] is not None and r.best_confusion
    assert any("kept them" in s for s in logs)
    # resumed after its last epoch: the start's record and the choice survive the state file
    r2 = fit(m, tr, va, TrainConfig(epochs=2, batch_size=16, lr=1e-2, workers=0), loss_fn=wrong, keep_start=True,
             state_path=tmp_path / "k.state", resume=True)
    assert r2.kept_start and r2.start == r.start

    torch.manual_seed(0)
    fresh = fit(create_model(ARCH, 3), tr, va, TrainConfig(epochs=10, batch_size=16, lr=1e-2, workers=0,
                                                          warmup_epochs=0), keep_start=True)
    assert not fresh.kept_start and fresh.best_epoch >= 1 and fresh.best_top1 > fresh.start["val_top1"]
