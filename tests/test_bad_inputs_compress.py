"""Bad inputs to ``edgecv compress`` and ``edgecv train``: one line on stderr, the documented exit code, no
traceback, nothing half-written; a diverged stage is ``failed`` in a strict-JSON run.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecv.contracts.rundir import SCHEMA
from tests.conftest import one_line_error, save_untrained_teacher

DIGITS = [str(i) for i in range(10)]
TINY = ["--img-size", "16", "--epochs-kd", "1", "--epochs-prune", "1", "--epochs-qat", "1", "--prune-steps", "1",
        "--batch-size", "32", "--workers", "0", "--calib-size", "16", "--quiet"]


def _strict_json(path: Path) -> dict:
    def no_constant(c):
        raise AssertionError(f"{path}: bare {c} token (not strict JSON)")

    return json.loads(path.read_text(), parse_constant=no_constant)


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory) -> Path:
    return save_untrained_teacher(tmp_path_factory.mktemp("bt") / "teacher.pt", DIGITS, 16)


def test_nan_loss_fails_the_stage_strict_json(cli, digits_teacher, tmp_path):
    """The issue's repro: --lr 1e6 diverges; the stage is failed with the reason, run.json stays strict JSON."""
    out = tmp_path / "r"
    r = cli("compress", "--data", "digits", "--teacher", str(digits_teacher), "--allow-weak-teacher", *TINY, "--lr", "1e6",
            "--out", str(out))
    line = one_line_error(r, 1, "loss became")
    assert "distill" in line and "--lr" in line
    run = _strict_json(out / "run.json")
    st = run["stages"]["distill"]
    assert st["status"] == "failed" and "loss became" in st["error"]
    assert run["completed"] == [] and not (out / "distill.pt").exists()


def test_non_finite_figures_become_null_in_run_json(tmp_path):
    from edgecv.contracts.rundir import Run  # every JSON file edgecv writes is strict (utils.finite_json)

    run = Run(tmp_path, {"schema": SCHEMA, "stages": {"distill": {"status": "pending"}}, "completed": []})
    run.set_stage("distill", val_top1=float("nan"), history=[{"val_loss": float("inf")}])
    d = _strict_json(tmp_path / "run.json")
    assert d["stages"]["distill"]["val_top1"] is None and d["stages"]["distill"]["history"][0]["val_loss"] is None


@pytest.mark.parametrize("yaml_text,needle", [
    ("temperature: abc\n", "--temperature must be a number > 0, got 'abc'"),
    ("alpha: 2\n", "--alpha must be a number in [0, 1], got 2"),
    ("epochs_kd: -1\n", "--epochs-kd must be an integer >= 0, got -1"),
    ("batch_size: 1.5\n", "--batch-size must be an integer >= 1, got 1.5"),
    ("lr: fast\n", "--lr must be a number > 0"),
    ("lr: .nan\n", "--lr must be a number > 0"),
    ("skip_bad: maybe\n", "--skip-bad must be true or false"),
    ("prune_steps: 0\n", "--prune-steps must be an integer >= 1"),
    ("img_size: 4\n", "--img-size must be an integer in [8, 4096]"),
    ("target_macs: 2\n", "--target-macs must be a number in (0, 1]"),
    ("target_macs: true\n", "--target-macs must be a number in (0, 1]"),
    ("student: [a, b]\n", "--student must be a string"),
    ("importance: random\n", "--importance must be one of magnitude, taylor"),
    ("prune_scope: outer\n", "--prune-scope must be one of all, inner"),
    ("nonsense: 1\n", "unknown key(s) nonsense"),
    ("- a\n- b\n", "expected a mapping"),
    ("a: [1\n", "invalid YAML"),
])
def test_bad_config_values_exit_2(cli, tmp_path, yaml_text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    out = tmp_path / "o"
    r = cli("compress", "--config", str(cfg), "--data", "digits", "--out", str(out), "--quiet")
    one_line_error(r, 2, needle)
    assert not out.exists()


def test_config_number_written_as_string_is_accepted():
    from edgecv.compress.config import CompressConfig

    c = CompressConfig.from_dict({"lr": "1e-3", "epochs-kd": "2"})  # YAML 1.1 reads 1e-3 as a string
    c.validate()
    assert c.lr == 1e-3 and c.epochs_kd == 2


def test_compress_into_finished_run_refuses(cli, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    run = {"schema": SCHEMA, "stages": {"distill": {"status": "done", "checkpoint": "distill.pt"}},
           "completed": ["distill"]}
    (out / "run.json").write_text(json.dumps(run))
    before = (out / "run.json").read_bytes()
    r = cli("compress", "--data", "digits", "--out", str(out), "--quiet")
    one_line_error(r, 2, "use --resume or another --out")
    assert (out / "run.json").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_compress_resume_without_run_refuses(cli, tmp_path):
    r = cli("compress", "--data", "digits", "--out", str(tmp_path / "none"), "--resume", "--quiet")
    one_line_error(r, 2, "--resume: no run.json")
    assert not (tmp_path / "none").exists()


def test_train_resume_without_state_refuses(cli, tiny_folder_session, tmp_path):
    out = tmp_path / "t.pt"
    r = cli("train", "--data", str(tiny_folder_session), "--epochs", "1", "--img-size", "16", "--workers", "0", "--resume",
            "--out", str(out), "--quiet")
    one_line_error(r, 2, "--resume: no")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_train_zero_epochs_refuses(cli, tiny_folder_session, tmp_path):
    out = tmp_path / "t.pt"
    r = cli("train", "--data", str(tiny_folder_session), "--epochs", "0", "--img-size", "16", "--out", str(out), "--quiet")
    line = one_line_error(r, 2, "no epoch to train")
    assert "-1.00" not in r.stderr + r.stdout and "--epochs" in line
    assert list(tmp_path.iterdir()) == []


def test_auto_options_through_pipeline_without_hooks_refuse(tmp_path):
    """compress.pipeline alone never measures: the auto options need the autotune entry point."""
    from edgecv.compress.config import CompressConfig
    from edgecv.compress.pipeline import compress
    from edgecv.errors import UserError

    with pytest.raises(UserError, match="edgecv.autotune.run.compress"):
        compress(CompressConfig(student="auto", target="x86", out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_taylor_without_gradients_is_a_user_error():
    from edgecv.compress.prune import prune_to_macs
    from edgecv.errors import UserError
    from edgecv.models.registry import create_model

    with pytest.raises(UserError, match="taylor"):
        prune_to_macs(create_model("mobilenet_v3_small", 3), 32, 3, 1, importance="taylor")
