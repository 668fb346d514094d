#!/usr/bin/env python
"""The ImageNet start (issue 24): how a user begins, from real ImageNet weights, measured end to end.

    .venv/bin/python benchmarks/imagenet_weights.py --install        # once: the weights (tests/benchmarks only)
    flock /tmp/edgecv-heavy.lock .venv/bin/python benchmarks/imagenet_start.py teacher \
        --data ~/.cache/edgecv/hymenoptera --size 224 --epochs 6 [--seeds 0,1] [--policies auto,none,...]
    flock /tmp/edgecv-heavy.lock .venv/bin/python benchmarks/imagenet_start.py compress \
        --data ~/.cache/edgecv/hymenoptera --teacher OUT/teacher-auto-s0.pt [--seed 0] [-- EXTRA COMPRESS FLAGS]

Everything goes through the real CLI (``python -m edgecv ... --json``), with EfficientNet-Lite0's ImageNet weights
from ``benchmarks/imagenet_weights.py`` (``$EDGECV_CACHE/weights/efficientnet_lite0_imagenet.pt``):

- ``teacher``: ``edgecv train --arch efficientnet_lite0 --init-weights W`` once per fine-tune policy (``--freeze``
  and ``--backbone-lr-scale``; ``auto`` = no flag, the default) and seed, then ``edgecv eval`` on val. Prints one
  markdown table: val top-1 and balanced accuracy per policy (mean of the seeds), trainable params, wall time.
- ``compress``: ``edgecv compress --teacher T --student efficientnet_lite0 --student-init-weights W`` (every other
  flag at its default unless given after ``--``), ``edgecv export --target all`` and ``edgecv bench`` on val.
  Prints every stage's val top-1 (the distilled, pruned and QAT student), the MAC fraction, and every exported
  artifact's top-1 with its validation agreement, next to the teacher's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _cli import edgecv  # benchmarks/_cli.py (the script's folder is on sys.path)
from imagenet_weights import default_out

from edgecv.utils import cache_dir

CACHE = cache_dir()
WEIGHTS = default_out()  # benchmarks/imagenet_weights.py writes it there
ARCH = "efficientnet_lite0"


def host() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")), "?")
    isa = [f for f in ("avx512_vnni", "avx512_bf16", "amx_int8") if f" {f}" in flags]
    return f"{model} ({os.cpu_count()} cores; {', '.join(isa) or 'AVX2 only'})"


def policy_flags(policy: str) -> list[str]:
    """``auto`` -> no flag; ``none@1`` -> ``--freeze none --backbone-lr-scale 1``."""
    freeze, _, scale = policy.partition("@")
    flags = [] if freeze == "auto" else ["--freeze", freeze]
    return flags + (["--backbone-lr-scale", scale] if scale else [])


def mean(v: list[float]) -> float:
    return sum(v) / len(v) if v else float("nan")


def teacher(a) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for policy in a.policies.split(","):
        row = {"policy": policy, "top1": [], "balanced": [], "wall_s": [], "best_epoch": []}
        for seed in seeds:
            ck = out / f"teacher-{policy.replace(':', '_').replace('@', '-lr')}-s{seed}.pt"
            r = edgecv("train", "--data", a.data, "--arch", ARCH, "--init-weights", str(a.weights), "--img-size",
                       str(a.size), "--epochs", str(a.epochs), "--seed", str(seed), *policy_flags(policy),
                       "--out", str(ck))
            ev = edgecv("eval", str(ck), "--data", a.data)
            ft = r.get("finetune") or {}
            row["top1"].append(ev["top1"])
            row["balanced"].append(ev.get("balanced_acc"))
            row["wall_s"].append(r["wall_s"])
            row["best_epoch"].append(r["best_epoch"])
            row["resolved"], row["lr_scale"] = ft.get("resolved"), ft.get("backbone_lr_scale")
            row["trainable"] = ft.get("trainable_params")
            print(f"{policy} seed {seed}: top-1 {ev['top1']:.2f} ({ft.get('resolved')})", file=sys.stderr)
        rows.append(row)
    print(f"\nteacher {ARCH} from ImageNet weights on {a.data} at {a.size} px, {a.epochs} epochs, seeds {a.seeds}; "
          f"{host()}\n")
    print("| policy | resolved freeze | backbone lr x | trainable params | val top-1 % (mean) | per seed | "
          "balanced acc % (mean) | best epoch | train s (mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        bal = [b for b in r["balanced"] if b is not None]
        print(f"| {r['policy']} | {r['resolved']} | {r['lr_scale']:g} | {r['trainable']:,} | {mean(r['top1']):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in r['top1'])} | {mean(bal):.2f} | "
              f"{', '.join(map(str, r['best_epoch']))} | {mean(r['wall_s']):.0f} |")
    (out / "teacher.json").write_text(json.dumps({"args": vars(a), "host": host(), "rows": rows}, indent=1))


def _run(cmd: list[str]) -> int:
    return subprocess.run([sys.executable, "-m", "edgecv", *cmd], capture_output=True, text=True).returncode


def compress(a) -> None:
    out = Path(a.out) / f"compress-s{a.seed}{a.tag}"
    t0 = time.perf_counter()
    resume = ["--resume"] if (out / "run" / "run.json").exists() else []
    edgecv("compress", "--teacher", a.teacher, "--data", a.data, "--student", ARCH,
           "--student-init-weights", str(a.weights), "--seed", str(a.seed), "--out", str(out / "run"),
           *resume, *a.extra)
    wall = time.perf_counter() - t0
    rc = _run(["export", str(out / "run"), "--target", "all", "--data", a.data, "--out", str(out / "bundle"),
               "--force", "--quiet"])
    rc_b = _run(["bench", str(out / "bundle"), "--data", a.data, "--include-failed", "--quiet",
                 "--json", str(out / "bench.json")])
    (out / "summary.json").write_text(json.dumps({"args": vars(a), "host": host(), "wall_s": wall,
                                                  "export_rc": rc, "bench_rc": rc_b}, indent=1))
    report(out)


def report(out: Path) -> None:
    """The tables of one ``compress`` folder (run.json, the bundle's manifest, bench.json)."""
    out = Path(out)
    summ = json.loads((out / "summary.json").read_text())
    run = json.loads((out / "run" / "run.json").read_text())
    man = json.loads((out / "bundle" / "manifest.json").read_text())
    bench = json.loads((out / "bench.json").read_text()) if (out / "bench.json").exists() else {"artifacts": []}
    st, a = run["stages"], summ["args"]
    print(f"\n{ARCH} student from ImageNet weights, teacher {a['teacher']} (val top-1 "
          f"{run['teacher'].get('val_top1'):.2f}), {a['data']}, seed {a['seed']}, extra flags {a['extra'] or 'none'}; "
          f"compress wall {summ['wall_s']:.0f} s; export rc {summ['export_rc']}, bench rc {summ['bench_rc']}; "
          f"{summ['host']}\n")
    print("| stage | val top-1 % | balanced % | MACs (fraction of the unpruned student) |")
    print("|---|---|---|---|")
    full = st.get("distill", {}).get("macs") or 1
    for s in ("distill", "prune", "quantize"):
        d = st.get(s, {})
        print(f"| {s} | {d.get('val_top1', float('nan')):.2f} | {d.get('val_balanced_acc') or float('nan'):.2f} | "
              f"{d.get('macs', 0):,} ({d.get('macs', 0) / full:.3f}) |")
    for r in st.get("prune", {}).get("rounds", []):
        repair = (f"{r['reconstructed_layers']} layers refitted" if "reconstructed_layers" in r else
                  "BatchNorm re-estimated" if "bn_images" in r else "not repaired")
        print(f"- prune round {r['round']}: cut {r.get('top1_after_cut', float('nan')):.2f}, {repair} "
              f"{r.get('top1_after_prune'):.2f}, after {r.get('finetune_epochs')} fine-tune epoch(s) "
              f"{r.get('top1_after_finetune'):.2f}")
    print("\n| artifact | export validation | agreement with its reference % | bench val top-1 % | p50 ms |")
    print("|---|---|---|---|---|")
    rows = {r["name"]: r for r in bench["artifacts"]}
    for e in man.get("artifacts", []):
        name = f"{e['format']}-{e['precision']}"
        b, v = rows.get(name, {}), e.get("validation") or {}
        top1, p50 = (b.get("accuracy") or {}).get("top1"), (b.get("primary") or {}).get("p50_ms")
        print(f"| {name} | {e.get('status')} | {v.get('top1_agreement', '-')} | "
              f"{'-' if top1 is None else f'{top1:.2f}'} | {'-' if p50 is None else f'{p50:.2f}'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="phase", required=True)
    sub.add_parser("report").add_argument("dir", help="a compress-s<seed><tag> folder of this script")
    for name in ("teacher", "compress"):
        p = sub.add_parser(name)
        p.add_argument("--data", default=str(CACHE / "hymenoptera"))
        p.add_argument("--weights", default=str(WEIGHTS))
        p.add_argument("--out", default=str(CACHE / "runs" / "imagenet_start"))
    t = sub.choices["teacher"]
    t.add_argument("--size", type=int, default=224)
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--seeds", default="0")
    t.add_argument("--policies", default="auto,none,none@1,until:blocks.5",
                   help="comma-separated --freeze values, '@X' adds --backbone-lr-scale X; auto = no flag")
    c = sub.choices["compress"]
    c.add_argument("--teacher", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tag", default="", help="suffix of the output folder (e.g. for a variant's extra flags)")
    c.add_argument("extra", nargs="*", help="extra edgecv compress flags (after --)")
    a = ap.parse_args()
    if a.phase == "report":
        return report(Path(a.dir))
    if not Path(a.weights).is_file():
        raise SystemExit(f"error: {a.weights} missing: run benchmarks/imagenet_weights.py --install first")
    {"teacher": teacher, "compress": compress}[a.phase](a)


if __name__ == "__main__":
    print(f"{platform.python_version()} {' '.join(sys.argv)}", file=sys.stderr)
    main()
