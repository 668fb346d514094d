"""``edgecv serve --ray``: 2 Ray Serve replicas on a private local Ray instance answer /predict, spread over both;
``edgecv export --triton-repo``. The Ray instance is started by the ``edgecv serve --ray`` process (``ray.init``,
local only) and stopped when it exits on SIGTERM; its whole process group is killed if anything is left."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from tests.bench_util import make_bundle
from tests.conftest import REPO, run_cli

SIZE = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(rgb) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), rgb).save(b, "PNG")
    return b.getvalue()


def test_ray_flags_need_ray_and_ray_is_lazy(tmp_path):
    p = run_cli("serve", str(tmp_path), "--replicas", "2")
    assert p.returncode == 2 and "--replicas and --address need --ray" in p.stderr
    code = "import sys, edgecv.cli, edgecv.serve.app; assert 'ray' not in sys.modules, 'ray imported eagerly'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(REPO),
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]


def test_export_triton_repo(tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] not installed (validates config.pbtxt)")
    bundle = make_bundle(tmp_path / "b", size=SIZE)
    repo = tmp_path / "repo"
    p = run_cli("export", str(bundle), "--verify", "--triton-repo", str(repo), "--json", check=True, timeout=120)
    rep = json.loads(p.stdout)
    assert rep["ok"] and rep["triton_repo"] == [str(repo / "onnx-fp32")]
    assert (repo / "onnx-fp32" / "1" / "model.onnx").read_bytes() == (bundle / "model_fp32.onnx").read_bytes()
    cfg = (repo / "onnx-fp32" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in cfg and "dynamic_batching" in cfg


@pytest.mark.slow
def test_ray_two_replicas_spread_requests(tmp_path):
    pytest.importorskip("ray.serve", reason="ray[serve] not installed: pip install 'ray[serve]'")
    from edgecv.serve.predictor import load_predictor
    from edgecv.serve.ray_app import PID_HEADER, REPLICA_HEADER

    bundle = make_bundle(tmp_path / "b", size=SIZE)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "w+")  # Ray logs a lot: a file, never a pipe that could fill
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "edgecv", "serve", str(bundle), "--ray", "--replicas", "2",
                             "--threads", "1", "--artifact", "onnx-fp32", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO), start_new_session=True)

    def tail() -> str:
        log.flush()
        log.seek(0)
        return log.read()[-4000:]

    try:
        deadline = time.monotonic() + 240  # Ray start-up on 2 busy cores: generous, bounded
        while True:
            assert proc.poll() is None, f"serve --ray exited {proc.returncode}:\n{tail()}"
            assert time.monotonic() < deadline, f"not ready within 240 s:\n{tail()}"
            try:
                if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

        images = [_png((200, 40, 40)), _png((40, 200, 40)), _png((40, 40, 200))]
        want = [r["label"] for r in load_predictor(bundle, artifact="onnx-fp32").predict(images)]
        replicas, pids = {}, set()
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in range(200):  # bounded: stops as soon as both replicas answered a few
                r = c.post("/predict", files=[("file", (f"{j}.png", b, "image/png")) for j, b in enumerate(images)])
                assert r.status_code == 200, r.text
                body = r.json()
                assert [p["label"] for p in body["predictions"]] == want and body["artifact"] == "onnx-fp32"
                rid = r.headers[REPLICA_HEADER]
                replicas[rid] = replicas.get(rid, 0) + 1
                pids.add(r.headers[PID_HEADER])
                if i >= 9 and len(replicas) == 2 and min(replicas.values()) >= 2:
                    break
            assert len(replicas) == 2 and len(pids) == 2, f"requests not spread over 2 replicas: {replicas}"
            assert min(replicas.values()) >= 2, replicas
            meta = c.get("/v2/models/edgecv").json()
            assert meta["outputs"][0]["name"] == "logits"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, tail()
    finally:
        _reap_group(proc)
        log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _reap_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """The CLI ran in its own session: its process group is it and the Ray processes it started. Give them
    ``grace`` seconds to leave after ray.shutdown, then SIGKILL whatever of that group is left."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)
    deadline = time.monotonic() + grace
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
