"""Availability of `edgecv serve` against hostile and broken clients (issue 25, items 5-10).

One real server process on 127.0.0.1 with short deadlines (flags), raw sockets for what HTTP libraries would not
send. After every case a good request is answered: on the same connection when the server keeps it, else on a
new one after the server closed the old one cleanly (``Connection: close``, then EOF). Bounded in count and time.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from tests.bench_util import TinyNet, make_bundle
from tests.conftest import REPO
from tests.test_serve import SIZE, free_port, png_bytes

LIMITS = ["--body-timeout-s", "1", "--header-timeout-s", "1", "--keep-alive-s", "1", "--max-connections", "32",
          "--max-decode-mb", "2", "--max-queue", "4", "--max-body-mb", "1"]


class LogServer:
    """``edgecv serve`` with its log in a file, readable while it runs."""

    def __init__(self, bundle, *args: str):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log", delete=False)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "edgecv", "serve", str(bundle), "--port", str(self.port),
                                      *args], stdout=subprocess.DEVNULL, stderr=self.log, env=env, cwd=str(REPO))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.text()
            try:
                with Raw(self.port) as c:
                    if c.request("GET", "/v2/health/ready")[0] == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("server did not become ready")

    def text(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


class Raw:
    """One HTTP/1.1 connection on a plain socket: sends exactly the bytes given, reads one answer."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.s.close()

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def _fill(self) -> bool:
        c = self.s.recv(65536)
        self.buf += c
        return bool(c)

    def answer(self) -> tuple[int, dict, dict | None]:
        """(status, lower-case headers, JSON body or None)."""
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed before an answer ({self.buf[:200]!r})"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
        n = int(headers.get("content-length", 0))
        while len(self.buf) < n:
            assert self._fill(), "connection closed mid-answer"
        body, self.buf = self.buf[:n], self.buf[n:]
        is_json = headers.get("content-type", "").startswith("application/json")
        return int(lines[0].split()[1]), headers, json.loads(body) if is_json else None

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        h = {"Host": "127.0.0.1", **({"Content-Length": str(len(body))} if body or method == "POST" else {}),
             **(headers or {})}
        self.send(f"{method} {path} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in h.items()).encode()
                  + b"\r\n" + body)
        return self.answer()

    def good(self) -> None:
        status, _, body = self.request("POST", "/predict", png_bytes())
        assert status == 200, body
        assert body["predictions"][0]["label"] in ("red", "green", "blue")

    def closed_within(self, seconds: float) -> float:
        """Seconds until the server closed the connection (EOF; anything sent before it is kept in the buffer)."""
        t0 = time.monotonic()
        self.s.settimeout(seconds)
        while self._fill():
            pass
        return time.monotonic() - t0


def error_closes(c: Raw, status: int) -> dict:
    """The answer is ``status`` with a JSON error and Connection: close, and the server then closes."""
    got, headers, body = c.answer()
    assert got == status and isinstance(body.get("error"), str), (got, body)
    assert headers.get("connection") == "close"
    c.closed_within(5)
    return body


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    return make_bundle(tmp_path_factory.mktemp("limits") / "bundle", model=TinyNet(3, width=8, depth=1), size=SIZE)


@pytest.fixture(scope="module")
def srv(bundle):
    s = LogServer(bundle, *LIMITS)
    yield s
    assert s.stop() == 0


def test_stalled_bodies_hold_no_slot_and_get_408(srv):
    stalled = [Raw(srv.port) for _ in range(8)]  # twice --max-queue
    try:
        t0 = time.monotonic()
        for c in stalled:
            c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n0123456789")
        with Raw(srv.port) as c:
            for _ in range(3):
                c.good()  # admitted although 8 requests wait for their bodies
        for c in stalled:
            assert "--body-timeout-s" in error_closes(c, 408)["error"]
        assert time.monotonic() - t0 < 6
    finally:
        for c in stalled:
            c.s.close()


def test_idle_sockets_are_closed_and_never_lock_clients_out(srv):
    idle = [Raw(srv.port) for _ in range(40)]  # past --max-connections 32: the longest-idle ones are closed
    try:
        with Raw(srv.port) as c:
            c.good()
            c.good()
        for c in idle:
            assert c.closed_within(4) < 4 and c.buf == b""  # closed silently (keep-alive 1 s)
    finally:
        for c in idle:
            c.s.close()


def test_slow_headers_get_408(srv):
    with Raw(srv.port) as c:
        t0 = time.monotonic()
        for ch in b"POST /predict HTTP/1.1\r\nHo":  # one byte every 0.2 s: never completes within 1 s
            try:
                c.send(bytes([ch]))
            except OSError:
                break
            time.sleep(0.2)
            if time.monotonic() - t0 > 3:
                break
        assert "--header-timeout-s" in error_closes(c, 408)["error"]
    with Raw(srv.port) as c:
        c.good()


def test_keep_alive_connection_idles_out_after_an_answer(srv):
    with Raw(srv.port) as c:
        c.good()
        assert c.closed_within(4) < 4


def test_client_json_errors_are_4xx_and_keep_the_connection(srv):
    x = [0.0] * (3 * SIZE * SIZE)
    fp32 = {"name": "input", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE], "data": x}
    infer = "/v2/models/edgecv/infer"
    cases = [
        ("parameters list", {"inputs": [fp32], "parameters": [1]}),
        ("parameters string", {"inputs": [fp32], "parameters": "binary"}),
        ("input parameters list", {"inputs": [{**fp32, "parameters": [1]}]}),
        ("input parameters string", {"inputs": [{**fp32, "parameters": "x"}]}),
        ("output parameters string", {"inputs": [fp32], "outputs": [{"name": "logits", "parameters": "x"}]}),
        ("outputs not a list", {"inputs": [fp32], "outputs": "logits"}),
    ]
    with Raw(srv.port) as c:
        for what, req in cases:
            status, _, body = c.request("POST", infer, json.dumps(req).encode())
            assert status == 400 and "must be" in body["error"], (what, status, body)
            c.good()
        status, _, body = c.request("POST", infer, b"[" * 200_000 + b"]" * 200_000)
        assert status == 400 and "nested" in body["error"], body
        c.good()
        status, _, body = c.request("POST", "/predict", b"not an image")
        assert status == 400
        c.good()


def test_decode_budget_refuses_one_image_over_it(srv):
    buf = io.BytesIO()
    Image.new("RGB", (1000, 1000), (200, 40, 40)).save(buf, "PNG")  # ~4 MB decoded, --max-decode-mb 2
    with Raw(srv.port) as c:
        status, _, body = c.request("POST", "/predict", buf.getvalue())
        assert status == 413 and "--max-decode-mb" in body["error"], body
        c.good()


def test_gzip_and_deflate_bodies_are_decoded_bounded_or_415(srv):
    png = png_bytes()
    with Raw(srv.port) as c:
        for enc, data in (("gzip", gzip.compress(png)), ("deflate", zlib.compress(png))):
            status, _, body = c.request("POST", "/predict", data, {"Content-Encoding": enc})
            assert status == 200 and body["predictions"][0]["label"] == "red", (enc, body)
        status, _, body = c.request("POST", "/predict", gzip.compress(png)[:-12], {"Content-Encoding": "gzip"})
        assert status == 400 and "truncated" in body["error"]
        c.good()
        bomb = gzip.compress(b"\0" * (3 << 20))  # 3 MB after decompression, --max-body-mb 1
        assert len(bomb) < 10_000
        status, _, body = c.request("POST", "/predict", bomb, {"Content-Encoding": "gzip"})
        assert status == 413 and "decompressed" in body["error"]
        c.good()
    with Raw(srv.port) as c:  # refused from the headers, before the body is read: the connection closes
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 5\r\n\r\nabcde")
        assert "br" in error_closes(c, 415)["error"]
    with Raw(srv.port) as c:
        c.good()


def test_malformed_http_gets_json_400_and_close(srv):
    for raw in (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"):
        with Raw(srv.port) as c:
            c.send(raw)
            assert "malformed HTTP request" in error_closes(c, 400)["error"]
        with Raw(srv.port) as c:
            c.good()


def test_declared_body_over_limit_is_413_and_close(srv):
    with Raw(srv.port) as c:
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n0123")
        assert "--max-body-mb" in error_closes(c, 413)["error"]
    with Raw(srv.port) as c:
        c.good()


def test_disconnect_mid_body_is_one_log_line(srv):
    for _ in range(3):
        with Raw(srv.port) as c:
            c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n0123456789")
            time.sleep(0.1)
    with Raw(srv.port) as c:
        c.good()
    deadline = time.monotonic() + 5
    while srv.text().count("disconnected during the body") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    log = srv.text()
    assert log.count("disconnected during the body of POST /predict") == 3, log[-2000:]
    assert "Traceback" not in log and "ClientDisconnect" not in log


def test_tritonclient_gzip_and_deflate_requests(srv):
    import tritonclient.http as th

    png = png_bytes()
    c = th.InferenceServerClient(url=f"127.0.0.1:{srv.port}")
    try:
        for algo in ("gzip", "deflate"):
            img = th.InferInput("image", [1], "BYTES")
            img.set_data_from_numpy(np.array([png], dtype=np.object_))
            out = c.infer("edgecv", [img], request_compression_algorithm=algo).as_numpy("logits")
            assert out.shape == (1, 3) and int(out.argmax()) == 0  # red
    finally:
        c.close()


def test_decode_budget_and_reduced_scale_decode(bundle):
    from edgecv.serve.limits import DecodeBudget, DecodeBusy, DecodeTooLarge
    from edgecv.serve.predictor import load_predictor

    b = DecodeBudget(100)
    with b.hold(60):
        with pytest.raises(DecodeBusy):
            with b.hold(50):
                pass
        with b.hold(40):
            assert b.used == 100
    assert b.used == 0
    with pytest.raises(DecodeTooLarge):
        with b.hold(101):
            pass

    pred = load_predictor(bundle)  # 16 px: a JPEG of 128 px or more decodes at 1/8 scale
    try:
        big, small = io.BytesIO(), io.BytesIO()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (768, 1024, 3), np.uint8)).save(big, "JPEG")
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), np.uint8)).save(small, "JPEG")
        assert pred.decode_cost(big.getvalue()) == 128 * 96 * 4  # 1/8 of each side, 4 bytes a pixel
        from edgecv.data.decode import decode_image

        full = pred.preprocess.to_array(decode_image(small.getvalue()))
        assert np.array_equal(pred.decode(small.getvalue()), full)  # under twice the size: the same pixels
    finally:
        pred.close()


@pytest.fixture(scope="module")
def srv_fails(tmp_path_factory):
    """A model that fails for a batch of 2 inside ONNX Runtime; idle connections kept 30 s, at most 8 open."""
    from tests.test_serve import BatchOneOnly

    bundle = make_bundle(tmp_path_factory.mktemp("fails") / "bundle", model=BatchOneOnly(), size=SIZE)
    s = LogServer(bundle, "--max-batch", "1", "--keep-alive-s", "30", "--max-connections", "8")
    yield s
    assert s.stop() == 0


def test_runtime_failure_500_keeps_the_connection(srv_fails):
    x = np.zeros((2, 3, SIZE, SIZE), np.float32)
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, SIZE, SIZE],
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    with Raw(srv_fails.port) as c:
        status, headers, body = c.request("POST", "/v2/models/edgecv/infer", head + x.tobytes(),
                                          {"Inference-Header-Content-Length": str(len(head))})
        assert status == 500 and "runtime failure" in body["error"] and headers.get("connection") != "close"
        c.good()


def test_connection_cap_closes_the_longest_idle(srv_fails):
    idle = []
    try:
        for _ in range(12):  # 4 past --max-connections 8; the keep-alive (30 s) closes none of them here
            idle.append(Raw(srv_fails.port))
            time.sleep(0.02)
        with Raw(srv_fails.port) as c:  # a working client always gets in: it closes the longest-idle one
            c.good()
        time.sleep(0.5)
        closed = []
        for c in idle:
            c.s.settimeout(0.05)
            try:
                closed.append(c.s.recv(1) == b"")
            except TimeoutError:
                closed.append(False)
        assert closed[:5] == [True] * 5 and closed[-5:] == [False] * 5, closed  # oldest first
    finally:
        for c in idle:
            c.s.close()
