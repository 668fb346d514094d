#!/usr/bin/env bash
# Issue 3 acceptance on cifar10-mini (64 px): no-KD baseline, then the full compress pipeline with the same
# KD epochs. Usage: benchmarks/compress_cifar.sh [TEACHER] [EPOCHS_KD] [EPOCHS_PRUNE] [EPOCHS_QAT]
# Results: benchmarks/_work/cifar_run/run.json (the export helper's input) and benchmarks/_work/nokd_*.json
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
PY=${PY:-/work/main/.venv/bin/python}
DATA=${DATA:-/root/.cache/edgecv/cifar10-mini}
TEACHER=${1:-/work/main/benchmarks/_work/teacher_r18_64.pt}
EKD=${2:-4}; EPR=${3:-4}; EQAT=${4:-2}
mkdir -p benchmarks/_work
grep -m1 "model name" /proc/cpuinfo; nproc; uptime
( time "$PY" -m edgecv train --data "$DATA" --arch mobilenet_v3_small --img-size 64 --epochs "$EKD" --seed 0 \
    --out "benchmarks/_work/nokd_mnv3s_64_e$EKD.pt" --json > "benchmarks/_work/nokd_e$EKD.json" ) 2>&1 | tail -5
( time "$PY" -m edgecv compress --teacher "$TEACHER" --data "$DATA" --student mobilenet_v3_small --img-size 64 \
    --epochs-kd "$EKD" --epochs-prune "$EPR" --epochs-qat "$EQAT" --target-macs 0.5 --seed 0 \
    --out benchmarks/_work/cifar_run --json > benchmarks/_work/cifar_run.json ) 2>&1 | tail -20
