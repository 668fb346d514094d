#!/usr/bin/env python
"""Acceptance trials for `edgecv gate` (issue 6) on this machine. Not a unit test.

Builds three real bundles (ONNX FP32, torchvision MobileNetV3-Small, 10 classes, --size px):
  base   : mobilenet_v3_small (width 1.0)
  same   : the same weights exported again into another bundle (identical model, separate file/session)
  slower : mobilenet_v3_small with width_mult --slow-width (more channels -> more compute)
verifies by direct interleaved measurement that `slower` is >= 10 % slower, then runs `edgecv gate` through the
CLI --trials times for base-vs-same (expect pass, exit 0) and base-vs-slower (expect regression, exit 1),
alternating the two kinds. Writes benchmarks/_work/gate_trials/trials.json and prints a Markdown summary.

    PYTHONPATH=$PWD python benchmarks/gate_trials.py --trials 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgecv.contracts.manifest import ArtifactEntry, Manifest  # noqa: E402
from edgecv.data.preprocess import Preprocess  # noqa: E402
from edgecv.nn.graph import count_macs  # noqa: E402
from edgecv.runtimes.base import host_description, load_runner  # noqa: E402
from edgecv.utils import sha256_file  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_model(width: float, seed: int = 0, tiny: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    if tiny:  # ~20 us per call: per-session memory-layout effects are largest relative to the compute
        w = round(8 * width)
        return torch.nn.Sequential(torch.nn.Conv2d(3, w, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(w, len(CLASSES))).eval()
    m = torchvision.models.mobilenet_v3_small(num_classes=len(CLASSES), width_mult=width)
    # non-trivial BN statistics so the graph is a realistic trained-model graph
    with torch.no_grad():
        m.train()
        for _ in range(3):
            m(torch.randn(8, 3, 64, 64))
    return m.eval()


def write_bundle(model: torch.nn.Module, out: Path, size: int, arch: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    f = out / "model_fp32.onnx"
    torch.onnx.export(model, torch.randn(1, 3, size, size), str(f), input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    e = ArtifactEntry(file=f.name, format="onnx", precision="fp32", runtime="onnxruntime", size_bytes=f.stat().st_size,
                      sha256=sha256_file(f), input_shape=[1, 3, size, size])
    Manifest(target="x86", source={"kind": "benchmark", "arch": arch, "macs": count_macs(model, size)},
             preprocess=Preprocess(input_size=size).to_dict(), class_names=CLASSES,
             input={"name": "input", "shape": [1, 3, size, size], "dtype": "float32", "layout": "NCHW"},
             output={"name": "logits", "shape": [1, len(CLASSES)]}, artifacts=[e]).write(out)
    return out


def direct_ratio(a: Path, b: Path, size: int, rounds: int = 30, block: int = 40) -> dict:
    """Interleaved direct measurement (ORT, 1 thread): median over rounds of median(b)/median(a)."""
    ra = load_runner("onnxruntime", a / "model_fp32.onnx", threads=1)
    rb = load_runner("onnxruntime", b / "model_fp32.onnx", threads=1)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    for _ in range(20):
        ra.predict(x)
        rb.predict(x)
    ta, tb = [], []
    for _ in range(rounds):
        for r, acc in ((ra, ta), (rb, tb)):
            s = []
            for _ in range(block):
                t0 = time.perf_counter_ns()
                r.predict(x)
                s.append(time.perf_counter_ns() - t0)
            acc.append(np.median(s) / 1e6)
    ratios = np.array(tb) / np.array(ta)
    return {"a_p50_ms": float(np.median(ta)), "b_p50_ms": float(np.median(tb)), "ratio_median": float(np.median(ratios)),
            "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max())}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run_gate(base: Path, cand: Path, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edgecv", "gate", "--baseline", str(base), "--candidate", str(cand),
                        "--json", "-", "--quiet", *extra], capture_output=True, text=True, env=env, cwd=str(REPO))
    wall = time.perf_counter() - t0
    try:
        res = json.loads(p.stdout)
        lat = res["artifacts"][0]["latency"]
    except (json.JSONDecodeError, KeyError, IndexError):
        res, lat = None, None
    return {"rc": p.returncode, "wall_s": round(wall, 2), "load_before": None,
            "ratio": lat and lat["ratio"], "ci": lat and [lat["ci_low"], lat["ci_high"]],
            "rounds": lat and lat["rounds"], "inconclusive": lat and lat["inconclusive"],
            "session_ratios": lat and lat.get("session_ratios"),
            "stderr_tail": p.stderr.strip().splitlines()[-1] if p.returncode not in (0, 1) and p.stderr else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--slow-width", type=float, default=1.1)
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "gate_trials"))
    ap.add_argument("--gate-args", default="", help="extra args for edgecv gate, e.g. '--rounds 20'")
    ap.add_argument("--tiny", action="store_true", help="a 1-conv model (width 8 x --slow-width) instead of MobileNetV3")
    ap.add_argument("--stress", type=int, default=0, metavar="N",
                    help="run N busy-loop processes during the gate trials (simulated CI neighbours)")
    args = ap.parse_args()
    work = Path(args.work)
    torch.set_num_threads(1)
    arch = "conv3x3(8)" if args.tiny else "mobilenet_v3_small"
    base = write_bundle(make_model(1.0, tiny=args.tiny), work / "base", args.size, arch)
    same = write_bundle(make_model(1.0, tiny=args.tiny), work / "same", args.size, arch)
    slow_m = make_model(args.slow_width, tiny=args.tiny)
    slow = write_bundle(slow_m, work / "slower", args.size, f"{arch} width x{args.slow_width}")
    macs = {k: json.loads((b / "manifest.json").read_text())["source"]["macs"] for k, b in
            (("base", base), ("slower", slow))}
    print(f"host: {host_description()}; load avg {loadavg()}", flush=True)
    print(f"MACs base {macs['base'] / 1e6:.1f}M, slower {macs['slower'] / 1e6:.1f}M "
          f"(+{(macs['slower'] / macs['base'] - 1) * 100:.0f}%)", flush=True)
    d_same = direct_ratio(base, same, args.size)
    d_slow = direct_ratio(base, slow, args.size)
    print(f"direct: same/base {d_same['ratio_median']:.3f}, slower/base {d_slow['ratio_median']:.3f} "
          f"(base p50 {d_slow['a_p50_ms']:.3f} ms, slower p50 {d_slow['b_p50_ms']:.3f} ms)", flush=True)
    extra = args.gate_args.split()
    trials = {"identical": [], "slower": []}
    t_start = time.time()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.stress)]
    try:
        _trials(args, base, same, slow, extra, trials)
    finally:
        for h in hogs:
            h.kill()
    summary = {
        "host": host_description(), "size": args.size, "slow_width": args.slow_width, "macs": macs, "arch": arch,
        "stress_processes": args.stress, "direct_same": d_same, "direct_slower": d_slow, "gate_args": extra,
        "trials": trials,
        "identical_pass": sum(r["rc"] == 0 for r in trials["identical"]),
        "slower_fail": sum(r["rc"] == 1 for r in trials["slower"]),
        "max_wall_s": max(r["wall_s"] for k in trials for r in trials[k]),
        "total_s": round(time.time() - t_start, 1),
    }
    (work / "trials.json").write_text(json.dumps(summary, indent=2))
    n = args.trials
    print("\n| case | expected | result | ratio (median over trials) | widest 95% CI | max wall s |")
    print("|---|---|---|---:|---|---:|")
    for kind, exp, ok_rc in (("identical", "pass (exit 0)", 0), ("slower", "regression (exit 1)", 1)):
        rs = trials[kind]
        ok = sum(r["rc"] == ok_rc for r in rs)
        ratios = [r["ratio"] for r in rs if r["ratio"]]
        widest = max((r for r in rs if r["ci"]), key=lambda r: r["ci"][1] - r["ci"][0], default=None)
        print(f"| {kind} | {exp} | {ok}/{n} | {np.median(ratios):.3f} | "
              f"{widest and '[{:.3f}, {:.3f}]'.format(*widest['ci'])} | {max(r['wall_s'] for r in rs)} |")
    print(f"\ntotal {summary['total_s']}s; results in {work / 'trials.json'}")


def _trials(args, base: Path, same: Path, slow: Path, extra: list[str], trials: dict) -> None:
    for i in range(args.trials):
        for kind, cand in (("identical", same), ("slower", slow)):
            la = loadavg()
            r = run_gate(base, cand, extra)
            r["load_before"] = la
            trials[kind].append(r)
            print(f"trial {i + 1:2d} {kind:9s}: rc={r['rc']} ratio={r['ratio'] and round(r['ratio'], 3)} "
                  f"ci={r['ci'] and [round(c, 3) for c in r['ci']]} rounds={r['rounds']} "
                  f"inconclusive={r['inconclusive']} sessions={r['session_ratios']} wall={r['wall_s']}s load={la}",
                  flush=True)


if __name__ == "__main__":
    main()
