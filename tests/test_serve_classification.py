"""The Open Inference Protocol classification extension and strict FP32 JSON data (issue 25, item 4), with the real
``tritonclient.http`` client against a real ``edgecv serve`` process on 127.0.0.1."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests import test_serve
from tests.conftest import run_cli
from tests.test_serve import SIZE, Server

assets = test_serve.assets  # the tiny bundle + images fixture, shared

th = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def server(assets):
    s = Server(assets["bundle"], "--max-queue", "16", "--max-batch", "8")
    yield s
    assert s.stop() == 0


def _x(assets) -> np.ndarray:
    from edgecv.data.decode import decode_image
    from edgecv.data.preprocess import Preprocess

    pre = Preprocess(input_size=SIZE)
    return np.stack([pre.to_array(decode_image(p)) for p in assets["imgs"]])


def test_tritonclient_class_count_is_tritons_top_n(server, assets):
    c = th.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    x = _x(assets)
    cli = json.loads(run_cli("predict", str(assets["bundle"]), *map(str, assets["imgs"]), "--json",
                             check=True).stdout)["predictions"]
    names = ["red", "green", "blue"]
    for binary in (True, False):
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        raw = c.infer("edgecv", [inp], outputs=[th.InferRequestedOutput("logits", binary_data=binary)])
        logits = raw.as_numpy("logits")
        res = c.infer("edgecv", [inp], outputs=[th.InferRequestedOutput("logits", binary_data=binary, class_count=2)])
        out = res.get_output("logits")
        assert out["datatype"] == "BYTES" and out["shape"] == [len(x), 2]
        cls = res.as_numpy("logits")
        assert cls.shape == (len(x), 2)
        for row, lg, p in zip(cls, logits, cli, strict=True):
            parts = [(b if isinstance(b, bytes) else b.encode()).decode().split(":") for b in row]
            order = np.argsort(-lg, kind="stable")[:2]
            assert [int(i) for _, i, _ in parts] == order.tolist()
            assert [lab for _, _, lab in parts] == [names[i] for i in order]
            assert [v for v, _, _ in parts] == [f"{lg[i]:f}" for i in order]  # C's %f, as Triton's std::to_string
            assert parts[0][2] == p["label"]  # top-1 equals edgecv predict
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    big = c.infer("edgecv", [inp], outputs=[th.InferRequestedOutput("logits", class_count=99)]).as_numpy("logits")
    assert big.shape == (len(x), 3)  # capped at the number of classes, as Triton does
    c.close()


def _json_infer(data, outputs=None) -> dict:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE], "data": data}]}
    if outputs is not None:
        body["outputs"] = outputs
    return body


def test_bad_json_data_and_classification_params_are_400_then_good_on_same_connection(server):
    n = 3 * SIZE * SIZE
    good = _json_infer([0.5] * n, [{"name": "logits", "parameters": {"classification": 1}}])
    cases = [
        ("strings as FP32", _json_infer(["0.5"] * n)),
        ("one string among numbers", _json_infer([0.5] * (n - 1) + ["1"])),
        ("booleans as FP32", _json_infer([True] * n)),
        ("a boolean among numbers", _json_infer([0.5] * (n - 1) + [False])),
        ("null in data", _json_infer([0.5] * (n - 1) + [None])),
        ("nested strings", _json_infer([[["0.5"] * SIZE] * SIZE] * 3)),
        ("classification 0", _json_infer([0.5] * n, [{"name": "logits", "parameters": {"classification": 0}}])),
        ("classification a string", _json_infer([0.5] * n, [{"name": "logits", "parameters": {"classification": "3"}}])),
        ("classification true", _json_infer([0.5] * n, [{"name": "logits", "parameters": {"classification": True}}])),
        ("output parameters a list", _json_infer([0.5] * n, [{"name": "logits", "parameters": [1]}])),
        ("outputs not a list", _json_infer([0.5] * n, {"name": "logits"})),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as s:
        for what, body in cases:
            r = s.post("/v2/models/edgecv/infer", json=body)
            assert r.status_code == 400, f"{what}: {r.status_code} {r.text[:200]}"
            assert isinstance(r.json().get("error"), str) and r.json()["error"], what
            ok = s.post("/v2/models/edgecv/infer", json=good)
            assert ok.status_code == 200, f"after {what}: {ok.text[:200]}"
            out = ok.json()["outputs"][0]
            assert out["datatype"] == "BYTES" and out["shape"] == [1, 1] and out["data"][0].count(":") == 2
        nested = _json_infer([[[0.5] * SIZE] * SIZE] * 3)  # nested numbers are fine, as before
        assert s.post("/v2/models/edgecv/infer", json=nested).status_code == 200
