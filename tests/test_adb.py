"""Parser of ExecuTorch executor_runner output (the Android --adb path is untested on hardware).

Recorded outputs used below (real runner output, copied verbatim):

* ``_ZEPHYR_DOC``: executor_runner output on an x86 host as recorded in an ExecuTorch + Zephyr/Arm FVP
  tutorial README ("./cmake-out/executor_runner --model_path add.pte" -> "... Model executed successfully 1
  time(s) in 0.691078 ms."), an older runner without per-iteration lines.
* ``_ITER_LOG``: output of the current runner with per-iteration timing, as recorded in a public test suite that
  parses it (lines "Model loaded in 4463.268273 ms.", "Iteration 1 of 1: 241.944288 ms", "Model executed
  successfully 1 time(s) in 241.944288 ms."). The format strings are those of
  pytorch/executorch examples/portable/executor_runner/executor_runner.cpp ("Iteration %u of %u: %f ms",
  "Model loaded in %f ms.") which pytorch/executorch devtools/scripts/benchmark_android.sh (PR #18802) greps from
  ``adb logcat -s ExecuTorch:I``.
* ``_LOGCAT``: the same lines as Android logcat prints them (threadtime prefix, tag ExecuTorch); the prefix is
  the standard logcat format, the messages are the runner's.
"""

from __future__ import annotations

import pytest

from edgecv.targets.android.adb import AdbError, bench_pte, parse_runner_output

_ZEPHYR_DOC = """\
I 00:00:00.003987 executorch:executor_runner.cpp:166] Model file add.pte is loaded.
I 00:00:00.004058 executorch:executor_runner.cpp:175] Using method forward
I 00:00:00.004429 executorch:executor_runner.cpp:226] Setting up planned buffer 0, size 48.
I 00:00:00.005262 executorch:executor_runner.cpp:251] Method loaded.
I 00:00:00.006576 executorch:executor_runner.cpp:284] Model executed successfully 1 time(s) in 0.691078 ms.
I 00:00:00.006604 executorch:executor_runner.cpp:293] 1 outputs:
Output 0: tensor(sizes=[1], [2.])
"""

_ITER_LOG = """\
I 00:00:05.833558 executorch:executor_runner.cpp:564] Model loaded in 4463.268273 ms.
I 00:00:06.075611 executorch:executor_runner.cpp:705] Iteration 1 of 1: 241.944288 ms
I 00:00:06.075701 executorch:executor_runner.cpp:714] Model executed successfully 1 time(s) in 241.944288 ms.
"""

_LOGCAT = """\
--------- beginning of main
11-26 01:02:03.100  4321  4321 I ExecuTorch: Model loaded in 35.214000 ms.
11-26 01:02:03.120  4321  4321 I ExecuTorch: Iteration 1 of 3: 12.500000 ms
11-26 01:02:03.133  4321  4321 I ExecuTorch: Iteration 2 of 3: 12.250000 ms
11-26 01:02:03.146  4321  4321 I ExecuTorch: Iteration 3 of 3: 13.000000 ms
11-26 01:02:03.146  4321  4321 I ExecuTorch: Model executed successfully 3 time(s) in 37.750000 ms.
"""


def test_parse_total_only_output():
    t = parse_runner_output(_ZEPHYR_DOC)
    assert t.iterations_ms == [pytest.approx(0.691078)]
    assert t.executions == 1 and t.total_ms == pytest.approx(0.691078) and t.load_ms is None


def test_parse_per_iteration_output():
    t = parse_runner_output(_ITER_LOG)
    assert t.iterations_ms == [pytest.approx(241.944288)]
    assert t.load_ms == pytest.approx(4463.268273)


def test_parse_logcat_and_dedup_stdout_copy():
    t = parse_runner_output(_LOGCAT + "\n" + _LOGCAT)  # stdout + logcat may both carry the lines
    assert t.iterations_ms == [12.5, 12.25, 13.0]
    assert t.total_ms == pytest.approx(37.75) and t.executions == 3 and t.load_ms == pytest.approx(35.214)


def test_no_timing_is_an_error():
    with pytest.raises(AdbError, match="no timing"):
        parse_runner_output("E executorch:executor_runner.cpp] Execution of method forward failed with status 0x12\n")


def test_bench_pte_without_runner_reports_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGECV_ET_RUNNER", raising=False)
    with pytest.raises(AdbError, match="executor_runner"):
        bench_pte("SERIAL", tmp_path / "m.pte")
