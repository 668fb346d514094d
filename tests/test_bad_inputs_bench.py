"""Bad inputs to ``edgecv bench`` and ``edgecv gate`` (issue 14): each is refused with one line and exit 2, no
traceback, and no report file is written. A modified or missing artifact is bad input for bench as for gate and
export; a gate between models of different tasks (class names, preprocessing, input shape) is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from edgecv.contracts.manifest import ArtifactEntry, load_manifest
from edgecv.utils import sha256_file
from tests.bench_util import ColourNet, TinyNet, export_onnx, make_bundle

BENCH_FAST = ["--min-time", "0.02s", "--min-runs", "5", "--warmup", "1", "--rounds", "1", "--no-accuracy"]
GATE_FAST = ["--rounds", "4", "--max-rounds", "4", "--sessions", "2", "--block-time", "2ms"]


def _refused(p, *needles: str) -> str:
    """Exit 2, the error is one line naming ``needles``, no traceback; returns that line."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("edgecv: error")]
    assert len(errors) == 1, p.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def _outputs(tmp_path: Path) -> tuple[list[str], list[Path]]:
    files = [tmp_path / "out" / n for n in ("r.json", "r.md", "r.png")]
    return ["--json", str(files[0]), "--markdown", str(files[1]), "--plot", str(files[2])], files


def _nothing_written(files: list[Path]) -> None:
    assert not any(f.exists() for f in files), [f for f in files if f.exists()]
    out = files[0].parent
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())  # no temp file either


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return make_bundle(tmp_path_factory.mktemp("bad_bench") / "base", model=TinyNet(3, width=8, depth=1))


def _copy(base: Path, dst: Path) -> Path:
    shutil.copytree(base, dst)
    return dst


# ------------------------------------------------------------------------------------------ bench: bad artifacts
def test_bench_tampered_artifact_exit_2_nothing_written(base, tmp_path, cli):
    b = _copy(base, tmp_path / "b")
    with open(b / "model_fp32.onnx", "ab") as f:
        f.write(b"tampered")
    args, files = _outputs(tmp_path)
    p = cli("bench", str(b), *args, *BENCH_FAST)
    _refused(p, "sha256 does not match", "model_fp32.onnx")
    _nothing_written(files)


def test_bench_missing_artifact_file_exit_2_nothing_written(base, tmp_path, cli):
    b = _copy(base, tmp_path / "b")
    (b / "model_fp32.onnx").unlink()
    args, files = _outputs(tmp_path)
    p = cli("bench", str(b), *args, *BENCH_FAST)
    _refused(p, "missing", "model_fp32.onnx")
    _nothing_written(files)


def test_bench_truncated_artifact_exit_2(base, tmp_path, cli):
    b = _copy(base, tmp_path / "b")
    f = b / "model_fp32.onnx"
    f.write_bytes(f.read_bytes()[:100])
    p = cli("bench", str(b), "--json", "-", "--quiet", *BENCH_FAST)
    _refused(p, "sha256")
    assert p.stdout.strip() == ""  # no JSON on stdout either


def test_bench_tampered_artifact_left_out_with_artifacts_runs(tmp_path, cli):
    """The message suggests --artifacts: benching only the intact artifacts works (exit 0)."""
    b = make_bundle(tmp_path / "b", model=ColourNet())
    f = export_onnx(ColourNet((1, 2, 0)), b / "model_int8.onnx", 32)
    man = load_manifest(b)
    man.artifacts.append(ArtifactEntry(file=f.name, format="onnx", precision="int8", runtime="onnxruntime",
                                       size_bytes=f.stat().st_size, sha256=sha256_file(f), input_shape=[1, 3, 32, 32]))
    man.write(b)
    with open(f, "ab") as fh:
        fh.write(b"x")
    p = cli("bench", str(b), "--quiet", *BENCH_FAST)
    line = _refused(p, "model_int8.onnx", "--artifacts")
    assert "model_fp32.onnx" not in line  # names only the bad one
    p = cli("bench", str(b), "--artifacts", "onnx-fp32", "--quiet", *BENCH_FAST)
    assert p.returncode == 0, p.stderr


def test_bench_tampered_single_manifest_entry_is_the_same_for_gate(base, tmp_path, cli):
    """Bench, gate and export give a tampered artifact the same meaning: bad input, exit 2."""
    t = _copy(base, tmp_path / "t")
    with open(t / "model_fp32.onnx", "ab") as f:
        f.write(b"x")
    out = tmp_path / "g.json"
    for p in (cli("bench", str(t), "--quiet", *BENCH_FAST),
              cli("gate", "--baseline", str(base), "--candidate", str(t), "--json", str(out), *GATE_FAST),
              cli("gate", "--baseline", str(t), "--candidate", str(base), "--json", str(out), *GATE_FAST)):
        _refused(p, "sha256 does not match")
    assert not out.exists()


def test_gate_missing_artifact_file_exit_2(base, tmp_path, cli):
    c = _copy(base, tmp_path / "c")
    (c / "model_fp32.onnx").unlink()
    out = tmp_path / "g.json"
    p = cli("gate", "--baseline", str(base), "--candidate", str(c), "--json", str(out), *GATE_FAST)
    _refused(p, "missing")
    assert not out.exists()


# ------------------------------------------------------------------------------------------ gate: not the same task
def test_gate_refuses_different_class_names(base, tmp_path, cli):
    """Issue 14 item 4: a 10-class candidate against a 3-class baseline of the same arch once PASSed."""
    torch.manual_seed(0)
    ten = [f"c{i}" for i in range(10)]
    c = make_bundle(tmp_path / "ten", model=TinyNet(10, width=8, depth=1), class_names=ten)
    out = tmp_path / "g.json"
    p = cli("gate", "--baseline", str(base), "--candidate", str(c), "--json", str(out), *GATE_FAST)
    line = _refused(p, "not the same task", "class names", "3 (red, green, blue)", "10 (c0, c1")
    assert "measuring" not in p.stderr  # refused before any measurement
    assert not out.exists()
    assert "input shape" not in line and "preprocessing" not in line  # only what differs


def test_gate_refuses_same_count_other_class_names(base, tmp_path, cli):
    c = _copy(base, tmp_path / "c")
    man = load_manifest(c)
    man.class_names = ["red", "blue", "green"]  # same count, different order: label i means another class
    man.write(c)
    p = cli("gate", "--baseline", str(base), "--candidate", str(c), *GATE_FAST)
    _refused(p, "class names")


def test_gate_refuses_different_preprocessing(base, tmp_path, cli):
    c = _copy(base, tmp_path / "c")
    man = load_manifest(c)
    man.preprocess = {**man.preprocess, "mean": [0.5, 0.5, 0.5]}
    man.write(c)
    out = tmp_path / "g.json"
    p = cli("gate", "--baseline", str(base), "--candidate", str(c), "--json", str(out), *GATE_FAST)
    line = _refused(p, "preprocessing", "mean")
    assert "class names" not in line
    assert not out.exists()


def test_gate_refuses_different_input_shape(base, tmp_path, cli):
    torch.manual_seed(0)
    c = make_bundle(tmp_path / "big", model=TinyNet(3, width=8, depth=1), size=40)
    p = cli("gate", "--baseline", str(base), "--candidate", str(c), *GATE_FAST)
    _refused(p, "input shape [1, 3, 32, 32] vs [1, 3, 40, 40]", "onnx-fp32")


def test_gate_refuses_single_artifacts_of_different_input_shape(tmp_path, cli):
    a = export_onnx(TinyNet(3, width=8, depth=1), tmp_path / "a.onnx", 32)
    b = export_onnx(TinyNet(3, width=8, depth=1), tmp_path / "b.onnx", 48)
    p = cli("gate", "--baseline", str(a), "--candidate", str(b), *GATE_FAST)
    _refused(p, "input shape", "[1, 3, 48, 48]")


def test_gate_same_task_still_gated(base, tmp_path, cli):
    """The check does not refuse a legitimate candidate: same classes, preprocessing and shape, other weights."""
    torch.manual_seed(1)
    c = make_bundle(tmp_path / "c", model=TinyNet(3, width=8, depth=1), seed=1)
    p = cli("gate", "--baseline", str(base), "--candidate", str(c), "--quiet", "--max-latency-regression", "1.0",
            *GATE_FAST)
    assert p.returncode in (0, 1), p.stderr
    assert "not the same task" not in p.stderr


def test_differences_lists_every_difference():
    from edgecv.bench.artifacts import Resolved, Source
    from edgecv.bench.gate.compat import differences
    from edgecv.contracts.manifest import Manifest

    def src(names, mean, shape):
        e = ArtifactEntry(file="m.onnx", format="onnx", precision="fp32", runtime="onnxruntime", input_shape=shape)
        man = Manifest(target="x86", source={}, preprocess={"input_size": shape[-1], "mean": mean},
                       class_names=names, input={"shape": shape}, output={}, artifacts=[e])
        r = Resolved(e, Path("m.onnx"), man)
        return Source(Path("."), man, [r], []), r

    (a, ra), (b, rb) = src(["x", "y"], [0.4], [1, 3, 8, 8]), src(["x", "y"], [0.4], [1, 3, 8, 8])
    assert differences(a, b, [(ra, rb)]) == []
    (c, rc) = src(["x", "z"], [0.5], [1, 3, 16, 16])
    d = differences(a, c, [(ra, rc)])
    assert len(d) == 3 and d[0].startswith("class names 2 (x, y) vs 2 (x, z)")
    assert "input_size 8 vs 16" in d[1] and "mean [0.4] vs [0.5]" in d[1]
    assert d[2] == "onnx-fp32 input shape [1, 3, 8, 8] vs [1, 3, 16, 16]"
