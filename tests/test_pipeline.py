"""``edgecv compress`` end to end on tiny data: stages, run.json contract, resume, bad teachers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from edgecv.compress.config import CompressConfig
from edgecv.compress.pipeline import compress
from edgecv.contracts.rundir import SCHEMA
from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError
from edgecv.models.checkpoint import load_checkpoint, save_checkpoint
from edgecv.models.registry import create_model
from edgecv.nn.graph import count_macs
from edgecv.utils import sha256_file
from tests.conftest import REPO, make_image_folder, save_untrained_teacher

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("cdata") / "data", n_train=16, n_val=6)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return save_untrained_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", CLASSES, 24)


def _cfg(data, teacher, out, **kw) -> CompressConfig:
    # the untrained teacher answers one class: allowed, its students then reported, not stopped (test_weak_model)
    base = dict(teacher=str(teacher), allow_weak_teacher=True, data=str(data), student="mobilenet_v3_small", img_size=16, epochs_kd=1,
                epochs_prune=1, epochs_qat=1, prune_steps=2, batch_size=16, workers=0, calib_size=16,
                out=str(out))
    base.update(kw)
    return CompressConfig(**base)


@pytest.fixture(scope="module")
def full_run(data, teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "r"
    compress(_cfg(data, teacher, out))
    return out


def test_run_json_contract(full_run):
    run = json.loads((full_run / "run.json").read_text())
    assert run["schema"] == SCHEMA
    assert run["completed"] == ["distill", "prune", "quantize"]
    assert run["student"] == "mobilenet_v3_small" and run["img_size"] == 16
    assert run["stages"]["distill"]["backbone_lr_scale"] == 1.0  # from scratch: one rate for every parameter
    assert run["stages"]["prune"]["lr"] == run["config"]["lr"]  # ... the prune fine-tunes' too
    gap = run["teacher_gap"]  # the teacher-student loss of the summary line
    assert gap["stage"] == "quantize" and list(gap["by_stage"]) == ["distill", "prune", "quantize"]
    assert gap["top1_pt"] == round(run["stages"]["quantize"]["val_top1"] - run["teacher"]["val_top1"], 2)
    pr = run["stages"]["prune"]  # --epochs-prune 1 --prune-steps 2: one round with its epoch, said so
    assert pr["schedule"] == [1] and "cannot give every round a fine-tune epoch" in pr["schedule_note"]
    # the default: every cut followed by the least-squares refit (4 batches: here all 48 training images, 3 batches
    # of 16), BatchNorm not re-estimated
    assert pr["reconstruct_batches"] == 4 and pr["bn_batches"] == 0
    assert all(r["reconstructed_layers"] > 0 and r["reconstruct_images"] == 48 and "top1_after_cut" in r
               for r in pr["rounds"])
    # the fine-tune and QAT are kept only where an epoch beat their start (fit(keep_start=True)); said per round
    assert all(r["finetune_kept"] in (True, False) for r in pr["rounds"])
    assert run["stages"]["quantize"]["kept_ptq"] in (True, False)
    assert run["class_names"] == sorted(CLASSES)  # ImageFolder order
    assert set(run["teacher"]) >= {"path", "sha256", "arch", "val_top1"}
    # teacher and every stage judged on val (issue 28): per-class recall side by side, learned, the baseline
    for rec in (run["teacher"], *run["stages"].values()):
        assert set(rec["per_class_recall"]) == set(CLASSES) and rec["val_balanced_acc"] is not None, rec
        assert rec["learned"] in (True, False) and rec["baseline"]["n"] == 18 and "val_confusion" not in rec
    for name in ("distill", "prune", "quantize"):
        st = run["stages"][name]
        assert st["status"] == "done"
        for k in ("params", "macs", "macs_224", "val_top1", "wall_s", "checkpoint", "sha256"):
            assert k in st, (name, k)
        assert st["sha256"] == sha256_file(full_run / st["checkpoint"])
    assert run["stages"]["prune"]["macs"] <= 0.5 * run["stages"]["distill"]["macs"]
    assert "ptq_top1" in run["stages"]["quantize"] and "baseline_top1" in run["stages"]["prune"]
    assert run["stages"]["quantize"]["quant"]["float_convs"] == ["features.0.0"]  # float stem by default
    assert (full_run / "config.yaml").is_file()
    assert not list(full_run.glob("*.state")) and not list(full_run.glob("*.partial.pt"))


def test_recovery_kd_distils_the_prune_fine_tunes_and_qat_from_the_better_model(full_run, data, teacher, tmp_path):
    """``--recovery-kd auto`` (the default): the prune fine-tunes and QAT distil from the distilled student where it
    read higher on val than the teacher, else from the teacher; ``student`` / ``teacher`` force the choice."""
    run = json.loads((full_run / "run.json").read_text())
    assert run["config"]["recovery_kd"] == "auto"
    assert run["config"]["epochs_prune"] == run["stages"]["prune"]["epochs"] == 1  # the run's config: resolved
    # 48 training images: under 1,000 auto keeps the teacher, whichever read higher on its 18 val images
    assert {run["stages"][s]["kd_source"] for s in ("prune", "quantize")} == {"teacher"}
    assert {run["stages"][s]["augment"] for s in ("prune", "quantize")} == {"light"}  # 16 px: the run's preset
    # --recovery-augment auto: light where the student is the source, else the run's preset (standard here)
    for forced, aug in (("student", "light"), ("teacher", "standard")):
        run = compress(_cfg(data, teacher, tmp_path / forced, recovery_kd=forced, augment="standard"))
        assert run["completed"] == ["distill", "prune", "quantize"]
        assert run["stages"]["prune"]["kd_source"] == run["stages"]["quantize"]["kd_source"] == forced
        assert run["stages"]["prune"]["augment"] == run["stages"]["quantize"]["augment"] == aug
        assert run["config"]["augment"] == "standard" and run["config"]["recovery_augment"] == "auto"
    with pytest.raises(UserError, match="recovery-kd"):
        _cfg(data, teacher, tmp_path / "bad", recovery_kd="teachers").validate()
    with pytest.raises(UserError, match="recovery-augment"):
        _cfg(data, teacher, tmp_path / "bad", recovery_augment="heavy").validate()


@pytest.mark.parametrize("n_train,s_top1,want", [(1000, 85.4, "student"), (1000, 82.1, "teacher"),
                                                  (999, 85.4, "teacher"), (10_000, None, "teacher")])
def test_recovery_kd_auto_takes_the_student_only_above_the_teacher_on_a_large_set(n_train, s_top1, want):
    from types import SimpleNamespace

    from edgecv.compress.pipeline import Context

    stages = {} if s_top1 is None else {"distill": {"val_top1": s_top1}}
    run = SimpleNamespace(data={"stages": stages, "teacher": {"val_top1": 82.1}}, done=lambda name: name in stages)
    ctx = Context(CompressConfig(), run, SimpleNamespace(train=range(n_train)), None, 16, torch.device("cpu"), False,
                  lambda s: None)
    distilled = torch.nn.Linear(2, 2)
    ctx.load_stage_model = lambda name: distilled if name == "distill" else None
    assert ctx.recovery_source() == (want, distilled if want == "student" else None)


@pytest.mark.parametrize("setting,source,want", [("auto", "student", "light"), ("auto", "teacher", "standard"),
                                                 ("none", "student", "none"), ("strong", "teacher", "strong")])
def test_recovery_augment_auto_is_light_only_from_the_student(setting, source, want):
    from types import SimpleNamespace

    from edgecv.compress.pipeline import Context

    bundle = SimpleNamespace(preprocess=Preprocess(input_size=96, augment="standard"))
    ctx = Context(CompressConfig(recovery_augment=setting), None, bundle, None, 96, torch.device("cpu"), False,
                  lambda s: None)
    ctx._recovery = (source, None)
    assert ctx.recovery_augment() == want


def test_checkpoints_rebuild_without_pickles(full_run):
    x = torch.randn(2, 3, 16, 16)
    pr = load_checkpoint(full_run / "prune.pt")
    assert "channel_spec" in pr.meta
    m = pr.build()
    assert m(x).shape == (2, 3)
    assert count_macs(m, 16) == json.loads((full_run / "run.json").read_text())["stages"]["prune"]["macs"]
    q = load_checkpoint(full_run / "quantize.pt")
    assert q.meta["quant"] and q.meta["channel_spec"] == pr.meta["channel_spec"]
    qm = q.build()
    from edgecv.quant import is_qat

    assert is_qat(qm) and qm(x).shape == (2, 3)
    assert torch.equal(qm(x), q.build()(x))


def test_int8_stem_flag_quantizes_the_stem(data, teacher, tmp_path, cli):
    """`--int8-stem` (for OpenVINO, whose int8 stem is faster) keeps every conv quantized."""
    out = tmp_path / "r"
    r = cli("compress", "--teacher", str(teacher), "--allow-weak-teacher", "--data", str(data), "--student", "mobilenet_v3_small",
            "--img-size", "16", "--epochs-kd", "0", "--epochs-prune", "0", "--epochs-qat", "0", "--prune-steps", "1",
            "--batch-size", "16", "--workers", "0", "--calib-size", "16", "--int8-stem", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["stages"]["quantize"]["quant"]["float_convs"] == []
    assert yaml.safe_load((out / "config.yaml").read_text())["int8_stem"] is True


def test_stages_subset_then_resume(data, teacher, tmp_path):
    out = tmp_path / "r"
    run = compress(_cfg(data, teacher, out), stages=["distill"])
    assert run["completed"] == ["distill"]
    assert run["stages"]["prune"]["status"] == "pending"
    sha = run["stages"]["distill"]["sha256"]
    run = compress(_cfg(data, teacher, out), resume=True)
    assert run["completed"] == ["distill", "prune", "quantize"]
    assert run["stages"]["distill"]["sha256"] == sha  # not re-run


def test_prune_without_reconstruction_re_estimates_batchnorm(data, teacher, tmp_path):
    """``--prune-reconstruct 0``: after each cut BatchNorm's statistics are re-estimated on ``--prune-bn-batches``
    batches instead (recorded per round), nothing refitted."""
    run = compress(_cfg(data, teacher, tmp_path / "r", prune_reconstruct=0, prune_bn_batches=2, epochs_qat=0),
                   stages=["distill", "prune"])
    pr = run["stages"]["prune"]
    assert pr["reconstruct_batches"] == 0 and pr["bn_batches"] == 2
    for r in pr["rounds"]:
        assert r["bn_images"] == 32 and "reconstructed_layers" not in r, r
        assert "top1_after_cut" in r and "top1_after_prune" in r


def test_missing_input_stage_is_user_error(data, teacher, tmp_path):
    with pytest.raises(UserError, match="needs the output of 'distill'"):
        compress(_cfg(data, teacher, tmp_path / "r"), stages=["prune"])


def test_resume_mid_prune_round(data, teacher, tmp_path):
    """An interrupted prune stage (pruned, not yet fine-tuned) continues from prune.partial.pt."""
    out = tmp_path / "r"
    cfg = _cfg(data, teacher, out, epochs_qat=0, epochs_prune=3)  # two rounds: [1, 2] fine-tune epochs
    compress(cfg, stages=["distill"])
    from edgecv.compress import stages as P

    real_fit = P.fit
    calls = {"n": 0}

    def failing_fit(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the fine-tune after round 2
            raise KeyboardInterrupt
        return real_fit(*a, **kw)

    P.fit = failing_fit
    try:
        with pytest.raises(KeyboardInterrupt):
            compress(cfg, stages=["prune"])
    finally:
        P.fit = real_fit
    run = json.loads((out / "run.json").read_text())
    assert run["stages"]["prune"]["status"] == "failed"
    partial = load_checkpoint(out / "prune.partial.pt")
    assert partial.meta["round"] == 1 and partial.meta["finetuned"] is False
    run = compress(cfg, resume=True)
    assert run["completed"] == ["distill", "prune", "quantize"]
    assert [r["round"] for r in run["stages"]["prune"]["rounds"]] == [1, 2]


@pytest.mark.parametrize("bad", ["classes", "state_dict", "torchscript"])
def test_teacher_mismatch_exit_2(cli, data, tmp_path, bad):
    if bad == "classes":
        p = tmp_path / "t.pt"
        save_checkpoint(p, create_model("resnet18", 3), "resnet18", ["cat", "dog", "cow"], Preprocess(input_size=16))
        extra = []
    elif bad == "state_dict":
        p = tmp_path / "t_sd.pt"
        torch.save(create_model("resnet18", 5).state_dict(), p)
        extra = ["--teacher-arch", "resnet18"]
    else:
        p = tmp_path / "t.ts"
        m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))
        m(torch.zeros(1, 3, 16, 16))
        torch.jit.script(m).save(str(p))
        extra = []
    r = cli("compress", "--teacher", str(p), *extra, "--data", str(data), "--img-size", "16",
            "--out", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "teacher" in lines[0]
    assert not (tmp_path / "out" / "distill.pt").exists()


@pytest.mark.slow
def test_cli_kill9_mid_stage_then_resume(data, teacher, tmp_path):
    """kill -9 during distillation (after an epoch's fit state is on disk), then --resume finishes the run."""
    out = tmp_path / "r"
    args = [sys.executable, "-m", "edgecv", "compress", "--teacher", str(teacher), "--allow-weak-teacher", "--data", str(data),
            "--img-size", "16", "--epochs-kd", "40", "--epochs-prune", "1", "--epochs-qat", "1", "--prune-steps", "1",
            "--batch-size", "16", "--workers", "0", "--calib-size", "16", "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(args, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (out / "distill.state").is_file():
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    st = torch.load(out / "distill.state", weights_only=True)
    done_epochs = int(st["epoch"]) + 1
    assert done_epochs < 40
    r = subprocess.run(args[:args.index("--epochs-kd")] + ["--epochs-kd", "40", "--out", str(out), "--resume",
                                                           "--json", "--quiet"],
                       env=env, cwd=str(REPO), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads(r.stdout)
    assert run["completed"] == ["distill", "prune", "quantize"]
    assert len(run["stages"]["distill"]["history"]) == 40
