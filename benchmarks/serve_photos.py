"""Large images against ``edgecv serve``: memory under 6 concurrent huge uploads, and phone-photo throughput.

All on 127.0.0.1 with bounded counts and durations. Three parts (``--parts``):

* ``agree``: the hymenoptera val photos upscaled to 12 megapixels (4032x3024, or 3024x4032 for portrait ones,
  bicubic, JPEG quality 90): top-1 of the bundle with the reduced-scale decode (``Predictor.decode``: libjpeg DCT
  scaling toward the resize size) against a full decode of the same file, per image.
* ``memory``: ``edgecv serve`` with its default limits; 6 concurrent uploads of a 9000x9000 PNG, then of a
  5000x5000 PNG (fits the decode budget one at a time), then of 12-MP JPEGs. Server RSS sampled every 20 ms:
  growth over the start during each burst, and ``--settle-s`` s after the last. Every answer must be 200, 413 or
  503. Also the peak RSS of ``edgecv predict`` on the 9000x9000 PNG and on one 12-MP JPEG (``--old-repo``: the
  same commands with another checkout's package, e.g. the code before this change).
* ``throughput``: the seed-style service (serve_load's: FastAPI, PIL full decode, torchvision Resize/CenterCrop,
  eager torch, 1 thread) and ``edgecv serve`` (1 runtime thread) both running, at concurrency 8 on 16 distinct
  12-MP JPEGs (multipart), ``--rounds`` interleaved rounds of ``--phase-s`` s each; the servers pinned to one CPU,
  the generator to the other (``--pin``).

    flock /tmp/edgecv-heavy.lock .venv/bin/python benchmarks/serve_photos.py --pin --bundle BUNDLE \\
        --checkpoint CHECKPOINT.pt --data ~/.cache/edgecv/hymenoptera/val --out benchmarks/_work/serve_photos.json

``BUNDLE`` must be a 224-px bundle of ``CHECKPOINT.pt`` (the float model the seed service runs), e.g. from
``edgecv train --data ~/.cache/edgecv/hymenoptera --arch mobilenet_v3_small --img-size 224`` and
``edgecv export model.pt --target x86 --precision fp32``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import serve_load as sl  # benchmarks/serve_load.py (the script's folder is on sys.path)
from PIL import Image

PHONE = (4032, 3024)


def phone_jpeg(path: Path) -> bytes:
    im = Image.open(path).convert("RGB")
    size = PHONE if im.width >= im.height else PHONE[::-1]
    buf = io.BytesIO()
    im.resize(size, Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def val_files(data: str) -> list[Path]:
    return sorted(p for p in Path(data).expanduser().rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def agree(a) -> dict:
    from edgecv.data.decode import decode_image
    from edgecv.serve.predictor import load_predictor

    pred = load_predictor(a.bundle, artifact=a.artifact, threads=a.threads)
    files = val_files(a.data)
    rows, t_full, t_reduced = [], 0.0, 0.0
    names, pair = pred.class_names, None
    if a.pair:  # two outputs of the model read as the two folders (sorted): e.g. ImageNet 310 ant, 309 bee
        names, pair = sorted({f.parent.name for f in files}), [int(i) for i in a.pair.split(",")]
    for f in files:
        big = phone_jpeg(f)
        t = time.perf_counter()
        full = pred.preprocess.to_array(decode_image(big))
        t_full += time.perf_counter() - t
        t = time.perf_counter()
        reduced = pred.decode(big)
        t_reduced += time.perf_counter() - t
        lf, lr = pred.logits(np.stack([full, reduced]))
        if pair:
            lf, lr = lf[pair], lr[pair]
        rows.append((f.parent.name, names[int(lf.argmax())], names[int(lr.argmax())], float(np.abs(lf - lr).max())))
    pred.close()
    n = len(rows)
    diff = [r for r in rows if r[1] != r[2]]
    return {"pair": a.pair, "images": n, "top1_differs": len(diff), "differing": [str(files[rows.index(r)]) for r in diff],
            "acc_full_decode": round(sum(r[0] == r[1] for r in rows) / n, 4),
            "acc_reduced_decode": round(sum(r[0] == r[2] for r in rows) / n, 4),
            "max_abs_logit_diff": round(max(r[3] for r in rows), 4),
            "predicted_classes": {c: sum(r[2] == c for r in rows) for c in sorted({r[2] for r in rows})},
            "decode_preprocess_ms_full": round(t_full / n * 1e3, 1),
            "decode_preprocess_ms_reduced": round(t_reduced / n * 1e3, 1)}


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.live = pid, 0.0, True

    def run(self):
        while self.live:
            self.peak = max(self.peak, sl.rss_mb(self.pid))
            time.sleep(0.02)


def burst(url: str, bodies: list[bytes], timeout: float = 120.0) -> list:
    """One raw-body ``POST /predict`` per body, all at once -> the status codes (or the error names)."""
    import httpx

    out = []

    def one(body):
        try:
            out.append(httpx.post(url + "/predict", content=body, timeout=timeout).status_code)
        except httpx.HTTPError as e:
            out.append(type(e).__name__)

    ts = [threading.Thread(target=one, args=(b,)) for b in bodies]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout + 10)
    return out


def peak_rss_of(cmd: list[str], env: dict) -> dict:
    """Peak RSS (MB) of ``cmd`` (GNU time's maximum resident set size) and its exit code."""
    # cwd = the package's checkout: `python -m` puts the working directory first on sys.path
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env=env,
                       cwd=env["PYTHONPATH"])
    return {"peak_rss_mb": round(int(p.stderr.strip().splitlines()[-1]) / 1024, 1), "exit": p.returncode}


def memory(a, big_png: bytes, png5000: bytes, jpegs: list[bytes], tmp: Path) -> dict:
    srv = sl.Proc([sys.executable, "-m", "edgecv", "serve", a.bundle, "--artifact", a.artifact, "--threads",
                   str(a.threads), "-q"], "/v2/health/ready")
    res: dict = {}
    try:
        time.sleep(1.0)
        rss0 = res["server_rss_start_mb"] = sl.rss_mb(srv.p.pid)
        for name, bodies in (("png_9000x9000", [big_png] * 6), ("png_5000x5000", [png5000] * 6),
                             ("jpeg_12mp", jpegs[:6])):
            s = RssSampler(srv.p.pid)
            s.start()
            codes = burst(srv.url, bodies)
            s.live = False
            s.join()
            res[name] = {"status": sl.summary([0.0] * len(codes), codes, 1.0)["status"],
                         "rss_growth_during_mb": round(s.peak - rss0, 1),
                         "rss_growth_right_after_mb": round(sl.rss_mb(srv.p.pid) - rss0, 1),
                         "only_200_413_503": {str(c) for c in codes} <= {"200", "413", "503"}}
            print(name, json.dumps(res[name]), flush=True)
        time.sleep(a.settle_s)
        res["rss_growth_after_settle_mb"] = round(sl.rss_mb(srv.p.pid) - rss0, 1)
        res["settle_s"] = a.settle_s
    finally:
        res["exit_on_sigterm"] = srv.stop()
    (tmp / "big.png").write_bytes(big_png)
    (tmp / "phone.jpg").write_bytes(jpegs[0])
    for label, repo in (("predict", sl.REPO), *((("predict_old", Path(a.old_repo)),) if a.old_repo else ())):
        env = {**os.environ, "PYTHONPATH": str(repo)}
        res[label] = {f: peak_rss_of([sys.executable, "-m", "edgecv", "predict", a.bundle, str(tmp / f), "--json",
                                      "-q", "--artifact", a.artifact], env) for f in ("big.png", "phone.jpg")}
    return res


def throughput(a, jpegs: list[bytes]) -> dict:
    servers = {"seed": sl.Proc([sys.executable, sl.__file__, "--seed-server", "--checkpoint", a.checkpoint,
                                "--threads", "1"], "/health"),
               "edgecv": sl.Proc([sys.executable, "-m", "edgecv", "serve", a.bundle, "--artifact", a.artifact,
                                  "--threads", "1", "-q"], "/v2/health/ready")}
    rounds: list[dict] = []
    try:
        for r in range(a.rounds):
            row = {}
            for kind, srv in servers.items():
                row[kind] = sl.arun(sl.closed_loop(srv.url, jpegs, 8, 10**9, a.phase_s, 60.0))
            rounds.append(row)
            print("round", r, json.dumps({k: (v["throughput_rps"], v["status"]) for k, v in row.items()}), flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
    ratio = [x["edgecv"]["throughput_rps"] / x["seed"]["throughput_rps"] for x in rounds]
    return {"rounds": rounds, "speedup_per_round": [round(x, 2) for x in ratio],
            "speedup_median": round(float(np.median(ratio)), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--checkpoint", help="The float model of the bundle (the seed service runs it); throughput.")
    ap.add_argument("--artifact", default="onnx-fp32")
    ap.add_argument("--data", default="~/.cache/edgecv/hymenoptera/val")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parts", default="agree,memory,throughput")
    ap.add_argument("--pair", help="agree: compare only these two output indices, read as the two --data folders "
                                   "in sorted order (e.g. 310,309: ImageNet ant, bee).")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phase-s", type=float, default=15.0)
    ap.add_argument("--settle-s", type=float, default=60.0)
    ap.add_argument("--old-repo", help="Also measure `edgecv predict` memory with this checkout's package.")
    ap.add_argument("--pin", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.pin:
        cpus = sorted(os.sched_getaffinity(0))
        sl.SERVER_CPUS = {cpus[-1]}
        os.sched_setaffinity(0, set(cpus[:-1]))
    parts = set(a.parts.split(","))
    res: dict = {"config": vars(a)}
    if "agree" in parts:
        res["agree"] = agree(a)
        print("agree", json.dumps(res["agree"]), flush=True)
    jpegs = [phone_jpeg(f) for f in val_files(a.data)[::9][:16]] if parts & {"memory", "throughput"} else []
    if "memory" in parts:
        import tempfile

        def png(side: int) -> bytes:
            buf = io.BytesIO()
            Image.new("RGB", (side, side), (10, 200, 30)).save(buf, "PNG")
            return buf.getvalue()

        with tempfile.TemporaryDirectory() as tmp:
            res["memory"] = memory(a, png(9000), png(5000), jpegs, Path(tmp))
    if "throughput" in parts:
        res["throughput"] = throughput(a, jpegs)
    sl.emit(res, a.out)


if __name__ == "__main__":
    main()
