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
