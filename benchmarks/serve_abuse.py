"""Availability under abuse: 64 stalled bodies + 2,000 idle sockets held for 30 s while 8 clients send real requests.

Against one ``edgecv serve`` process on 127.0.0.1 (bounded counts and durations):

1. unloaded: the 8 clients alone (closed loop, keep-alive, one multipart image per request) for ``--base-s`` s;
2. abuse: ``--idle`` sockets that never send a byte and ``--stalled`` connections that declare
   ``Content-Length: 10000000``, send 10 bytes and stall are opened; each is opened again as soon as the server
   closes it (a hostile client would), for as long as the 8 clients run (``--hold-s`` s). Recorded: the clients'
   200 share and p99 against the unloaded p99, what each stalled connection got (408, or closed) and after how
   long, how often the server closed an idle socket and after how long, the server's RSS.

Goal (issue 25): the clients get >= 95 % 200s with p99 < 5x the unloaded p99; the stalled ones get 408 or are
closed at the body deadline. The server runs with its default limits except ``--body-timeout-s`` (``--body-timeout``
here, 10 s by default, so each stalled connection meets the deadline several times in 30 s).

    flock /tmp/edgecv-heavy.lock .venv/bin/python benchmarks/serve_abuse.py --pin \\
        --images ~/.cache/edgecv/cifar10-mini/val --out benchmarks/_work/serve_abuse.json

Without ``--bundle`` a resnet18 (random weights, 10 classes, 64 px) bundle is built (serve_load's demo assets).
``--smoke``: seconds-long phases and fewer sockets (checks the script, not a result).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import serve_load as sl  # benchmarks/serve_load.py (the script's folder is on sys.path)

STALL = b"0123456789"


def _counts(xs) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


def _quant(xs: list[float]) -> dict | None:
    if not xs:
        return None
    a = np.asarray(xs)
    return {"n": len(xs), "min_s": round(float(a.min()), 2), "median_s": round(float(np.median(a)), 2),
            "max_s": round(float(a.max()), 2)}


class Attack:
    """Idle sockets and stalled bodies, each reopened when the server closes it, until :meth:`stop`."""

    def __init__(self, port: int):
        self.port, self.live = port, True
        self.idle_closed: list[float] = []  # seconds an idle socket stayed open before the server closed it
        self.stalled: list[tuple[str, float]] = []  # (what came back, seconds after the stall began)
        self.open_now = self.max_open = self.connect_errors = 0

    async def _open(self):
        while self.live:
            try:
                r, w = await asyncio.open_connection(sl.HOST, self.port)
                self.open_now += 1
                self.max_open = max(self.max_open, self.open_now)
                return r, w
            except OSError:
                self.connect_errors += 1
                await asyncio.sleep(0.2)
        return None, None

    async def _wait(self, r) -> bytes | None:
        """The first bytes the server sends (b'' on close), or None when the attack ends first."""
        while self.live:
            try:
                async with asyncio.timeout(0.5):
                    return await r.read(4096)
            except TimeoutError:
                continue
            except OSError:
                return b""
        return None

    async def idle(self) -> None:
        while self.live:
            r, w = await self._open()
            if r is None:
                return
            t = time.perf_counter()
            got = await self._wait(r)
            if got is not None:
                self.idle_closed.append(time.perf_counter() - t)
            w.close()
            self.open_now -= 1

    async def stall(self) -> None:
        head = (f"POST /predict HTTP/1.1\r\nHost: {sl.HOST}:{self.port}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: 10000000\r\n\r\n").encode()
        while self.live:
            r, w = await self._open()
            if r is None:
                return
            w.write(head + STALL)
            t = time.perf_counter()
            got = await self._wait(r)
            if got is not None:
                what = got.split(b" ", 2)[1].decode() if got.startswith(b"HTTP/") else "closed"
                self.stalled.append((what, time.perf_counter() - t))
            w.close()
            self.open_now -= 1


async def abuse(url: str, port: int, images: list[bytes], a) -> dict:
    atk = Attack(port)
    tasks = []
    for k in range(a.idle):  # 100 at a time: a ramp, not a SYN flood past the listen backlog
        tasks.append(asyncio.create_task(atk.idle()))
        if k % 100 == 99:
            await asyncio.sleep(0.05)
    tasks += [asyncio.create_task(atk.stall()) for _ in range(a.stalled)]
    t0 = time.perf_counter()
    while atk.open_now < a.idle + a.stalled and time.perf_counter() - t0 < 20:
        await asyncio.sleep(0.1)
    opened = atk.open_now
    clients = await sl.closed_loop(url, images, 8, 10**9, a.hold_s, a.timeout)
    atk.live = False
    await asyncio.gather(*tasks)
    stalled_seen = _counts(w for w, _ in atk.stalled)
    return {"clients": clients, "attack_open_when_clients_started": opened, "attack_max_open": atk.max_open,
            "attack_connect_errors": atk.connect_errors,
            "stalled_answers": stalled_seen, "stalled_answer_after": _quant([s for _, s in atk.stalled]),
            "idle_closed_by_server": _quant(atk.idle_closed)}


def run(a) -> dict:
    images = sl.load_images(a)
    args = ["--artifact", a.artifact, "--threads", str(a.threads), "-q", "--body-timeout-s", str(a.body_timeout)]
    srv = sl.Proc([sys.executable, "-m", "edgecv", "serve", a.bundle, *args], "/v2/health/ready")
    res: dict = {"config": vars(a)}
    try:
        res["unloaded"] = {c: sl.arun(sl.closed_loop(srv.url, images, c, 10**9, a.base_s, a.timeout)) for c in (1, 8)}
        print("unloaded", json.dumps(res["unloaded"]), flush=True)
        rss0 = sl.rss_mb(srv.p.pid)
        res["abuse"] = sl.arun(abuse(srv.url, srv.port, images, a))
        res["abuse"]["server_rss_growth_mb"] = round(sl.rss_mb(srv.p.pid) - rss0, 1)
        res["after"] = sl.arun(sl.closed_loop(srv.url, images, 8, 10**9, a.base_s / 2, a.timeout))
    finally:
        res["exit_on_sigterm"] = srv.stop()
        res["server_log_lines"] = len(srv.stderr().splitlines())
    c, base = res["abuse"]["clients"], res["unloaded"][8]
    res["verdict"] = {
        "ok_share": round(c["ok"] / max(1, c["requests"]), 4),
        "p99_vs_unloaded_c8": round(c["p99_ms"] / base["p99_ms"], 2) if c["p99_ms"] and base["p99_ms"] else None,
        "stalled_only_408_or_closed": set(res["abuse"]["stalled_answers"]) <= {"408", "closed"},
    }
    res["verdict"]["met"] = (res["verdict"]["ok_share"] >= 0.95 and (res["verdict"]["p99_vs_unloaded_c8"] or 99) < 5
                             and res["verdict"]["stalled_only_408_or_closed"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle")
    ap.add_argument("--artifact", default="auto")
    ap.add_argument("--images", help="Folder of .jpg/.png request images (default: synthetic 64 px JPEGs).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--stalled", type=int, default=64)
    ap.add_argument("--hold-s", type=float, default=30.0)
    ap.add_argument("--base-s", type=float, default=10.0, help="Seconds of the unloaded phase.")
    ap.add_argument("--body-timeout", type=float, default=10.0, help="edgecv serve --body-timeout-s.")
    ap.add_argument("--timeout", type=float, default=10.0, help="Per-request client timeout (s).")
    ap.add_argument("--pin", action="store_true", help="The server on the last CPU, this generator on the others.")
    ap.add_argument("--out")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.idle, a.stalled, a.hold_s, a.base_s, a.body_timeout = 200, 8, 4.0, 2.0, 2.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # one descriptor per socket held
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        sl.SERVER_CPUS = {cpus[-1]}
        os.sched_setaffinity(0, set(cpus[:-1]))
    with tempfile.TemporaryDirectory() as tmp:
        if not a.bundle:
            a.bundle, _ = sl.demo_assets(Path(tmp))
        res = run(a)
    sl.emit(res, a.out)


if __name__ == "__main__":
    main()
