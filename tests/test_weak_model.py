"""A model that learned nothing is said so (issue 28): the check against the trivial baselines, the train / eval
warnings, compress refusing such a teacher and stopping on such a student, zero-recall classes named, and no
false alarm on a normally trained digits model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecv.data.metrics import baseline_check, confusion_matrix, weak_message, zero_recall_message
from edgecv.models.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import one_line_error, run_cli


# ---------------------------------------------------------------------------------------------- the check itself
def test_constant_answer_is_named_with_its_figures():
    """The issue's case: hymenoptera val (70 ants, 83 bees), the model answers 'ants' for every photo."""
    cm = np.array([[70, 0], [83, 0]])
    c = baseline_check(cm, ["ants", "bees"])
    assert c["learned"] is False and c["correct"] == 70 and c["n"] == 153
    assert c["commonest"]["class"] == "bees" and c["commonest"]["count"] == 83
    assert c["chance"]["rate"] == 50.0 and c["chance"]["p"] == 1.0  # a constant answer is chance exactly
    assert weak_message(c) == ("val top-1 45.75 % equals always answering 'ants' (70/153): "
                               "the model has not learned to tell the classes apart")
    assert c["zero_recall"] == ["bees"]


def test_no_better_is_judged_with_the_sample_size():
    """The same 60 % top-1 on a balanced two-class set: not evidence on 10 images, evidence on 200."""
    small = baseline_check(np.array([[3, 2], [2, 3]]))
    large = baseline_check(np.array([[60, 40], [40, 60]]))
    assert small["top1"] == large["top1"] == 60.0
    assert small["learned"] is False and small["commonest"]["p"] > 0.3
    assert large["learned"] is True and large["commonest"]["p"] < 0.01
    assert "is no better than always answering '0' (50.00 %, 5/10; one-sided p 0.38) or chance" in \
        weak_message(small)


def test_skewed_set_model_that_tells_classes_apart_is_no_false_alarm():
    """950 / 50 images: 92.5 % top-1 is below the commonest-class rate (95 %), but recall 90 % and 50 % is far
    above chance in balanced accuracy: learned (the permutation test decides)."""
    cm = np.array([[855, 95], [25, 25]])
    c = baseline_check(cm)
    assert c["top1"] < c["commonest"]["rate"] and c["commonest"]["p"] > 0.5
    assert c["chance"]["p"] < 0.01 and c["learned"] is True and c["zero_recall"] == []


def test_a_class_at_zero_recall_is_named():
    y = np.repeat(np.arange(3), 20)
    pred = y.copy()
    pred[y == 2] = 0  # 'c' is never recognised
    c = baseline_check(confusion_matrix(y, pred, 3), ["a", "b", "c"])
    assert c["learned"] is True and c["zero_recall"] == ["c"]
    assert zero_recall_message(c) == "val recall 0 % for 1 class: 'c' (never recognised)"
    assert baseline_check(np.array([[5, 0], [0, 0]])) is None  # one class present: nothing to judge
    # compress's record of a stage (run.json) and the tail of its stage line
    from edgecv.compress.judge import balanced_text, report, zero_recall_text

    info = report(confusion_matrix(y, pred, 3).tolist(), ["a", "b", "c"])
    assert info["zero_recall"] == ["c"] and info["per_class_recall"] == {"a": 100.0, "b": 100.0, "c": 0.0}
    assert info["learned"] is True and info["val_balanced_acc"] == pytest.approx(200 / 3)
    assert balanced_text(info) == ", balanced 66.67%"
    assert zero_recall_text(info) == "; val recall 0 % for 1 class: 'c' (never recognised)"


# ---------------------------------------------------------------------------------------------- CLI
def _force_constant(model: nn.Module, cls: int) -> nn.Module:
    """Zero the last Linear layer and give class ``cls`` the only bias: the model answers ``cls`` for every input."""
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.bias[cls] = 1.0
    return model


def _constant_checkpoint(src: Path, dst: Path, cls: int) -> Path:
    ck = load_checkpoint(src)
    save_checkpoint(dst, _force_constant(ck.build(), cls), ck.arch, ck.class_names, ck.preprocess,
                    metrics={})
    return dst


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> tuple[Path, dict, str]:
    """A normally trained digits model (the demo's data), with its train --json and stderr."""
    out = tmp_path_factory.mktemp("dm") / "m.pt"
    r = run_cli("train", "--data", "digits", "--arch", "mobilenet_v3_small", "--epochs", "4", "--workers", "0",
                   "--device", "cpu", "--out", str(out), "--json", check=True)
    return out, json.loads(r.stdout), r.stderr


@pytest.mark.slow
def test_trained_digits_model_gets_no_warning(digits_model, cli):
    path, d, stderr = digits_model
    assert d["learned"] is True and d["baseline"]["zero_recall"] == [], d["baseline"]
    assert "warning" not in stderr
    assert load_checkpoint(path).metrics["learned"] is True
    r = cli("eval", str(path), "--data", "digits", "--json", "--no-per-class")
    assert r.returncode == 0 and json.loads(r.stdout)["learned"] is True and "warning" not in r.stderr


@pytest.mark.slow
def test_constant_model_warns_in_train_and_eval(digits_model, cli, tmp_path):
    const = _constant_checkpoint(digits_model[0], tmp_path / "const.pt", 3)
    r = cli("eval", str(const), "--data", "digits", "--json", "--no-per-class")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["learned"] is False and rep["baseline"]["answers"] == {"class": "3", "share": 100.0}
    n, k = rep["n"], rep["baseline"]["correct"]
    assert f"warning: val top-1 {100 * k / n:.2f} % equals always answering '3' ({k}/{n}): the model has not " \
           "learned to tell the classes apart" in r.stderr
    # train from it at a learning rate too small to move it: the best epoch is still the constant answer
    out = tmp_path / "t.pt"
    r = cli("train", "--data", "digits", "--arch", "mobilenet_v3_small", "--init-weights", str(const), "--freeze",
            "none", "--lr", "1e-12", "--epochs", "1", "--workers", "0", "--device", "cpu", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["learned"] is False and d["baseline"]["answers"]["class"] == "3"
    assert "warning: val top-1" in r.stderr and "equals always answering '3'" in r.stderr
    m = load_checkpoint(out).metrics
    assert m["learned"] is False and m["baseline"]["commonest"]["count"] > 0


@pytest.mark.slow
def test_class_never_predicted_is_named_by_eval(digits_model, cli, tmp_path):
    ck = load_checkpoint(digits_model[0])
    model = ck.build()
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        lin.bias[7] = -1e4  # '7' is never the answer
    p = tmp_path / "no7.pt"
    save_checkpoint(p, model, ck.arch, ck.class_names, ck.preprocess, metrics={})
    r = cli("eval", str(p), "--data", "digits", "--json", "--no-per-class")
    rep = json.loads(r.stdout)
    assert rep["learned"] is True and rep["baseline"]["zero_recall"] == ["7"]
    assert "warning: val recall 0 % for 1 class: '7' (never recognised)" in r.stderr


@pytest.mark.slow
def test_compress_refuses_a_teacher_that_learned_nothing(digits_model, cli, tmp_path):
    const = _constant_checkpoint(digits_model[0], tmp_path / "const.pt", 3)
    out = tmp_path / "run"
    r = cli("compress", "--teacher", str(const), "--data", "digits", "--out", str(out), "--quiet")
    line = one_line_error(r, 2, "equals always answering '3'")
    assert "--allow-weak-teacher" in line and str(const) in line
    assert not out.exists()  # refused before anything is written


@pytest.mark.slow
def test_compress_stops_on_a_student_that_learned_nothing(digits_model, cli, tmp_path):
    """A learned teacher, a student that starts constant and cannot move (lr 1e-12): the distill stage fails,
    exit 1 with the figures, the checkpoint kept, the teacher's per-class recall recorded."""
    student = tmp_path / "s.pt"
    from edgecv.models.registry import create_model

    torch.save(_force_constant(create_model("mobilenet_v3_small", 10), 5).state_dict(), student)
    out = tmp_path / "run"
    r = cli("compress", "--teacher", str(digits_model[0]), "--data", "digits", "--student-init-weights",
            str(student), "--stages", "distill", "--epochs-kd", "1", "--lr", "1e-12", "--teacher-cache", "off",
            "--workers", "0", "--device", "cpu", "--out", str(out), "--quiet")
    line = one_line_error(r, 1, "distill: student val top-1")
    assert "equals always answering '5'" in line and "kept for inspection" in line
    run = json.loads((out / "run.json").read_text())
    st = run["stages"]["distill"]
    assert st["status"] == "failed" and st["learned"] is False and "always answering '5'" in st["error"]
    assert (out / st["checkpoint"]).is_file() and run["completed"] == []
    assert st["zero_recall"] == [c for c in run["class_names"] if c != "5"]
    assert st["per_class_recall"]["5"] == 100.0
    t = run["teacher"]
    assert t["learned"] is True and set(t["per_class_recall"]) == set(run["class_names"])
    assert t["val_balanced_acc"] > 50 and t["baseline"]["commonest"]["p"] < 1e-6


def test_final_table_shows_teacher_and_student_recall_side_by_side():
    """Issue 24 item 5: per-class recall and balanced accuracy of the teacher and every stage, one table."""
    from rich.console import Console

    from edgecv.cli.compress import _recall_table

    run = {"teacher": {"per_class_recall": {"cat": 80.0, "dog": 90.0}, "val_balanced_acc": 85.0},
           "stages": {"distill": {"per_class_recall": {"cat": 0.0, "dog": 100.0}, "val_balanced_acc": 50.0},
                      "prune": {"status": "pending"}}}
    con = Console(width=120, record=True, color_system=None)
    con.print(_recall_table(run))
    text = con.export_text()
    assert "teacher" in text and "distill" in text and "prune" not in text
    rows = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]] for ln in text.splitlines()
            if ln.count("│") >= 3}
    assert rows["cat"] == ["80.0", "0.0"] and rows["dog"] == ["90.0", "100.0"]
    assert rows["balanced acc"] == ["85.0", "50.0"]
    assert _recall_table({"teacher": {}, "stages": {}}) is None


def test_bench_marks_and_never_recommends_an_artifact_that_learned_nothing():
    from edgecv.bench.report import rows_for_table
    from edgecv.targets import get_target
    from edgecv.targets.policy import _why_not, judge_accuracy, recommend
    from tests.test_bench_policy import _row

    weak = _row("weak", "onnx", "fp32", "onnxruntime", 0.05, 0.06, 45.75)  # the fastest and the most accurate
    weak.accuracy.update(learned=False, baseline=baseline_check(np.array([[70, 0], [83, 0]]), ["ants", "bees"]))
    ok = _row("ok", "openvino", "fp32", "openvino", 0.20, 0.25, 45.0)
    rec = recommend([weak, ok], get_target("android"))
    assert rec["android"]["name"] == "ok"
    call = judge_accuracy([weak, ok], 1.0)["weak"]
    assert not call.keeps and "no better than always answering the commonest class" in _why_not(weak, call)
    table = {r["artifact"].rstrip(" *"): r["top1"] for r in rows_for_table({"artifacts": [weak.to_dict(), ok.to_dict()],
                                                                            "recommended": rec})}
    assert table == {"weak": "45.75 !", "ok": "45.00"}
    assert recommend([weak], get_target("android"))["android"] is None
    # on a skewed set the constant answer can have the best top-1: it does not set the bar the others must keep
    weak.accuracy["top1"] = 95.0
    ok.accuracy["top1"] = 92.5
    assert recommend([weak, ok], get_target("android"))["android"]["name"] == "ok"


def test_teacher_judgement_is_stored_and_reused(tmp_path, monkeypatch):
    """The teacher's val confusion matrix is kept by (teacher, val files, preprocessing): a second run on the same
    teacher and data does not evaluate it again; a refused teacher is refused again from the stored figures."""
    from edgecv.compress.config import CompressConfig
    from edgecv.compress.judge import teacher_report
    from edgecv.data.datasets import load_train_val
    from edgecv.errors import UserError
    from edgecv.training.teacher import load_teacher
    from tests.conftest import make_image_folder, save_untrained_teacher

    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", n_train=2, n_val=4)
    b = load_train_val(str(data), img_size=16)
    teacher = load_teacher(str(save_untrained_teacher(tmp_path / "t.pt", b.class_names, 16)), None, b.class_names, 16)
    _force_constant(teacher.model, 1)  # answers 'green' for every image
    lines: list[str] = []
    cfg = CompressConfig(batch_size=4, allow_weak_teacher=True)
    first = teacher_report(cfg, b, teacher, torch.device("cpu"), None, lines.append)
    assert first["learned"] is False and first["per_class_recall"] == {"blue": 0.0, "green": 100.0, "red": 0.0}
    assert [ln for ln in lines if "reusing" in ln] == [] and "(--allow-weak-teacher: going on)" in lines[-1]
    lines.clear()
    assert teacher_report(cfg, b, teacher, torch.device("cpu"), None, lines.append) == first
    assert "reusing its stored confusion matrix" in lines[0]
    with pytest.raises(UserError, match="equals always answering 'green' \\(4/12\\).*--allow-weak-teacher"):
        teacher_report(CompressConfig(teacher="t.pt", batch_size=4), b, teacher, torch.device("cpu"), None,
                       lines.append)
