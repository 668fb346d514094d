"""`edgecv predict` and the Predictor: files/folders/globs, JSON/CSV, unreadable images, bench parity."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from tests.bench_util import ColourNet, TinyNet, make_bundle
from tests.conftest import make_image_folder, run_cli
from tests.test_serve import edgecv

SIZE = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    data = make_image_folder(root / "data", n_train=1, n_val=4, size=24)
    return {"root": root, "data": data,
            "tiny": make_bundle(root / "tiny", model=TinyNet(3, width=8, depth=1), size=SIZE),
            "colour": make_bundle(root / "colour", model=ColourNet(), size=SIZE)}


def test_predictor_api(setup):
    from edgecv.serve.predictor import load_predictor

    p = load_predictor(setup["colour"], artifact="onnx-fp32")
    try:
        files = sorted((setup["data"] / "val").rglob("*.*"))
        rows = p.predict(files, topk=2)
        assert [r["label"] for r in rows] == [f.parent.name for f in files]  # ColourNet classifies by colour
        assert all(len(r["topk"]) == 2 and r["topk"][0]["index"] == r["index"] for r in rows)
        assert all(abs(sum(t["score"] for t in r["topk"]) - 1) < 0.5 for r in rows)
        assert p.describe()["sha256"] and p.input_shape == (3, SIZE, SIZE)
    finally:
        p.close()


def test_predict_folder_glob_json_csv(setup, tmp_path):
    val = setup["data"] / "val"
    out = json.loads(edgecv("predict", str(setup["colour"]), str(val), "--json", "--topk", "2").stdout)
    n = len(list(val.rglob("*.*")))
    assert len(out["predictions"]) == n and out["bad"] == [] and out["artifact"] == "onnx-fp32"
    assert all(r["label"] == r["file"].split("/")[-2] for r in out["predictions"])
    g = json.loads(edgecv("predict", str(setup["colour"]), str(val / "red" / "*.png"), "--json").stdout)
    assert g["predictions"] and all(r["label"] == "red" for r in g["predictions"])
    f = tmp_path / "p.csv"
    edgecv("predict", str(setup["colour"] / "model_fp32.onnx"), str(val), "--csv", str(f), "--batch-size", "3")
    rows = list(csv.DictReader(f.open()))
    assert len(rows) == n and rows[0].keys() == {"file", "label", "index", "score", "topk"}


def test_unreadable_images_exit_2_unless_skip_bad(setup, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    good = next((setup["data"] / "val" / "green").glob("*.png"))
    (d / "good.png").write_bytes(good.read_bytes())
    (d / "bad.jpg").write_bytes(b"not a jpeg")
    (d / "cut.png").write_bytes(good.read_bytes()[:60])
    p = run_cli("predict", str(setup["colour"]), str(d), "--json")
    assert p.returncode == 2
    out = json.loads(p.stdout)
    assert len(out["predictions"]) == 1 and {b["file"].split("/")[-1] for b in out["bad"]} == {"bad.jpg", "cut.png"}
    assert "unreadable" in p.stderr and "bad.jpg" in p.stderr
    assert run_cli("predict", str(setup["colour"]), str(d), "--skip-bad").returncode == 0


@pytest.mark.parametrize("args, msg", [
    (["--artifact", "onnx-int8"], "not a runnable artifact"),
    (["nothing/here.png"], "no such file"),
    (["*.nomatch"], "matches no file"),
])
def test_bad_arguments_exit_2(setup, args, msg):
    extra = args if args[0].startswith("--") else []
    paths = [str(setup["data"] / "val")] if extra else args
    p = run_cli("predict", str(setup["colour"]), *paths, *extra)
    assert p.returncode == 2 and msg in p.stderr, p.stderr


def test_modified_artifact_refused(setup, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(setup["colour"], b)
    with open(b / "model_fp32.onnx", "ab") as f:
        f.write(b"\0")
    p = run_cli("predict", str(b), str(setup["data"] / "val"))
    assert p.returncode == 2 and "sha256" in p.stderr


def test_predict_reproduces_bench_top1(setup):
    """The top-1 `edgecv bench --data` reports equals the accuracy of `edgecv predict` rows on the same val/."""
    bench = json.loads(edgecv("bench", str(setup["tiny"]), "--data", str(setup["data"]), "--json", "-",
                              "--min-time", "10ms", "--min-runs", "1", "--warmup", "0", "--rounds", "1").stdout)
    top1 = bench["artifacts"][0]["accuracy"]["top1"]
    rows = json.loads(edgecv("predict", str(setup["tiny"]), str(setup["data"] / "val"), "--json").stdout)["predictions"]
    acc = 100.0 * np.mean([r["label"] == r["file"].split("/")[-2] for r in rows])
    assert acc == pytest.approx(top1, abs=1e-6)


def _two_artifact_bundle(root, acc_fp32=90.0, acc_int8=90.0):
    """onnx-fp32 (small) and an 'onnx-int8' entry that is really a much larger FP32 net (slower): selection only."""
    from edgecv.contracts.manifest import ArtifactEntry, load_manifest
    from edgecv.utils import sha256_file
    from tests.bench_util import export_onnx

    b = make_bundle(root, model=TinyNet(3, width=8, depth=1), size=SIZE)
    big = export_onnx(TinyNet(3, width=64, depth=6), root / "model_int8.onnx", SIZE)
    man = load_manifest(b)
    man.artifacts[0].validation = {"status": "passed", "accuracy": acc_fp32}
    man.artifacts.append(ArtifactEntry(file=big.name, format="onnx", precision="int8", runtime="onnxruntime",
                                       sha256=sha256_file(big), input_shape=[1, 3, SIZE, SIZE],
                                       validation={"status": "passed", "accuracy": acc_int8}))
    man.write(b)
    return b


def test_auto_picks_fastest_validated_and_bench_json(tmp_path):
    from edgecv.serve.predictor import load_predictor

    b = _two_artifact_bundle(tmp_path / "b")
    p = load_predictor(b, artifact="auto")
    assert p.entry.name == "onnx-fp32" and set(p.selection["p50_ms"]) == {"onnx-fp32", "onnx-int8"}
    p.close()
    b2 = _two_artifact_bundle(tmp_path / "b2", acc_fp32=80.0, acc_int8=90.0)  # fp32 out of the 1-pt tolerance
    p = load_predictor(b2, artifact="auto")
    assert p.entry.name == "onnx-int8"  # the deploy rule drops fp32 for accuracy, whatever its speed
    p.close()
    # a real bench file of the bundle (read through the bench contract), its pick set to the slower artifact
    from edgecv.bench.bench import BenchConfig, run_bench

    res = run_bench(str(b), BenchConfig(min_time_s=0.02, min_runs=3, warmup=1, rounds=1, accuracy=False))
    res["recommended"] = {"x86": {"name": "onnx-int8", "reason": "test"}}
    bj = tmp_path / "bench.json"
    bj.write_text(json.dumps(res))
    p = load_predictor(b, artifact="auto", bench_json=bj)
    assert p.entry.name == "onnx-int8" and p.selection["how"] == "bench-json"
    p.close()


def test_unwritable_csv_fails_first(setup, tmp_path):
    (tmp_path / "f").write_text("x")
    p = run_cli("predict", str(setup["colour"]), str(setup["data"] / "val"), "--csv", str(tmp_path / "f" / "o.csv"))
    assert p.returncode == 2 and "o.csv" in p.stderr
