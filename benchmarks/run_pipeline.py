#!/usr/bin/env python
"""Reproduce the full edgecv pipeline on cifar10-mini through the CLI and write the results table.

    teacher (edgecv train, or an existing checkpoint)
      -> edgecv compress --teacher T --data D --out RUN
      -> edgecv export RUN --target all --data D --out BUNDLE
      -> edgecv export T --target x86 --precision fp32 --data D --out TEACHER_BUNDLE   (the FP32 reference)
      -> edgecv bench TEACHER_BUNDLE / BUNDLE --data D --batch 1,8 --json/--markdown/--plot

Writes everything under benchmarks/_work/pipeline/ and replaces the section between the markers
``<!-- pipeline:begin -->`` / ``<!-- pipeline:end -->`` of benchmarks/RESULTS.md with: the exact commands and
their wall times, teacher FP32 vs every student artifact (format, precision, runtime, size, top-1, p50, p90,
fps, budget verdict, measured_on), the recommended artifact per target and the bench notes.

    PYTHONPATH=$PWD python benchmarks/run_pipeline.py \
        --teacher benchmarks/_work/teacher_r18_64.pt --data ~/.cache/edgecv/cifar10-mini

Steps whose output already exists are skipped (--force redoes them). Extra arguments for a step:
--compress-args "--epochs-kd 4 ..." / --export-args / --bench-args.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- pipeline:begin -->", "<!-- pipeline:end -->"


def sh(args: list[str], log: list[dict], allow: tuple[int, ...] = (0,)) -> int:
    cmd = "edgecv " + " ".join(shlex.quote(a) for a in args)
    print(f"\n$ {cmd}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edgecv", *args], env=env, cwd=str(REPO))
    wall = time.perf_counter() - t0
    log.append({"command": cmd, "rc": p.returncode, "wall_s": round(wall, 1)})
    print(f"  -> exit {p.returncode} in {wall:.1f}s", flush=True)
    if p.returncode not in allow:
        raise SystemExit(f"step failed (exit {p.returncode}): {cmd}")
    return p.returncode


def fmt(x, f="{:.2f}"):
    return "-" if x is None else f.format(x)


def table(rows: list[tuple[str, dict]]) -> list[str]:
    out = ["| model | artifact | runtime | size MB | top-1 % | p50 ms | p90 ms | fps (b1) | throughput | budget | measured on |",
           "|---|---|---|---:|---:|---:|---:|---:|---|---|---|"]
    for who, a in rows:
        p = a.get("primary") or {}
        acc = a.get("accuracy")
        verdict = a["verdict"]["label"] if a.get("verdict") else f"{a['status']}: {a.get('reason') or ''}"
        thr = f"{a['throughput']['fps']:.1f} @b{a['throughput']['batch']}" if a.get("throughput") else "-"
        out.append(f"| {who} | {a['name']} | {a['runtime'] or '-'} | {fmt((a.get('size_bytes') or 0) / 1e6)} | "
                   f"{fmt(acc and acc['top1'])} | {fmt(p.get('p50_ms'), '{:.3f}')} | {fmt(p.get('p90_ms'), '{:.3f}')} | "
                   f"{fmt(p.get('fps'), '{:.1f}')} | {thr} | {verdict.replace('|', '/')} | "
                   f"{(a.get('measured_on') or '-').replace('|', '/')} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path.home() / ".cache" / "edgecv" / "cifar10-mini"))
    ap.add_argument("--teacher", default=str(REPO / "benchmarks" / "_work" / "teacher_r18_64.pt"))
    ap.add_argument("--train-teacher-epochs", type=int, default=None,
                    help="Train the teacher (resnet18, 64 px) when --teacher does not exist.")
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "pipeline"))
    ap.add_argument("--compress-args", default="")
    ap.add_argument("--export-args", default="")
    ap.add_argument("--bench-args", default="--min-time 3s --rounds 5")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--no-results", action="store_true", help="Do not touch benchmarks/RESULTS.md.")
    a = ap.parse_args()

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher, data = Path(a.teacher), a.data
    run, bundle, tbundle = work / "run", work / "bundle", work / "teacher_bundle"
    log: list[dict] = []
    t_all = time.perf_counter()

    if not teacher.is_file():
        if a.train_teacher_epochs is None:
            raise SystemExit(f"teacher {teacher} not found (pass --teacher or --train-teacher-epochs N)")
        sh(["train", "--data", data, "--arch", "resnet18", "--img-size", "64", "--epochs", str(a.train_teacher_epochs),
            "--out", str(teacher)], log)
    if a.force or not (run / "run.json").is_file():
        sh(["compress", "--teacher", str(teacher), "--data", data, "--out", str(run), *shlex.split(a.compress_args)], log)
    if a.force or not (bundle / "manifest.json").is_file():
        sh(["export", str(run), "--target", "all", "--data", data, "--out", str(bundle), *shlex.split(a.export_args)],
           log, allow=(0, 1))  # 1 = some artifact failed validation: reported in the manifest and by bench
    if a.force or not (tbundle / "manifest.json").is_file():
        sh(["export", str(teacher), "--target", "x86", "--precision", "fp32", "--data", data, "--out", str(tbundle)],
           log, allow=(0, 1))
    bargs = ["--data", data, "--threads", "1", "--batch", "1,8", *shlex.split(a.bench_args)]
    sh(["bench", str(tbundle), "--target", "x86", *bargs, "--json", str(work / "bench_teacher.json"),
        "--markdown", str(work / "bench_teacher.md")], log, allow=(0, 1))
    sh(["bench", str(bundle), "--target", "all", *bargs, "--json", str(work / "bench_student.json"),
        "--markdown", str(work / "bench_student.md"), "--plot", str(work / "pareto.png")], log, allow=(0, 1))
    total = time.perf_counter() - t_all

    bt = json.loads((work / "bench_teacher.json").read_text())
    bs = json.loads((work / "bench_student.json").read_text())
    rows = [("teacher", x) for x in bt["artifacts"]] + [("student", x) for x in bs["artifacts"]]
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, f"## Full pipeline on cifar10-mini (benchmarks/run_pipeline.py, {now})", "",
             f"Host: {bs['host']} ({bs['machine']}). Data: `{data}` (val split). Total wall time {total / 60:.1f} min.",
             "Latency: batch 1 unless noted, 1 thread, interleaved rounds (see docs/bench.md). `(host proxy)`: the",
             "target is not this host (ARM phone / Jetson), the figure is this host's and only a proxy.", "",
             "Commands (exact, with exit code and wall time):", "", "```"]
    lines += [f"{s['command']}    # exit {s['rc']}, {s['wall_s']}s" for s in log]
    lines += ["```", "", *table(rows), ""]
    for src, res in (("teacher", bt), ("student", bs)):
        for tname, rec in (res.get("recommended") or {}).items():
            if src == "student":
                lines.append(f"- recommended for **{tname}**: " + (f"`{rec['name']}` ({rec['reason']})" if rec else "none"))
        if src == "student" and res.get("int8_vs_onnx_fp32"):
            from edgecv.bench.report import best_int8_text

            lines.append(f"- student: {best_int8_text(res['int8_vs_onnx_fp32'])}")
        for n in res["notes"]:
            lines.append(f"- {src} note: {n}")
    lines += ["", f"Pareto plot: `{(work / 'pareto.png').relative_to(REPO) if work.is_relative_to(REPO) else work / 'pareto.png'}`"
              " (not committed).", END]
    block = "\n".join(lines) + "\n"
    print("\n" + block)
    if not a.no_results:
        text = RESULTS.read_text() if RESULTS.is_file() else "# Results\n"
        if BEGIN in text and END in text:
            pre, rest = text.split(BEGIN, 1)
            text = pre + block.rstrip("\n") + rest.split(END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block
        RESULTS.write_text(text)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
