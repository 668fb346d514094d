"""Triton's model configuration, model repository and statistics extensions of `edgecv serve`, through the real
`tritonclient.http` client against a real server process on 127.0.0.1."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

from tests import test_serve
from tests.test_serve import SIZE, Server, edgecv

assets = test_serve.assets  # the fixture: a small bundle (3 classes, SIZE px) and images


def _check_config(cfg: dict) -> None:
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2 as mc

    m = json_format.ParseDict(cfg, mc.ModelConfig())  # Triton's own schema: an unknown field fails
    assert m.name == "edgecv" and m.max_batch_size == 16 and m.platform == "onnxruntime"
    assert [(i.name, i.data_type, list(i.dims)) for i in m.input] == [
        ("input", mc.TYPE_FP32, [3, SIZE, SIZE]), ("image", mc.TYPE_STRING, [1])]
    assert m.input[1].HasField("reshape") and list(m.input[1].reshape.shape) == []  # BYTES [N]: one per row
    assert [(o.name, o.data_type, list(o.dims)) for o in m.output] == [("logits", mc.TYPE_FP32, [3])]
    assert list(m.dynamic_batching.preferred_batch_size) == [4]
    assert m.dynamic_batching.max_queue_delay_microseconds == 3000
    assert m.dynamic_batching.default_queue_policy.max_queue_size == 16
    assert m.parameters["artifact"].string_value == "onnx-fp32" and len(m.parameters["sha256"].string_value) == 64
    assert cfg["input"][0]["dims"] == [3, SIZE, SIZE] and cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 3000


def _check_stats(st: dict, ok: int, failed: int, rows: int, t0_ms: int) -> None:
    inf = st["inference_stats"]
    assert st["name"] == "edgecv" and st["version"] == "1"
    assert inf["success"]["count"] == ok and inf["fail"]["count"] == failed and inf["fail"]["ns"] > 0
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inf[phase]["count"] == ok and inf[phase]["ns"] > 0, phase
    # a request's phases lie inside its time in the server
    assert inf["success"]["ns"] >= sum(inf[p]["ns"] for p in ("queue", "compute_input", "compute_infer",
                                                              "compute_output"))
    assert inf["cache_hit"] == {"count": 0, "ns": 0}
    assert st["inference_count"] == rows and 1 <= st["execution_count"] <= ok
    batches = st["batch_stats"]
    assert sum(b["compute_infer"]["count"] for b in batches) == st["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == rows
    assert all(b["compute_infer"]["ns"] > 0 for b in batches)
    assert t0_ms <= st["last_inference"] <= time.time() * 1e3


def test_tritonclient_config_repository_index_and_statistics(assets):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    from edgecv.data.decode import decode_image
    from edgecv.data.preprocess import Preprocess

    imgs = assets["imgs"]
    expected = [r["index"] for r in json.loads(edgecv("predict", str(assets["bundle"]), *map(str, imgs),
                                                      "--json").stdout)["predictions"]]
    s = Server(assets["bundle"], "--max-batch", "4", "--max-delay-ms", "3", "--max-queue", "16")
    try:
        c = th.InferenceServerClient(url=f"127.0.0.1:{s.port}")
        assert {"model_configuration", "model_repository", "statistics"} <= set(c.get_server_metadata()["extensions"])
        cfg = c.get_model_config("edgecv")
        _check_config(cfg)
        assert c.get_model_config("edgecv", "1") == cfg
        assert c.get_model_repository_index() == [{"name": "edgecv", "version": "1", "state": "READY", "reason": ""}]
        idle = c.get_inference_statistics("edgecv")["model_stats"][0]
        assert idle["inference_count"] == 0 and idle["inference_stats"]["success"] == {"count": 0, "ns": 0}

        t0_ms = int(time.time() * 1e3)
        for p, want in zip(imgs, expected, strict=True):  # one BYTES image per request
            img = th.InferInput("image", [1], "BYTES")
            img.set_data_from_numpy(np.array([p.read_bytes()], dtype=np.object_))
            assert int(c.infer("edgecv", [img]).as_numpy("logits").argmax()) == want
        pre = Preprocess(input_size=SIZE)
        x = th.InferInput("input", [len(imgs), 3, SIZE, SIZE], "FP32")  # all images in one FP32 request
        x.set_data_from_numpy(np.stack([pre.to_array(decode_image(p)) for p in imgs]))
        assert c.infer("edgecv", [x]).as_numpy("logits").argmax(1).tolist() == expected
        for algo in ("gzip", "deflate"):  # tritonclient's request compression: the body decoded by the server
            got = c.infer("edgecv", [x], request_compression_algorithm=algo).as_numpy("logits").argmax(1)
            assert got.tolist() == expected
        bad = th.InferInput("image", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
        with pytest.raises(InferenceServerException):
            c.infer("edgecv", [bad])

        st = c.get_inference_statistics("edgecv")["model_stats"][0]
        _check_stats(st, ok=len(imgs) + 3, failed=1, rows=4 * len(imgs), t0_ms=t0_ms)
        assert c.get_inference_statistics()["model_stats"] == [st]  # all models: the one served
        assert c.get_inference_statistics("edgecv", "1")["model_stats"] == [st]
        for call in (lambda: c.get_model_config("other"), lambda: c.get_inference_statistics("other"),
                     lambda: c.load_model("edgecv")):
            with pytest.raises(InferenceServerException):
                call()
        c.close()

        r = httpx.post(s.url + "/v2/repository/index", json={"ready": True}, timeout=10)
        assert r.status_code == 200 and r.json()[0]["state"] == "READY"
        for body in (b"{not json", b'{"ready": "yes"}', b"[1]"):
            r = httpx.post(s.url + "/v2/repository/index", content=body, timeout=10)
            assert r.status_code == 400 and r.json()["error"], body
        r = httpx.post(s.url + "/v2/repository/models/edgecv/unload", timeout=10)
        assert r.status_code == 501 and "fixed at start" in r.json()["error"]
    finally:
        assert s.stop() == 0
