"""`edgecv.export.triton`: a Triton model repository from a bundle, each config.pbtxt parsed by Triton's protobuf."""

from __future__ import annotations

import json

import pytest

from tests.bench_util import make_bundle


def test_triton_repo_from_bundle(tmp_path):
    from edgecv.export.triton import validate_config, write_triton_repo

    bundle = make_bundle(tmp_path / "b", size=16)
    made = write_triton_repo(bundle, tmp_path / "repo", max_batch=8)
    assert [d.name for d in made] == ["onnx-fp32"]
    d = made[0]
    assert (d / "1" / "model.onnx").read_bytes() == (bundle / "model_fp32.onnx").read_bytes()
    cfg = validate_config((d / "config.pbtxt").read_text())
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    assert cfg.input[0].name == "input" and list(cfg.input[0].dims) == [3, 16, 16]
    assert cfg.output[0].name == "logits" and list(cfg.output[0].dims) == [3]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert (d / "labels.txt").read_text().split() == ["red", "green", "blue"]
    assert json.loads((d / "preprocess.json").read_text())["preprocess"]["input_size"] == 16


def test_fixed_batch_artifact_and_bad_config(tmp_path):
    from edgecv.errors import UserError
    from edgecv.export.triton import validate_config, write_triton_repo
    from tests.bench_util import TinyNet, export_onnx

    bundle = make_bundle(tmp_path / "b", size=16)
    export_onnx(TinyNet(3), bundle / "model_fp32.onnx", 16, dynamic_batch=False)  # now fixed batch 1
    from edgecv.utils import sha256_file

    m = json.loads((bundle / "manifest.json").read_text())
    m["artifacts"][0]["sha256"] = sha256_file(bundle / "model_fp32.onnx")
    (bundle / "manifest.json").write_text(json.dumps(m))
    cfg = validate_config((write_triton_repo(bundle, tmp_path / "repo")[0] / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 3, 16, 16]
    assert not cfg.HasField("dynamic_batching")
    with pytest.raises(UserError, match="ModelConfig"):
        validate_config('name: "x"\nno_such_field: 1\n')
