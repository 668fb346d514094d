"""Run an ExecuTorch ``.pte`` on an Android phone over adb and parse the runner's timings.

UNTESTED ON HARDWARE: no Android device was reachable where this was written. The parser is tested against
the runner's real log format (see tests/test_adb.py); the adb sequence mirrors ExecuTorch's own
``devtools/scripts/benchmark_android.sh`` (push runner + model to ``/data/local/tmp``, run
``executor_runner --model_path=... --num_executions=N --cpu_threads=T --print_output=none``, read the
``ExecuTorch`` logcat tag, where ``ET_LOG`` goes on Android).

The runner binary is ExecuTorch's ``executor_runner`` cross-compiled for arm64-v8a with XNNPACK
(``-DEXECUTORCH_BUILD_EXECUTOR_RUNNER=ON -DEXECUTORCH_BUILD_XNNPACK=ON --preset android-arm64-v8a``); pass it
with ``--adb-runner PATH`` or ``EDGECV_ET_RUNNER``. It logs, per execution::

    Iteration 3 of 50: 12.345678 ms
    Model executed successfully 50 time(s) in 617.283900 ms.
    Model loaded in 35.100000 ms.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEVICE_DIR = "/data/local/tmp/edgecv_bench"
ITER_RE = re.compile(r"Iteration\s+(\d+)\s+of\s+(\d+):\s+([0-9.]+)\s*ms")
TOTAL_RE = re.compile(r"Model executed successfully\s+(\d+)\s+time\(s\)\s+in\s+([0-9.]+)\s*ms")
LOAD_RE = re.compile(r"Model loaded in\s+([0-9.]+)\s*ms")


class AdbError(Exception):
    """adb / the device / the runner failed; ``str(e)`` is the reason (bench reports it as skipped)."""


@dataclass
class RunnerTimings:
    iterations_ms: list[float]
    total_ms: float | None
    executions: int | None
    load_ms: float | None
    device_model: str = "unknown model"


def parse_runner_output(text: str) -> RunnerTimings:
    """Per-iteration times from ``executor_runner`` output (stdout or logcat, any line prefix).

    Older runners only print the total ("Model executed successfully N time(s) in T ms."): then every iteration
    is reported as the mean T/N (no percentiles possible; p50 = p90 = mean).
    """
    iters: dict[int, float] = {}
    for m in ITER_RE.finditer(text):
        iters[int(m.group(1))] = float(m.group(3))  # logcat may repeat a line; the index dedups
    tot = list(TOTAL_RE.finditer(text))
    total_ms = float(tot[-1].group(2)) if tot else None
    n = int(tot[-1].group(1)) if tot else None
    load = list(LOAD_RE.finditer(text))
    load_ms = float(load[-1].group(1)) if load else None
    if iters:
        times = [iters[k] for k in sorted(iters)]
    elif total_ms is not None and n:
        times = [total_ms / n] * n
    else:
        raise AdbError("no timing in the runner output (did it crash? see `adb logcat -s ExecuTorch`)")
    return RunnerTimings(times, total_ms, n, load_ms)


def _adb(serial: str, *args: str, timeout: float = 600) -> str:
    exe = shutil.which("adb")
    if exe is None:
        raise AdbError("adb not found on PATH (install Android platform-tools)")
    try:
        p = subprocess.run([exe, "-s", serial, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AdbError(f"adb {' '.join(args[:2])} timed out after {timeout:.0f}s") from None
    if p.returncode != 0:
        raise AdbError(f"adb {' '.join(args[:2])} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-300:]}")
    return p.stdout


def bench_pte(serial: str, pte: Path, runner: str | None = None, threads: int = 4, warmup: int = 3,
              iterations: int = 50, log: Callable[[str], None] = lambda m: None) -> RunnerTimings:
    """Push ``runner`` and ``pte`` to device ``serial``, run warm-up + timed executions, return timings."""
    runner = runner or os.environ.get("EDGECV_ET_RUNNER")
    if not runner or not Path(runner).is_file():
        raise AdbError("no ExecuTorch executor_runner binary for Android: pass --adb-runner PATH "
                       "(or set EDGECV_ET_RUNNER)")
    state = _adb(serial, "get-state", timeout=30).strip()
    if state != "device":
        raise AdbError(f"device {serial} is '{state}', not ready")
    model = _adb(serial, "shell", "getprop", "ro.product.model", timeout=30).strip() or "unknown model"
    rbin = f"{DEVICE_DIR}/{Path(runner).name}"
    rpte = f"{DEVICE_DIR}/{Path(pte).name}"
    _adb(serial, "shell", "mkdir", "-p", DEVICE_DIR, timeout=30)
    log(f"adb {serial}: pushing {Path(runner).name} and {Path(pte).name}")
    _adb(serial, "push", str(runner), rbin)
    _adb(serial, "push", str(pte), rpte)
    _adb(serial, "shell", "chmod", "+x", rbin, timeout=30)
    base = [rbin, f"--model_path={rpte}", f"--cpu_threads={int(threads)}", "--print_output=none"]
    try:
        if warmup > 0:
            _adb(serial, "shell", *base, f"--num_executions={int(warmup)}")
        _adb(serial, "logcat", "-c", timeout=30)
        out = _adb(serial, "shell", *base, f"--num_executions={int(iterations)}")
        logcat = _adb(serial, "logcat", "-d", "-s", "ExecuTorch:I", timeout=60)
    finally:
        try:
            _adb(serial, "shell", "rm", "-f", rpte, timeout=30)
        except AdbError:
            pass
    t = parse_runner_output(out + "\n" + logcat)
    t.device_model = model
    return t
