#!/usr/bin/env bash
# The main job on the built-in default dataset (digits), end to end: compress -> export for this host -> bench
# (budget verdicts, recommended artifact) -> edgecv predict on a few images. `make demo` runs this.
# Usage: scripts/demo.sh [EDGECV] [OUT]     (EDGECV: the edgecv executable, OUT: the demo folder)
set -euo pipefail
EDGECV=${1:-edgecv}
OUT=${2:-runs/demo}
PY=$(dirname "$(command -v "$EDGECV")")/python
t0=$(date +%s)

echo "== 1/4 compress: teacher (trained on the fly, cached) -> KD -> pruning -> INT8 QAT"
resume=()
[ -f "$OUT/run/run.json" ] && resume=(--resume)  # a second `make demo` reuses the finished stages
"$EDGECV" compress --data digits --out "$OUT/run" "${resume[@]}"

echo "== 2/4 export for this host (x86: ONNX fp32/fp16/INT8, OpenVINO fp32/INT8), each validated"
# exit 1 = an artifact failed its validation: it is marked in the manifest and bench leaves it out
"$EDGECV" export "$OUT/run" --target x86 --data digits --out "$OUT/bundle" --force || [ $? -eq 1 ]

echo "== 3/4 bench: every artifact through its runtime, budget verdicts, the recommended artifact"
"$EDGECV" bench "$OUT/bundle" --target x86 --data digits --json "$OUT/bench.json" --markdown "$OUT/bench.md"

echo "== 4/4 predict: a few images with the recommended artifact"
"$PY" - "$OUT/samples" <<'PYEOF'
import sys
from pathlib import Path
from edgecv.data.datasets import load_train_val
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
val = load_train_val("digits").val
for i in range(0, 40, 5):
    val.load_image(i).resize((64, 64)).save(out / f"{i:03d}_true_{val.samples[i][1]}.png")
PYEOF
"$EDGECV" predict "$OUT/bundle" "$OUT/samples" --bench-json "$OUT/bench.json" --topk 3

"$PY" - "$OUT" "$(( $(date +%s) - t0 ))" <<'PYEOF'
import json, sys
out, wall = sys.argv[1], sys.argv[2]
b = json.load(open(f"{out}/bench.json"))
rec = next((r for r in b["recommended"].values() if r), None)
print()
print(f"bundle:  {out}/bundle  (manifest.json, sha256 of every artifact; report {out}/bench.md; {wall} s in all)")
if rec is None:
    print("deploy:  no artifact passed the budget on this host (see the bench table above)")
else:
    a = next(a for a in b["artifacts"] if a["name"] == rec["name"])
    p, acc = a["primary"], (a.get("accuracy") or {}).get("top1")
    print(f"deploy:  {rec['name']} ({a['runtime']}): {rec['reason']}")
    print(f"measured: p50 {p['p50_ms']:.3f} ms, p90 {p['p90_ms']:.3f} ms at batch 1, "
          f"top-1 {acc:.2f}% on digits val ({a['measured_on']})")
PYEOF
