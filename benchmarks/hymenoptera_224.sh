#!/usr/bin/env bash
# Real photos at 224 px, the whole flow (issue 13): teacher -> compress -> export (x86 + android) -> bench on
# hymenoptera val (153 images), every artifact through its runtime. Results: benchmarks/RESULTS.md.
# Usage: benchmarks/hymenoptera_224.sh [DATA] [OUT] [TEACHER]
#   DATA     hymenoptera root (train/ + val/) [~/.cache/edgecv/hymenoptera]
#   OUT      work folder outside the repo [~/.cache/edgecv/runs/hym224]
#   TEACHER  an existing teacher checkpoint at 224 px (else one is trained here: resnet18, 12 epochs)
# Batch 16 everywhere: 245 training images at the default batch of 64 are 3 optimizer steps per epoch (drop_last),
# too few for a from-scratch student to leave the majority class in 10 KD epochs.
set -euo pipefail
DATA=${1:-$HOME/.cache/edgecv/hymenoptera}
OUT=${2:-$HOME/.cache/edgecv/runs/hym224}
TEACHER=${3:-}
EDGECV=${EDGECV:-.venv/bin/edgecv}
mkdir -p "$OUT"
step() { echo "== $1"; s=$(date +%s); }
took() { echo "   ($(( $(date +%s) - s )) s)"; }

if [ -z "$TEACHER" ]; then
  TEACHER=$OUT/teacher.pt
  step "teacher: resnet18 from scratch at 224 px"
  [ -f "$TEACHER" ] || "$EDGECV" train --data "$DATA" --arch resnet18 --img-size 224 --epochs 12 --batch-size 16 \
    --out "$TEACHER" -q
  took
fi
step "compress: KD -> prune -> INT8 QAT at 224 px (default epochs)"
rm -rf "$OUT/run"
"$EDGECV" compress --teacher "$TEACHER" --data "$DATA" --img-size 224 --batch-size 16 --out "$OUT/run" -q --json \
  > "$OUT/compress.json"
took
step "export: x86 + android artifacts, each validated through its runtime"
"$EDGECV" export "$OUT/run" --target x86 --data "$DATA" --out "$OUT/bundle_x86" --force -q --json > "$OUT/export_x86.json" || [ $? -eq 1 ]
"$EDGECV" export "$OUT/run" --target android --data "$DATA" --out "$OUT/bundle_android" --force -q --json > "$OUT/export_android.json" || [ $? -eq 1 ]
took
step "bench: accuracy + latency of every artifact on hymenoptera val"
"$EDGECV" bench "$OUT/bundle_x86" --target x86 --data "$DATA" --include-failed --json "$OUT/bench_x86.json" -q || true
"$EDGECV" bench "$OUT/bundle_android" --target android --data "$DATA" --include-failed --json "$OUT/bench_android.json" -q || true
took
.venv/bin/python - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
run = json.load(open(f"{out}/compress.json"))
st = run["stages"]
print(f"teacher {run['teacher'].get('arch')} {run['teacher'].get('val_top1')}%  "
      + "  ".join(f"{s} {st[s].get('val_top1')}% ({st[s].get('wall_s')} s)" for s in ("distill", "prune", "quantize")))
print(f"QAT weight bits: {st['quantize'].get('quant', {}).get('weight_bits')}")
qat = st["quantize"]["val_top1"]
print("| bundle | artifact | status | top-1 % | balanced acc % | p50 ms (1 thread) | vs QAT model (pt) |")
print("|---|---|---|---|---|---|---|")
for t in ("x86", "android"):
    b = json.load(open(f"{out}/bench_{t}.json"))
    for a in b["artifacts"]:
        acc = a.get("accuracy") or {}
        p = a.get("primary") or {}
        top1 = acc.get("top1")
        d = f"{top1 - qat:+.2f}" if top1 is not None and a["name"].endswith("int8") else ""
        print(f"| {t} | {a['name']} | {a.get('status')} | {top1} | {acc.get('balanced_acc')} | "
              f"{p.get('p50_ms')} | {d} |")
PYEOF
