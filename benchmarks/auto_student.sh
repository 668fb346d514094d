#!/usr/bin/env bash
# Issue 8 acceptance on cifar10-mini: target-aware student choice for x86 (OpenVINO CPU, 1 thread, deploy 224 px),
# then the full compress of the winner with the same epochs as the mobilenet_v3_small run
# (benchmarks/compress_cifar.sh 8 6 3), export for x86 at 224 px and the INT8 artifact's latency.
#
# Usage: benchmarks/auto_student.sh [BUDGET_MS] [TEACHER]
#   SELECT_ONLY=1 benchmarks/auto_student.sh   # only the candidate measurement + probes (prints the table)
# Results: benchmarks/_work/auto_run/run.json (student_selection = the candidate table), auto_run.json,
#          benchmarks/_work/auto_bundle/ and auto_bench.json
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
PY=${PY:-/work/main/.venv/bin/python}
DATA=${DATA:-/root/.cache/edgecv/cifar10-mini}
BUDGET=${1:-1.2}
TEACHER=${2:-/work/main/benchmarks/_work/teacher_r18_64.pt}
EKD=${EKD:-8}; EPR=${EPR:-6}; EQAT=${EQAT:-3}; TARGET_MACS=${TARGET_MACS:-0.5}
PROBE_EPOCHS=${PROBE_EPOCHS:-2}; PROBE_IMAGES=${PROBE_IMAGES:-2000}
OUT=${OUT:-benchmarks/_work/auto_run}
mkdir -p benchmarks/_work
grep -m1 "model name" /proc/cpuinfo; nproc; uptime
COMMON=(--teacher "$TEACHER" --data "$DATA" --student auto --target x86 --budget-ms "$BUDGET" --deploy-size 224
        --probe-epochs "$PROBE_EPOCHS" --probe-images "$PROBE_IMAGES" --img-size 64 --seed 0 --out "$OUT")
if [[ "${SELECT_ONLY:-0}" == 1 ]]; then
  ( time "$PY" -m edgecv compress "${COMMON[@]}" --select-only --json > "$OUT.select.json" ) 2>&1 | grep -v -i warn
  exit 0
fi
# 1-3: measure every candidate FP32/INT8 on OpenVINO at 224 px, drop those over the budget (p90, deploy precision),
# rank the rest by a KD probe, then compress the winner (KD -> prune -> QAT)
( time "$PY" -m edgecv compress "${COMMON[@]}" --epochs-kd "$EKD" --epochs-prune "$EPR" --epochs-qat "$EQAT" \
    --target-macs "$TARGET_MACS" --json > "$OUT.json" ) 2>&1 | grep -v -i warn | tail -40
# export for x86 twice: at the training size (accuracy through the runtimes on the val images) and at the
# deployment size 224 (latency; the 64-px-trained weights upscaled to 224 px are not an accuracy figure)
"$PY" -m edgecv export "$OUT" --target x86 --data "$DATA" --num-val 2000 --out benchmarks/_work/auto_bundle64 --json \
    > benchmarks/_work/auto_export64.json || true
"$PY" -m edgecv export "$OUT" --target x86 --img-size 224 --data "$DATA" --out benchmarks/_work/auto_bundle --json \
    > benchmarks/_work/auto_export.json || true
"$PY" -m edgecv bench benchmarks/_work/auto_bundle --target x86 --threads 1 --min-time 5s --no-accuracy \
    --budget-ms "$BUDGET" --json benchmarks/_work/auto_bench.json || true
"$PY" - <<'PY'
import json
run = json.load(open("benchmarks/_work/auto_run/run.json"))
bench = json.load(open("benchmarks/_work/auto_bench.json"))
exp64 = json.load(open("benchmarks/_work/auto_export64.json"))
print("chosen:", run["student"], "| quantize val top-1: %.2f%%" % run["stages"]["quantize"]["val_top1"],
      "| prune val top-1: %.2f%%" % run["stages"]["prune"]["val_top1"])
for a in exp64["artifacts"]:
    v = a.get("validation") or {}
    print(f"64 px {a['format']}-{a['precision']}: {a['status']}, top-1 {v.get('accuracy')} % "
          f"(torch reference {v.get('reference_accuracy')} %, agreement {v.get('top1_agreement')} %)")
for a in bench["artifacts"]:
    if a["status"] == "ok":
        print(f"224 px {a['name']:16s} p50 {a['primary']['p50_ms']:.3f} ms  p90 {a['primary']['p90_ms']:.3f} ms")
ov8 = next(a for a in bench["artifacts"] if a["name"] == "openvino-int8")
print("openvino-int8 p50 <= 1.2 ms:", ov8["primary"]["p50_ms"] <= 1.2)
PY
