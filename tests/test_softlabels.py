"""Teacher soft labels stored once and replayed (edgecv.compress.softlabels): the cache key, exact replay of the
stored views, the KD term from stored logits, reuse by --resume and by another student (no teacher forward).
Two torchrun ranks sharing the cache: tests/test_softlabels_distributed.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecv.compress import softlabels as SL
from edgecv.compress.distill import KDConfig, KDLoss, stored_kd
from edgecv.data.datasets import load_train_val
from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError
from tests.conftest import make_image_folder, save_untrained_teacher

CLASSES = ("red", "green", "blue")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("EDGECV_CACHE", str(d))
    return d


@pytest.fixture
def data(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data", n_train=4, n_val=2, size=20)


def _tiny(n=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, n)).eval()


def _key(data: Path, teacher_sha="t" * 64, size=16, preset="standard", views=2, t_size=16, bf16=False):
    b = load_train_val(str(data))
    pre = Preprocess(input_size=size, augment=preset)
    return SL.cache_key(teacher_sha, SL.data_fingerprint(b.train, b.val), pre, Preprocess(input_size=t_size),
                        views, 3, bf16)


def test_teacher_cache_values():
    assert SL.parse_teacher_cache("off") == 0
    assert SL.parse_teacher_cache("auto") is None
    assert SL.parse_teacher_cache("views=6") == 6
    for bad in ("views=0", "views=x", "on", ""):
        with pytest.raises(UserError, match="--teacher-cache"):
            SL.parse_teacher_cache(bad)
    assert [SL.default_views(e) for e in (3, 19, 100)] == [2, 5, 8]
    assert [SL.default_views(e, teacher_bf16=True) for e in (3, 19, 100)] == [2, 10, 16]  # half-cost views


def test_key_changes_with_teacher_data_augmentation_size_and_views(data):
    k0 = _key(data)
    assert _key(data) == k0  # stable
    changed = [_key(data, teacher_sha="u" * 64), _key(data, size=20), _key(data, t_size=32),
               _key(data, preset="light"), _key(data, views=3), _key(data, bf16=True)]
    img = next((data / "train" / "red").iterdir())
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the same file list, one newer file
    changed.append(_key(data))
    (data / "train" / "red" / "new.png").write_bytes((data / "train" / "red" / "000.png").read_bytes())
    changed.append(_key(data))
    digests = {SL.key_digest(k) for k in [k0, *changed]}
    assert len(digests) == len(changed) + 1


def test_teacher_precision(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(SL, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    assert SL.teacher_bf16(cpu, "auto")[0] and not SL.teacher_bf16(cpu, "fp32")[0]
    assert SL.live_teacher_path(cpu, True, "fp32")["autocast"] == "off"  # the baseline: the teacher as trained
    assert SL.live_teacher_path(cpu, True, "auto")["autocast"] == "bf16"
    monkeypatch.setattr(SL, "cpu_flags", lambda: {"avx2"})
    assert not SL.teacher_bf16(cpu, "auto")[0]
    on, why = SL.teacher_bf16(cpu, "bf16")  # forced: emulated, and the reason says so
    assert on and "AVX2" in why
    assert not SL.teacher_bf16(torch.device("cuda"), "bf16")[0]  # CUDA: fp16 autocast, as before
    with pytest.raises(UserError, match="--teacher-precision"):
        SL.teacher_bf16(cpu, "fp16")
    from edgecv.compress.config import CompressConfig

    with pytest.raises(UserError, match="--teacher-precision"):
        CompressConfig(teacher_precision="fp16").validate()


def test_obtain_builds_once_then_reuses_and_rebuilds_on_a_key_change(cache, data):
    builds = []

    def build_fn():
        builds.append(1)
        return SL.SoftLabels(torch.zeros(3, 2, 16, dtype=torch.float64), torch.zeros(3, 2, 3, dtype=torch.int16),
                             torch.zeros(3, 2, 3, dtype=torch.float16), torch.tensor([0, 1, 2]))

    k = _key(data)
    _, rec = SL.obtain(k, build_fn, print)
    assert rec["built"] and len(builds) == 1 and rec["size_bytes"] > 0
    assert Path(rec["path"]).parent == cache / "softlabels"
    _, rec2 = SL.obtain(k, build_fn, print)
    assert not rec2["built"] and len(builds) == 1 and rec2["build_s"] == rec["build_s"]
    _, rec3 = SL.obtain(_key(data, views=3), build_fn, print)
    assert rec3["built"] and len(builds) == 2 and rec3["path"] != rec["path"]
    Path(rec["path"]).write_bytes(b"truncated")  # a damaged file is rebuilt, not trained on
    _, rec4 = SL.obtain(k, build_fn, print)
    assert rec4["built"] and len(builds) == 3
    assert not list((cache / "softlabels").glob("*.tmp*"))  # atomic: no temp file left


@pytest.mark.parametrize("preset,t_size", [("light", 16), ("standard", 24)])
def test_replayed_view_is_exactly_the_input_the_teacher_saw(data, preset, t_size):
    b = load_train_val(str(data))
    pre = Preprocess(input_size=16, augment=preset)
    teacher = _tiny()
    kd = KDLoss(teacher, KDConfig(), pre, Preprocess(input_size=t_size))
    seen: list[torch.Tensor] = []

    def teacher_logits(x):
        seen.append(x.clone())
        return kd.teacher_logits(x)

    views = 3
    sl = SL.build(b.train, pre, teacher_logits, 3, views, 3, batch_size=6, workers=0, device=torch.device("cpu"))
    stored_inputs = torch.cat(seen).reshape(len(b.train), views, 3, 16, 16)
    ds = SL.SoftLabelDataset(b.train, pre, sl, seed=0)
    for i in range(len(b.train)):
        for v in range(views):
            x = ds.student_input(i, v)
            assert torch.equal(x, stored_inputs[i, v])  # the crop, flip, colour: bit for bit
            t = kd.teacher_logits(x[None])[0]  # the teacher's own preprocessing of that exact view
            assert torch.allclose(sl.logits[i, v].float(), t, atol=2e-3, rtol=1e-3)
    # not all views alike (the augmentation really varies), and a view's choice is (seed, epoch, index)
    assert not torch.equal(stored_inputs[:, 0], stored_inputs[:, 1])
    x0, y0, ex0 = ds[1]
    ds.set_epoch(5)
    picks5 = ds.view.clone()
    ds.set_epoch(0)
    assert torch.equal(ds[1][0], x0) and ds[1][1] == y0 and torch.equal(ds[1][2]["t_val"], ex0["t_val"])
    ds.set_epoch(5)
    assert torch.equal(ds.view, picks5)
    # any K consecutive epochs of one cycle use each stored view of an image exactly once
    for cycle in range(2):
        used = []
        for e in range(cycle * views, (cycle + 1) * views):
            ds.set_epoch(e)
            used.append(ds.view.clone())
        assert torch.equal(torch.stack(used, 1).sort(1).values, torch.arange(views).expand(len(b.train), views))


def test_stored_kd_equals_the_live_term_with_every_class_and_ignores_the_rest_with_top_k():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    T = 3.0
    live = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True) * T * T
    idx = torch.arange(7).expand(5, 7)
    assert torch.allclose(stored_kd(s, idx, t, T), live, atol=1e-6)
    val, ix = t.topk(3, dim=1)
    p = F.softmax(val / T, 1)
    want = (p * (p.log() - F.log_softmax(s / T, 1).gather(1, ix))).sum(1).mean() * T * T
    assert torch.allclose(stored_kd(s, ix, val, T), want, atol=1e-6)


def test_a_kd_loss_from_another_model_ignores_the_teachers_stored_soft_labels():
    """``--recovery-kd student``: the stored soft labels are the teacher's, so a loss distilling from another model
    (``replay`` off) runs that model live on the batch even where the batch carries them."""
    pre = Preprocess(input_size=16)
    kd = KDLoss(_tiny(), KDConfig(), pre, pre)
    torch.manual_seed(1)
    x, s, y = torch.randn(4, 3, 16, 16), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    stored = {"t_idx": torch.arange(3).expand(4, 3), "t_val": 10 * torch.randn(4, 3)}
    live = kd(s, y, x)
    assert not torch.allclose(kd(s, y, x, stored), live)  # the teacher's own loss replays them
    kd.replay = False
    assert torch.allclose(kd(s, y, x, stored), live)


def _count_teacher_forwards(monkeypatch) -> list[int]:
    """Every forward of the teacher compress loads, counted (a hook on the real module, nothing replaced)."""
    from edgecv.compress import pipeline

    calls = [0]
    real = pipeline.load_teacher

    def load(*a, **kw):
        t = real(*a, **kw)
        t.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        return t

    monkeypatch.setattr(pipeline, "load_teacher", load)
    return calls


def _cfg(data, teacher, out, student="mobilenet_v3_small", **kw):
    from edgecv.compress.config import CompressConfig

    return CompressConfig(teacher=str(teacher), allow_weak_teacher=True, data=str(data), student=student, img_size=16, epochs_kd=1,
                          epochs_prune=1, epochs_qat=1, prune_steps=1, batch_size=4, workers=0, calib_size=8,
                          out=str(out), **kw)


def test_resume_and_another_student_reuse_the_cache_without_a_teacher_forward(tmp_path, cache, data, monkeypatch):
    from edgecv.compress.pipeline import compress

    teacher = save_untrained_teacher(tmp_path / "teacher.pt", CLASSES, 16)
    calls = _count_teacher_forwards(monkeypatch)
    run = compress(_cfg(data, teacher, tmp_path / "a"), stages=["distill"])
    tc = run["teacher_cache"]
    assert tc["used"] and tc["built"] and tc["views"] == 2 and tc["topk"] == 3 and tc["images"] == 12
    assert tc["size_bytes"] > 0 and tc["build_s"] > 0
    assert run["teacher_runtime"]["path"] == "eager"
    built_calls = calls[0]
    assert built_calls > 0
    run = compress(_cfg(data, teacher, tmp_path / "a"), resume=True)  # --resume: prune and quantize
    assert run["completed"] == ["distill", "prune", "quantize"]
    assert not run["teacher_cache"]["built"] and calls[0] == built_calls  # no teacher forward at all
    run = compress(_cfg(data, teacher, tmp_path / "b", student="tf_mobilenetv3_small_minimal_100"))
    assert run["completed"] == ["distill", "prune", "quantize"]
    assert not run["teacher_cache"]["built"] and run["teacher_cache"]["path"] == tc["path"]
    assert calls[0] == built_calls and run["teacher"]["val_top1"] is not None
    # the live teacher (--teacher-cache off) runs it every batch, and says so in run.json
    run = compress(_cfg(data, teacher, tmp_path / "c", teacher_cache="off"), stages=["distill"])
    assert run["teacher_cache"] == {"used": False, "reason": "--teacher-cache off"}
    assert calls[0] > built_calls


def test_feature_kd_strong_and_alpha0_fall_back_to_the_live_teacher():
    std, strong = Preprocess(input_size=16, augment="standard"), Preprocess(input_size=16, augment="strong")
    assert "--feature-kd" in SL.off_reason("auto", 0.8, 0.5, std)
    assert "strong" in SL.off_reason("views=4", 0.8, 0.0, strong)
    assert "--alpha 0" in SL.off_reason("auto", 0.0, 0.0, std)
    assert SL.off_reason("off", 0.8, 0.0, std) == "--teacher-cache off"
    assert SL.off_reason("auto", 0.8, 0.0, std) is None


def test_auto_student_probes_share_one_cache(tmp_path, cache, data):
    from edgecv.autotune.select import ProbeSpec, probe_accuracy
    from edgecv.compress.config import CompressConfig
    from edgecv.compress.pipeline import train_config
    from edgecv.training.teacher import load_teacher

    b = load_train_val(str(data), img_size=16)
    t = load_teacher(str(save_untrained_teacher(tmp_path / "t.pt", CLASSES, 16)), None, b.class_names, 16)
    calls = [0]
    t.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    c = CompressConfig(batch_size=4, workers=0)
    spec = ProbeSpec(b, t, KDConfig(), lambda e, desc: train_config(c, e, desc), torch.device("cpu"), 1, 9, 6, 0,
                     "auto")
    probe_accuracy("mobilenet_v3_small", spec, print)
    built = calls[0]
    assert built > 0
    probe_accuracy("tf_mobilenetv3_small_minimal_100", spec, print)  # the next candidate: no teacher forward
    assert calls[0] == built
    assert len(list((cache / "softlabels").iterdir())) == 1
