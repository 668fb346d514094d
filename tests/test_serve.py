"""`edgecv serve` against real server processes on 127.0.0.1 (free port, started and stopped here, bounded waits)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.bench_util import TinyNet, make_bundle
from tests.conftest import REPO, make_image_folder, run_cli

SIZE = 16
EDGECV = [sys.executable, "-m", "edgecv"]




def edgecv(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, check=True, timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``edgecv serve BUNDLE ARGS`` in a subprocess; waits (bounded) until /v2/health/ready answers 200."""

    def __init__(self, bundle: Path, *args: str, env: dict | None = None, ready_timeout: float = 60.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen([*EDGECV, "serve", str(bundle), "--port", str(self.port),
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                                     cwd=str(REPO))
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("server did not become ready")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.poll() is not None else ""

    def queue_depth(self, headers: dict | None = None) -> float:
        for line in httpx.get(self.url + "/metrics", headers=headers, timeout=5).text.splitlines():
            if line.startswith("edgecv_queue_depth "):
                return float(line.split()[1])
        raise AssertionError("no edgecv_queue_depth metric")


def png_bytes(colour=(200, 40, 40), size=20) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(w=30000, h=30000) -> bytes:
    """A PNG header declaring w x h pixels (valid signature + IHDR with CRC); no pixel data needed to refuse it."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    bundle = make_bundle(root / "bundle", model=TinyNet(3, width=8, depth=1), size=SIZE)
    imgs = make_image_folder(root / "imgs", n_train=1, n_val=3, size=24)
    return {"bundle": bundle, "imgs": sorted((imgs / "val").rglob("*.*")), "root": root}


@pytest.fixture(scope="module")
def server(assets):
    s = Server(assets["bundle"], "--max-body-mb", "1", "--max-queue", "16", "--max-batch", "8")
    yield s
    assert s.stop() == 0


def good(s: Server) -> None:
    r = httpx.post(s.url + "/predict", content=png_bytes(), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] in ("red", "green", "blue")


def v2_body(tensor: dict, raw: bytes = b"") -> tuple[bytes, dict]:
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))} if raw else {}


def _bad_requests(url: str):
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)
    png = png_bytes()
    fp32 = {"name": "input", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE],
            "parameters": {"binary_data_size": x.nbytes}}
    infer = url + "/v2/models/edgecv/infer"

    def post(u, content=b"", **kw):
        return lambda: httpx.post(u, content=content, timeout=30, **kw)

    def v2(tensor, raw=b"", model="edgecv"):
        body, h = v2_body(tensor, raw)
        return lambda: httpx.post(url + f"/v2/models/{model}/infer", content=body, headers=h, timeout=30)

    bytes_el = struct.pack("<I", 9) + b"not a png"
    return [
        ("not an image", post(url + "/predict", b"hello, world"), 400),
        ("truncated image", post(url + "/predict", png[: len(png) // 2]), 400),
        ("decompression bomb", post(url + "/predict", bomb_png()), 400),
        ("empty body", post(url + "/predict", b""), 400),
        ("body too large", post(url + "/predict", b"\0" * (2 << 20)), 413),
        ("multipart without files", lambda: httpx.post(url + "/predict", data={"a": "b"}, files={}, timeout=30), 400),
        ("malformed multipart", post(url + "/predict", b"--x\r\nbroken", headers={
            "content-type": "multipart/form-data; boundary=zz"}), 400),
        ("too many images", lambda: httpx.post(url + "/predict", files=[("file", (f"{i}.png", png)) for i in range(20)],
                                               timeout=30), 413),
        ("topk 0", post(url + "/predict?topk=0", png), 400),
        ("topk not a number", post(url + "/predict?topk=abc", png), 400),
        ("GET /predict", lambda: httpx.get(url + "/predict", timeout=30), 405),
        ("unknown path", lambda: httpx.get(url + "/nope", timeout=30), 404),
        ("unknown model metadata", lambda: httpx.get(url + "/v2/models/other", timeout=30), 404),
        ("unknown model infer", v2(fp32, x.tobytes(), model="other"), 404),
        ("infer not JSON", post(infer, b"{not json"), 400),
        ("infer header length past body", post(infer, b"{}", headers={"Inference-Header-Content-Length": "99"}), 400),
        ("wrong shape", v2({**fp32, "shape": [1, 3, SIZE + 1, SIZE]}, x.tobytes()), 400),
        ("wrong dtype", v2({**fp32, "datatype": "INT32"}, x.tobytes()), 400),
        ("data size mismatch", v2(fp32, x.tobytes()[:-4]), 400),
        ("unknown input", v2({**fp32, "name": "pixels"}, x.tobytes()), 400),
        ("JSON data wrong count", v2({"name": "input", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE],
                                      "data": [0.0] * 7}), 400),
        ("NaN input", v2({"name": "input", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE],
                          "data": [float("nan")] * x.size}), 400),
        ("BYTES not an image", v2({"name": "image", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(bytes_el)}}, bytes_el), 400),
        ("BYTES count mismatch", v2({"name": "image", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": len(bytes_el)}}, bytes_el), 400),
        ("two inputs", post(infer, json.dumps({"inputs": [fp32, fp32]}).encode()), 400),
    ]


def test_bad_requests_get_4xx_json_and_server_keeps_serving(server):
    cases = _bad_requests(server.url)
    assert len(cases) >= 15
    for what, call, status in cases:
        r = call()
        assert r.status_code == status, f"{what}: {r.status_code} {r.text[:300]}"
        assert isinstance(r.json().get("error"), str) and r.json()["error"], what
        good(server)
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'edgecv_requests_total{endpoint="/predict",status="400"}' in metrics
    assert "edgecv_batch_size_bucket" in metrics and "edgecv_model_load_seconds" in metrics


def test_predict_endpoint_matches_cli_predict(server, assets):
    files = [("file", (p.name, p.read_bytes())) for p in assets["imgs"]]
    r = httpx.post(server.url + "/predict?topk=2", files=files, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["artifact"] == "onnx-fp32" and len(body["sha256"]) == 64 and body["latency_ms"] > 0
    p = edgecv("predict", str(assets["bundle"]), *map(str, assets["imgs"]), "--json", "--topk", "2")
    cli_rows = json.loads(p.stdout)["predictions"]
    assert [r["label"] for r in body["predictions"]] == [c["label"] for c in cli_rows]
    assert all(len(r["topk"]) == 2 for r in body["predictions"])


def test_tritonclient_health_metadata_infer(server, assets):
    import tritonclient.http as th

    from edgecv.data.decode import decode_image
    from edgecv.data.preprocess import Preprocess

    c = th.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("edgecv")
    meta = c.get_model_metadata("edgecv")
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}
    assert meta["outputs"][0]["name"] == "logits"
    pre = Preprocess(input_size=SIZE)
    x = np.stack([pre.to_array(decode_image(p)) for p in assets["imgs"]])
    expected = [r["index"] for r in json.loads(edgecv("predict", str(assets["bundle"]), *map(str, assets["imgs"]),
                                                      "--json").stdout)["predictions"]]
    for binary in (True, False):  # Triton's binary tensor extension and plain JSON tensors
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = th.InferRequestedOutput("logits", binary_data=binary)
        logits = c.infer("edgecv", [inp], outputs=[out]).as_numpy("logits")
        assert logits.shape == (len(x), 3)
        assert logits.argmax(1).tolist() == expected
    img = th.InferInput("image", [len(assets["imgs"])], "BYTES")
    img.set_data_from_numpy(np.array([p.read_bytes() for p in assets["imgs"]], dtype=np.object_))
    res = c.infer("edgecv", [img])  # no outputs named: binary output
    assert res.as_numpy("logits").argmax(1).tolist() == expected
    with pytest.raises(th.InferenceServerException):
        c.get_model_metadata("missing")
    c.close()


def test_api_key(assets):
    s = Server(assets["bundle"], "--api-key-env", "EDGECV_TEST_KEY", env={"EDGECV_TEST_KEY": "s3cret"})
    try:
        png = png_bytes()
        for h in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer nope"}):
            r = httpx.post(s.url + "/predict", content=png, headers=h, timeout=30)
            assert r.status_code == 401 and "API key" in r.json()["error"]
        assert httpx.get(s.url + "/v2/health/live", timeout=10).status_code == 200  # probes stay open
        for h in ({"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"}):
            assert httpx.post(s.url + "/predict", content=png, headers=h, timeout=30).status_code == 200
    finally:
        assert s.stop() == 0


def test_public_bind_without_key_warns(assets):
    from edgecv.serve.server import bind_warning

    assert bind_warning("0.0.0.0", None) and "API key" in bind_warning("0.0.0.0", None)
    assert bind_warning("127.0.0.1", None) is None and bind_warning("0.0.0.0", "k") is None


class BatchOneOnly(nn.Module):
    """Runs for a batch of 1; a batch of 2 fails inside ONNX Runtime (MatMul shape mismatch): a runtime failure."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.eye(3))

    def forward(self, x):
        return x.mean(dim=(2, 3)).reshape(1, -1) @ self.w


def test_runtime_failure_is_500_json_and_server_keeps_serving(assets):
    bundle = make_bundle(assets["root"] / "fails", model=BatchOneOnly(), size=SIZE)
    s = Server(bundle, "--max-batch", "1")
    try:
        x = np.zeros((2, 3, SIZE, SIZE), np.float32)
        body, h = v2_body({"name": "input", "datatype": "FP32", "shape": [2, 3, SIZE, SIZE],
                           "parameters": {"binary_data_size": x.nbytes}}, x.tobytes())
        r = httpx.post(s.url + "/v2/models/edgecv/infer", content=body, headers=h, timeout=30)
        assert r.status_code == 500 and "runtime failure" in r.json()["error"]
        good(s)
    finally:
        assert s.stop() == 0


def test_queue_full_503_and_sigterm_drains_in_flight(assets):
    n = 32
    # the batch would wait 10 s for more rows: the 32 requests stay queued until SIGTERM flushes them
    s = Server(assets["bundle"], "--max-batch", "64", "--max-delay-ms", "10000", "--max-queue", str(n))
    results: list[int] = []
    png = png_bytes()

    def one():
        try:
            results.append(httpx.post(s.url + "/predict", content=png, timeout=60).status_code)
        except httpx.HTTPError as e:
            results.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while s.queue_depth() < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.queue_depth() == n  # 32 requests are waiting in the batcher
    r = httpx.post(s.url + "/predict", content=png, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert time.monotonic() - t0 < 8  # answered on SIGTERM, not after the 10 s delay
    assert s.proc.wait(60) == 0, s.stderr()
    assert results == [200] * n


def test_admission_by_count_and_by_wait(assets):
    """--max-queue bounds the requests in progress; --max-wait-ms refuses while at least a full batch is in
    progress and the oldest of them has been in the server longer than the bound, and admits again once it is
    answered."""
    from edgecv.serve.app import ServeConfig, Service
    from edgecv.serve.predictor import load_predictor

    pred = load_predictor(assets["bundle"])
    try:
        svc = Service(pred, ServeConfig(max_queue=4, max_batch=2, max_wait_ms=20.0))
        assert svc.admit(1, 0.000)
        assert svc.admit(2, 0.030)  # 1 has been in for 30 ms, but one request is no queue (< max_batch)
        assert not svc.admit(3, 0.031)  # 2 in progress, the oldest (1) for 31 ms > 20
        svc.done(1)
        assert svc.admit(4, 0.040) and svc.admit(5, 0.045)  # the oldest (2) for 15 ms <= 20
        assert not svc.admit(6, 0.055)  # ... and for 25 ms
        svc.done(2)
        assert svc.admit(7, 0.055) and svc.admit(8, 0.056)  # the oldest (4) for 15-16 ms
        assert not svc.admit(9, 0.057)  # 4 in progress: the count bound
        assert svc.inflight == 4
    finally:
        pred.close()
