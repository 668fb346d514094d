"""Load test of ``edgecv serve`` (dynamic batching on and off) next to a seed-style service, in one run.

The seed-style service is what the workflow this product comes from ends with: FastAPI, the eager PyTorch model,
one forward per request inside the async handler. Everything runs on 127.0.0.1 with bounded request counts and
durations. Phases, each against a fresh server process:

1. closed loop at concurrency 1, 8, 32 (``--requests`` per level, at most ``--duration`` s each): throughput,
   p50/p99, failures — for ``edgecv serve`` (``--max-batch 8 --max-delay-ms 2``), ``edgecv serve --max-batch 1``
   (batching off) and the seed service;
2. the sustainable rate, measured: the highest open-loop rate, from 0.8 x the batching-on throughput at
   concurrency 32 down in steps of 0.1, that the server answers completely (all 200) for ``--probe-s`` s;
   overload: open-loop arrivals at 4 x that rate for ``--overload-s`` s: every request must get 200 or 503 within
   ``--timeout``; server RSS growth; p99 of the 200s vs the unloaded (concurrency 1) p99;
3. soak: the sustainable rate for ``--soak-s`` s: zero errors expected.

Under overload an accepted request waits about ``--max-queue / throughput`` or ``--max-wait-ms``, whichever is less:
that bound, not the machine, sets the p99 of the 200s, so both (defaults 64 and 20 ms here) are part of the result. The load generator shares the CPUs
with the server: run it on an otherwise idle machine.

Full run (the numbers for RESULTS.md; nothing else running on the machine; ~6 min):

    .venv/bin/python benchmarks/serve_load.py --bundle BUNDLE --checkpoint CHECKPOINT.pt \\
        --images ~/.cache/edgecv/cifar10-mini/val --threads 1 --out benchmarks/_work/serve_load.json

``CHECKPOINT.pt`` is the float model the bundle was exported from (the seed service runs it eagerly); without
``--bundle``/``--checkpoint`` a resnet18 (random weights, 10 classes, 64 px) is built into a temporary bundle.
Smoke (a few seconds per phase, for checking the script itself):

    .venv/bin/python benchmarks/serve_load.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi import File, UploadFile  # module level: the seed handler's annotations are resolved from here

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # never anything else


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------- servers
def seed_app(checkpoint: str, threads: int):
    """The seed-style service: PIL full decode, torchvision Resize/CenterCrop, eager PyTorch, one forward per
    request, in the async handler."""
    import torch
    from fastapi import FastAPI
    from PIL import Image
    from torchvision import transforms as T

    from edgecv.models.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    ck = load_checkpoint(checkpoint)
    p = ck.preprocess
    tf = T.Compose([T.Resize(p.resize_size, interpolation=T.InterpolationMode(p.interpolation)),
                    T.CenterCrop(p.input_size), T.ToTensor(), T.Normalize(p.mean, p.std)])
    model, names = ck.build(), ck.class_names
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)):  # noqa: B008 - FastAPI's idiom
        img = Image.open(io.BytesIO(await file.read())).convert("RGB")
        with torch.no_grad():
            p = torch.softmax(model(tf(img).unsqueeze(0)), 1)[0]
        i = int(p.argmax())
        return {"label": names[i], "score": float(p[i])}

    return app


SERVER_CPUS: set[int] | None = None  # --pin: the servers run here, the load generator on the other CPUs


class Proc:
    def __init__(self, cmd: list[str], ready_path: str):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        # the server's stderr goes to a file: a pipe nobody reads fills up (64 KiB) under overload, when uvicorn
        # logs every connection over its limit, and the server's event loop then blocks on that write
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen([*cmd, "--port", str(self.port)], env=env, cwd=str(REPO),
                                  stdout=subprocess.DEVNULL, stderr=self.log,
                                  # in the child before exec: every thread the server starts inherits it
                                  preexec_fn=(lambda: os.sched_setaffinity(0, SERVER_CPUS)) if SERVER_CPUS else None)
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise SystemExit(f"server exited: {self.stderr()[-2000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"{cmd}: not ready after 120 s")

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> int:
        self.p.terminate()
        try:
            return self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.p.wait(10)


def start(kind: str, a, max_queue: int = 64, max_wait_ms: float | None = None) -> Proc:
    py = [sys.executable]
    if kind == "seed":
        return Proc([*py, __file__, "--seed-server", "--checkpoint", a.checkpoint, "--threads", str(a.threads)],
                    "/health")
    batch = ["--max-batch", "8", "--max-delay-ms", "2"] if kind == "edgecv" else ["--max-batch", "1"]
    return Proc([*py, "-m", "edgecv", "serve", a.bundle, "--artifact", a.artifact, "--threads", str(a.threads),
                 "--max-queue", str(max_queue), "-q", *batch,
                 *(["--max-wait-ms", str(max_wait_ms)] if max_wait_ms else [])], "/v2/health/ready")


# ---------------------------------------------------------------------------------------------- load
def summary(lat: list[float], codes: list, wall: float) -> dict:
    ok = [t for t, c in zip(lat, codes, strict=True) if c == 200]
    counts: dict[str, int] = {}
    for c in codes:
        counts[str(c)] = counts.get(str(c), 0) + 1
    pct = (lambda q: round(float(np.percentile(ok, q)) * 1e3, 3)) if ok else (lambda q: None)
    return {"requests": len(codes), "ok": len(ok), "status": counts, "wall_s": round(wall, 3),
            "throughput_rps": round(len(ok) / wall, 2) if wall > 0 else None, "p50_ms": pct(50), "p99_ms": pct(99)}


class Conn:
    """One keep-alive HTTP/1.1 connection of the load generator (asyncio streams, pre-built request bytes).

    The generator must cost far less CPU per request than the servers it measures: with httpx's AsyncClient the
    same server measured 143 rps at concurrency 32 here, with this client 556 rps (benchmarks/RESULTS.md).
    """

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        reused = self.w is not None
        try:
            return await self._request(raw)
        except (ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
        # a kept-alive connection the server closed while it sat idle (uvicorn's keep-alive timeout) fails before
        # any byte of an answer: reconnect and send once more, as HTTP client pools do for a stale connection
        return await self._request(raw)

    async def _request(self, raw: bytes) -> int:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        try:
            self.w.write(raw)
            head = await self.r.readuntil(b"\r\n\r\n")  # one call for the status line and all headers
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length, close = 0, False
            for h in lines[1:]:
                k, _, v = h.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    length = int(v)
                elif k == b"connection":
                    close = v.strip().lower() == b"close"
            await self.r.readexactly(length)
            if close:
                self.close()
            return status
        except asyncio.IncompleteReadError as e:
            self.close()
            if e.partial:  # part of an answer arrived: not a stale connection, do not resend
                raise ConnectionAbortedError("server closed the connection mid-answer") from None
            raise ConnectionResetError("server closed the connection") from None
        except BaseException:
            self.close()  # a half-read answer leaves the stream unusable: reconnect next time
            raise

    def close(self) -> None:
        if self.w is not None:
            self.w.close()
        self.r = self.w = None


def predict_request(url: str, img: bytes, boundary: str = "edgecv-load-boundary") -> bytes:
    """``POST /predict`` with one multipart file field: what the seed service's ``UploadFile`` expects."""
    host = url.removeprefix("http://")
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + img + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _one(conn: Conn, raw: bytes, timeout: float, lat: list, codes: list, t: float | None = None) -> None:
    t = time.perf_counter() if t is None else t
    try:
        async with asyncio.timeout(timeout):  # total time, not per read (and no extra task, unlike wait_for)
            codes.append(await conn.request(raw))
    except Exception as e:  # noqa: BLE001 - timeouts and connection errors are results here
        codes.append(type(e).__name__)
    lat.append(time.perf_counter() - t)


async def closed_loop(url: str, images: list[bytes], conc: int, n: int, duration: float, timeout: float) -> dict:
    reqs = [predict_request(url, im) for im in images]
    lat, codes, left = [], [], [n]
    stop = time.perf_counter() + duration
    conns = [Conn(url) for _ in range(conc)]

    async def worker(k):
        while left[0] > 0 and time.perf_counter() < stop:
            left[0] -= 1
            await _one(conns[k], reqs[(k + left[0]) % len(reqs)], timeout, lat, codes)

    await asyncio.gather(*(_one(c, reqs[0], timeout, [], []) for c in conns))  # connect + warm
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(conc)))
    out = summary(lat, codes, time.perf_counter() - t0)
    for c in conns:
        c.close()
    return out


async def open_loop(url: str, images: list[bytes], rate: float, duration: float, timeout: float,
                    max_inflight: int = 1024, warm_connections: int = 64) -> dict:
    """Arrivals at ``rate``/s for ``duration`` s regardless of answers (capped at ``max_inflight`` in flight);
    each request takes an idle keep-alive connection or opens one. ``warm_connections`` are opened (one request
    each, not counted) before the clock starts, as a client's connection pool would be."""
    reqs = [predict_request(url, im) for im in images]
    lat, codes, tasks, dropped = [], [], set(), 0
    idle = [Conn(url) for _ in range(warm_connections)]
    for k in range(0, len(idle), 16):  # 16 at a time: a warm-up, not a burst the server must refuse
        await asyncio.gather(*(_one(c, reqs[0], timeout, [], []) for c in idle[k:k + 16]))

    async def one(raw, due_at):
        conn = idle.pop() if idle else Conn(url)
        await _one(conn, raw, timeout, lat, codes, due_at)
        idle.append(conn)

    n, i = int(rate * duration), 0
    t0 = time.perf_counter()
    while i < n:  # every tick starts the arrivals that are due: the pacing costs one sleep per tick, not per request
        due = min(n, int((time.perf_counter() - t0) * rate) + 1)
        for j in range(i, due):
            if len(tasks) >= max_inflight:
                dropped += 1
                continue
            # latency counts from the scheduled arrival, so a late start (a busy generator) is not hidden
            task = asyncio.create_task(one(reqs[j % len(reqs)], t0 + j / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        i = due
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    out = summary(lat, codes, time.perf_counter() - t0)
    for c in idle:
        c.close()
    out.update(offered_rps=rate, client_dropped=dropped, max_latency_ms=round(max(lat) * 1e3, 1) if lat else None)
    return out


async def recovery(url: str, img: bytes, timeout: float, limit: float = 60.0) -> float | None:
    """Seconds after the overload until a single request is answered 200 again (None: not within ``limit``)."""
    raw, conn = predict_request(url, img), Conn(url)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        lat, codes = [], []
        await _one(conn, raw, timeout, lat, codes)
        if codes == [200]:
            conn.close()
            return round(time.perf_counter() - t0, 2)
        await asyncio.sleep(0.2)
    conn.close()
    return None


def arun(coro):
    """Run the generator on uvloop when it is installed (uvicorn uses it too): about half the client CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def server_histogram(url: str, endpoint: str = "/predict", status: str = "200") -> dict[float, float]:
    """The server's own cumulative latency histogram ``{upper bound s: count}`` for one endpoint and status."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("edgecv_request_latency_seconds_bucket{") and f'endpoint="{endpoint}"' in line \
                and f'status="{status}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def histogram_quantile(before: dict, after: dict, q: float) -> float | None:
    """Upper bucket bound (ms) holding quantile ``q`` of the requests recorded between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    for b, c in zip(bounds, counts, strict=True):
        if c >= q * counts[-1]:
            return round(b * 1e3, 2)
    return None


# ---------------------------------------------------------------------------------------------- phases
def load_images(a) -> list[bytes]:
    from PIL import Image

    if a.images:
        files = sorted(p for p in Path(a.images).expanduser().rglob("*") if p.suffix.lower() in (".jpg", ".png"))
        if not files:
            raise SystemExit(f"--images {a.images}: no .jpg/.png files")
        return [f.read_bytes() for f in files[:: max(1, len(files) // 64)][:64]]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
        out.append(buf.getvalue())
    return out


def demo_assets(tmp: Path) -> tuple[str, str]:
    """A resnet18 (random weights, 10 classes, 64 px) as an edgecv checkpoint and an ONNX FP32 bundle."""
    import torch

    sys.path.insert(0, str(REPO))
    from edgecv.data.preprocess import Preprocess
    from edgecv.models.checkpoint import save_checkpoint
    from edgecv.models.registry import create_model
    from tests.bench_util import make_bundle

    torch.manual_seed(0)
    names = [f"c{i}" for i in range(10)]
    model = create_model("resnet18", 10).eval()
    ck = save_checkpoint(tmp / "model.pt", model, "resnet18", names, Preprocess(input_size=64), metrics={})
    make_bundle(tmp / "bundle", model=model, size=64, class_names=names)
    return str(tmp / "bundle"), str(ck or tmp / "model.pt")


def find_sustainable(url: str, images: list[bytes], top: float, a) -> dict:
    """The highest open-loop rate (a fraction of the closed-loop c=32 throughput ``top``, from 0.8 down) that the
    server answers completely: every request 200 for ``--probe-s`` seconds. Open-loop arrivals batch less well
    than 32 clients that wait for their answers, so the closed-loop figure overstates what it sustains."""
    probes = []
    for frac in (0.8, 0.7, 0.6, 0.5, 0.4, 0.3):
        r = arun(open_loop(url, images, frac * top, a.probe_s, a.timeout))
        probes.append({"fraction": frac, "rate_rps": round(frac * top, 1), "status": r["status"],
                       "p99_ms": r["p99_ms"]})
        if r["ok"] == r["requests"]:
            return {"rate_rps": round(frac * top, 1), "fraction_of_c32": frac, "probes": probes}
    return {"rate_rps": round(0.3 * top, 1), "fraction_of_c32": 0.3, "probes": probes, "note": "no probe was clean"}


def run(a) -> dict:
    images = load_images(a)
    res: dict = {"config": {k: v for k, v in vars(a).items() if k != "seed_server"}, "closed_loop": {}}
    for kind in ("edgecv", "edgecv-nobatch", "seed"):
        srv = start(kind, a)
        try:
            res["closed_loop"][kind] = {c: arun(closed_loop(srv.url, images, c, a.requests, a.duration,
                                                                   a.timeout)) for c in (1, 8, 32)}
        finally:
            srv.stop()
        print(kind, json.dumps(res["closed_loop"][kind]), flush=True)
    top = res["closed_loop"]["edgecv"][32]["throughput_rps"] or 1.0
    seed = res["closed_loop"]["seed"][32]["throughput_rps"] or float("nan")
    res["speedup_vs_seed_c32"] = round(top / seed, 2)
    srv = start("edgecv", a, max_queue=a.max_queue, max_wait_ms=a.max_wait_ms)
    try:
        res["sustainable"] = find_sustainable(srv.url, images, top, a)
        sustainable = res["sustainable"]["rate_rps"]
        print("sustainable", json.dumps(res["sustainable"]), flush=True)
        rss0, h0 = rss_mb(srv.p.pid), server_histogram(srv.url)
        res["overload"] = arun(open_loop(srv.url, images, 4 * sustainable, a.overload_s, a.timeout))
        h1 = server_histogram(srv.url)
        res["overload"]["server_p50_ms_le"] = histogram_quantile(h0, h1, 0.5)  # bucket bounds: upper limits
        res["overload"]["server_p99_ms_le"] = histogram_quantile(h0, h1, 0.99)
        res["overload"]["rss_growth_mb"] = round(rss_mb(srv.p.pid) - rss0, 1)
        unloaded = res["closed_loop"]["edgecv"][1]["p99_ms"]
        p99 = res["overload"]["p99_ms"]
        res["overload"]["p99_vs_unloaded"] = round(p99 / unloaded, 2) if p99 and unloaded else None
        res["overload"]["only_200_or_503"] = set(res["overload"]["status"]) <= {"200", "503"}
        print("overload", json.dumps(res["overload"]), flush=True)
        res["overload"]["recovery_s"] = arun(recovery(srv.url, images[0], a.timeout))
        res["soak"] = arun(open_loop(srv.url, images, sustainable, a.soak_s, a.timeout))
        res["soak"]["errors"] = res["soak"]["requests"] - res["soak"]["ok"]
        print("soak", json.dumps(res["soak"]), flush=True)
    finally:
        res["edgecv_exit_on_sigterm"] = srv.stop()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle")
    ap.add_argument("--checkpoint")
    ap.add_argument("--artifact", default="auto")
    ap.add_argument("--images", help="Folder of .jpg/.png request images (default: synthetic 64 px JPEGs).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-wait-ms", type=float, default=20.0,
                    help="edgecv serve --max-wait-ms in the overload and soak phases (0: off): 503 while the oldest "
                         "request in progress has been in the server longer, so accepted requests take about this long.")
    ap.add_argument("--max-queue", type=int, default=64,
                    help="edgecv serve --max-queue in the overload and soak phases (the closed loop uses 64, above its "
                         "concurrency): accepted requests wait about max_queue / throughput, 503 beyond.")
    ap.add_argument("--probe-s", type=float, default=8.0,
                    help="Seconds per open-loop probe that finds the sustainable rate (overload = 4x it, soak = it).")
    ap.add_argument("--requests", type=int, default=2000, help="Requests per concurrency level (closed loop).")
    ap.add_argument("--duration", type=float, default=20.0, help="Max seconds per concurrency level.")
    ap.add_argument("--overload-s", type=float, default=30.0)
    ap.add_argument("--soak-s", type=float, default=60.0)
    ap.add_argument("--timeout", type=float, default=5.0, help="Per-request client timeout (s).")
    ap.add_argument("--out", help="Write the results JSON here.")
    ap.add_argument("--pin", action="store_true",
                    help="Servers on the last CPU, this load generator on the others (needs >= 2 CPUs), so the two "
                         "never compete for one core.")
    ap.add_argument("--smoke", action="store_true", help="Seconds-long phases (checks the script, not a result).")
    ap.add_argument("--seed-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.seed_server:
        import uvicorn

        uvicorn.run(seed_app(a.checkpoint, a.threads), host=HOST, port=a.port, log_level="warning")
        return
    if a.pin:
        global SERVER_CPUS
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        SERVER_CPUS = {cpus[-1]}
        os.sched_setaffinity(0, set(cpus[:-1]))
    if a.smoke:
        a.requests, a.duration, a.overload_s, a.soak_s, a.probe_s = 60, 2.0, 3.0, 3.0, 1.0
    with tempfile.TemporaryDirectory() as tmp:
        if not (a.bundle and a.checkpoint):
            a.bundle, a.checkpoint = demo_assets(Path(tmp))
        res = run(a)
    emit(res, a.out)


def emit(res: dict, out: str | None) -> None:
    """Print the result as JSON, and write it to ``out`` too when given (shared by the serving benchmarks)."""
    text = json.dumps(res, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
