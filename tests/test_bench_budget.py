"""Budget sources, verdicts and host-proxy labelling."""

from __future__ import annotations

import platform

from edgecv.targets import get_target
from edgecv.targets.budget import Budget, budget_from, on_target_hardware, profile_for_artifact, verdict


def test_budget_from_targets_and_cli_override():
    a = budget_from(get_target("android"))
    assert (a.metric, a.limit, a.source) == ("p90_ms", 85.0, "target:android")
    j = budget_from(get_target("jetson"))
    assert (j.metric, j.limit) == ("fps", 120.0)
    assert budget_from(get_target("x86")) is None  # configurable only
    assert budget_from(get_target("x86"), budget_ms=5).to_dict() == {
        "metric": "p90_ms", "limit": 5.0, "source": "cli", "hardware": "x86-64 CPU"}
    assert budget_from(get_target("android"), budget_fps=30).metric == "fps"
    assert budget_from(None) is None


def test_verdict_pass_fail_and_proxy_label():
    b = Budget("p90_ms", 85.0, "target:android", "arm64 Android CPU")
    v = verdict(b, p90_ms=40.0, fps=30.0, host_proxy=True)
    assert (v.verdict, v.label, v.value, v.passed) == ("pass", "pass (host proxy)", 40.0, True)
    v = verdict(b, p90_ms=90.0, fps=11.0, host_proxy=True)
    assert (v.verdict, v.label, v.passed) == ("fail", "fail (host proxy)", False)
    v = verdict(b, p90_ms=85.0, fps=11.0, host_proxy=False)
    assert v.label == "pass"  # on-target figure: no proxy label
    f = Budget("fps", 120.0, "target:jetson", "NVIDIA Jetson GPU")
    assert verdict(f, p90_ms=10.0, fps=119.0, host_proxy=True).label == "fail (host proxy)"
    assert verdict(f, p90_ms=5.0, fps=200.0, host_proxy=False).label == "pass"
    n = verdict(None, 1.0, 1.0, host_proxy=False)
    assert (n.verdict, n.label, n.passed) == ("none", "no budget", None)


def test_on_target_hardware_never_claims_arm_or_jetson_on_this_host():
    assert on_target_hardware(get_target("android"), "cpu") is False
    assert on_target_hardware(get_target("android"), "adb:SERIAL", on_device=True) is True
    assert on_target_hardware(get_target("jetson"), "cuda:0") is (
        platform.machine() == "aarch64" and __import__("os").path.exists("/etc/nv_tegra_release"))
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert on_target_hardware(get_target("x86"), "cpu") is x86
    assert on_target_hardware(None, "cpu") is True


def test_profile_for_artifact_under_all():
    allp = get_target("all")
    assert profile_for_artifact("pte", "int8", "executorch", allp).name == "android"
    assert profile_for_artifact("tensorrt", "fp16", "tensorrt", allp).name == "jetson"
    assert profile_for_artifact("openvino", "int8", "openvino", allp).name == "x86"
    assert profile_for_artifact("onnx", "fp16", "onnxruntime", allp).name == "jetson"
    assert profile_for_artifact("ptl", "fp32", "ptl", allp).name == "android"
    assert profile_for_artifact("onnx", "fp32", "onnxruntime", get_target("android")).name == "android"
