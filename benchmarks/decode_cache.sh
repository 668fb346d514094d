#!/usr/bin/env bash
# Epoch time with and without the decode cache, through the real `edgecv train`, back to back, same seed.
#   [IMG=128] flock /tmp/edgecv-heavy.lock bash benchmarks/decode_cache.sh [DATA] [ARCH] [EPOCHS] [WORKERS...]
# The cache lives in a fresh EDGECV_CACHE (a temp dir), so the first cached run includes the one-time build.
set -euo pipefail
DATA=${1:-$HOME/.cache/edgecv/hymenoptera}
ARCH=${2:-mobilenet_v3_small}
EPOCHS=${3:-4}
shift $(( $# < 3 ? $# : 3 ))
WORKERS=("${@:-0}")
PY=${PY:-.venv/bin/python}
IMG=${IMG:-128}
OUT=$(mktemp -d /tmp/edgecv-decode-cache.XXXXXX)
export EDGECV_CACHE=$OUT/cache
for w in "${WORKERS[@]}"; do
  for mode in off auto; do
    $PY -m edgecv train --data "$DATA" --arch "$ARCH" --img-size "$IMG" --epochs "$EPOCHS" --batch-size 32 --seed 0 \
      --workers "$w" --decode-cache "$mode" --quiet --json --out "$OUT/$mode-w$w.pt" > "$OUT/$mode-w$w.json"
  done
done
$PY - "$OUT" "$ARCH $IMG px" "${WORKERS[@]}" <<'EOF'
import json, sys
out, arch, workers = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"| {arch} | workers | epoch_s per epoch | mean epoch_s | build_s | total_s (epochs + build) "
      "| best val top-1 | last val top-1 | cache MB |\n|---|---|---|---|---|---|---|---|---|")
for w in workers:
    means = {}
    for mode in ("off", "auto"):
        r = json.load(open(f"{out}/{mode}-w{w}.json"))
        ep = [h["epoch_s"] for h in r["history"]]
        dc = r.get("decode_cache") or {}
        b = dc.get("build_s", 0.0)
        means[mode] = sum(ep) / len(ep)
        print(f"| cache {mode} | {w} | {', '.join(f'{e:.2f}' for e in ep)} | {means[mode]:.2f} | {b:.2f} | "
              f"{sum(ep) + b:.2f} | {r['best_val_top1']:.2f} | {r['last_val_top1']:.2f} | "
              f"{dc.get('bytes', 0) / 1e6 if dc.get('used') else 0:.1f} |")
    print(f"| ratio auto/off (mean epoch) | {w} | | {means['auto'] / means['off']:.2f} | | | | | |")
EOF
