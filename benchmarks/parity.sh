#!/usr/bin/env bash
# Same seeded teacher -> compress -> export -> bench on cifar10-mini, for before/after comparisons of a refactor
# (issue 15). Usage: benchmarks/parity.sh OUT_DIR [DATA]   (PYTHONPATH selects the checkout under test)
# Short epochs and 32 px so it runs in minutes on 2 cores; every step is seeded (seed 0).
set -euo pipefail
OUT=${1:?usage: parity.sh OUT_DIR [DATA]}
DATA=${2:-$HOME/.cache/edgecv/cifar10-mini}
PY=${PYTHON:-python}
mkdir -p "$OUT"
t0=$(date +%s)
$PY -m edgecv train --data "$DATA" --arch resnet18 --img-size 32 --epochs 2 --workers 0 --out "$OUT/teacher.pt" --json --quiet > "$OUT/train.json"
$PY -m edgecv compress --teacher "$OUT/teacher.pt" --data "$DATA" --img-size 32 --epochs-kd 2 --epochs-prune 2 \
    --prune-steps 2 --epochs-qat 1 --workers 0 --out "$OUT/run" --json --quiet > "$OUT/compress.json"
# exit 1 = an artifact failed its validation (recorded in export.json, still compared)
$PY -m edgecv export "$OUT/run" --target x86 --data "$DATA" --num-val 1000 --out "$OUT/bundle" --json --quiet \
    > "$OUT/export.json" || [ $? -eq 1 ]
$PY -m edgecv bench "$OUT/bundle" --target x86 --data "$DATA" --threads 1 --batch 1 --min-time 2s --rounds 3 \
    --include-failed --json "$OUT/bench.json" --quiet > /dev/null
echo "parity run done in $(( $(date +%s) - t0 )) s: $OUT"
