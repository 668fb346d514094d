"""ExecuTorch INT8 carries the QAT model's quantization: its q/dq graph is written from the QAT deployment form
(:mod:`edgecv.export.pte_qdq`), every quantized op lands in the XNNPACK partition, and the .pte computes what
the QAT model computes."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from edgecv.export import pte, pte_qdq

pytestmark = pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="executorch not installed")
S = 16


class _Net(nn.Module):
    """Every pattern of the QAT students: float stem -> relu6, int8 conv -> relu6 (EfficientNet-Lite: a trained
    output range, then the clamp, then the next input's), int8 conv -> relu (fused), a residual add and a hardswish
    (trained output ranges, float in between), a global pool and float logits."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pwl = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.Conv2d(8, 32, 1), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.pwl(self.dw(self.pw(x)))
        return self.fc(self.pool(self.head(x)).flatten(1))


def _qat_model(relu6_range: bool = False):
    """``relu6_range``: pw also gets a trained output range before its ReLU6, as QAT placed it before December 2026
    (such checkpoints record it in ``meta.quant.output_fq``); today pw takes dw's input scale."""
    from edgecv.quant import QuantConfig, calibrate, prepare_qat

    torch.manual_seed(0)
    m = _Net().eval()
    for mod in m.modules():  # BN statistics away from the identity, so folding matters
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    # today's placement for this net is pwl (read by the add) and head (read by hardswish)
    prepare_qat(m, QuantConfig(trace_size=S, output_fq=["pw.0", "pwl.0", "head.0"] if relu6_range else None))
    calibrate(m, [(torch.randn(16, 3, S, S) * 4, None)])  # large enough for ReLU6 to clamp
    return m.eval()


def test_qdq_graph_writes_the_qat_quantization():
    from edgecv.quant import deploy

    # today's placement: pw takes dw's input scale, so its ReLU6 needs no guard
    cur = pte.int8_qdq_graph(deploy(_qat_model()), S)
    assert cur.edgecv_qdq["requantizing_act_guards"] == 0 and cur.edgecv_qdq["int8_gemms"] == 4
    qat = _qat_model(relu6_range=True)
    gm = pte.int8_qdq_graph(deploy(qat), S)
    qd = torch.ops.quantized_decomposed
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert pte_qdq.FQ_TENSOR not in ops and pte_qdq.FQ_CHANNEL not in ops
    # pw, dw, pwl (trained output range: read by the add) and head (read by hardswish) run int8; the logits stay
    # float (fp32 linear on the QAT-quantized input and weights); the stem is the QAT model's float layer
    assert gm.edgecv_qdq["int8_gemms"] == 4 and gm.edgecv_qdq["fp32_gemms_on_quantized_input"] == 1
    # pw's ReLU6 sits between its trained output range and dw's input range: guarded so XNNPACK keeps both roundings
    assert gm.edgecv_qdq["requantizing_act_guards"] == 1 and ops.count(torch.ops.aten.maximum.default) == 1
    assert ops.count(qd.dequantize_per_channel.default) == 4
    int8 = [b for n, b in gm.named_buffers() if n.startswith("_qat_weight_int8_")]
    assert len(int8) == 4 and all(b.dtype == torch.int8 and b.abs().max() == 127 for b in int8)
    x = torch.randn(8, 3, S, S) * 4
    with torch.no_grad():
        ref, got = qat(x), torch.cat([gm(x[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(got, ref, atol=1e-5)  # the same numbers, before any runtime


def test_pte_int8_computes_the_qat_model_inside_xnnpack(tmp_path):
    from edgecv.quant import deploy
    from edgecv.runtimes.pte import PteRunner

    qat = _qat_model()
    path = tmp_path / "m.pte"
    info = pte.export_int8(deploy(qat), path, S)
    assert info["xnnpack_partitions"] == 1, info
    assert not any("quant" in k or "conv" in k or "linear" in k for k in info["ops_outside_delegate"]), info
    assert info["float_modules"] == ["stem.0"]
    x = np.random.default_rng(0).standard_normal((64, 3, S, S)).astype(np.float32) * 4
    with torch.no_grad():
        ref = qat(torch.from_numpy(x)).numpy()
    out = PteRunner(path).predict(x)
    # the same numbers (measured: max |dlogit| 7e-8; without the ReLU6 guard 48 % of the logits were > 1e-3 off)
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert np.abs(out - ref).max() < 1e-4, np.abs(out - ref).max()


@pytest.mark.slow
def test_android_pte_int8_from_a_qat_checkpoint_validates_against_the_qat_model(tmp_path):
    """`edgecv export --target android` of a small trained QAT checkpoint: pte-int8 is validated against the QAT
    model (not a re-quantization of it) at >= 99 % top-1 agreement, every quantized op inside the XNNPACK
    partition."""
    from edgecv.contracts.manifest import load_manifest
    from edgecv.export.bundle import ExportOptions, export_bundle
    from edgecv.export.validate import REF_QAT

    from .test_export_bundle import _make_checkpoints

    torch.set_num_threads(1)
    ck = _make_checkpoints(tmp_path / "src")
    res = export_bundle(ck["qat"], tmp_path / "b", ExportOptions(target="android", precisions=("int8",),
                                                                 data=str(ck["data"]), num_val=24, num_calib=24))
    a = next(a for a in load_manifest(tmp_path / "b").artifacts if (a.format, a.precision) == ("pte", "int8"))
    assert res.failed == [] and a.status == "ok", a.error
    v = a.validation
    assert v["reference"] == REF_QAT and v["n"] == 24 and v["top1_agreement"] >= 99.0, v
    assert v["max_abs_logit_diff"] < 0.05, v
    k = a.extra["int8_kernels"]
    assert k["int8_kernels"] and k["xnnpack_partitions"] == 1 and k["quantized_ops_outside_delegate"] == {}, k
    assert k["int8_gemms"] > 0 and a.extra["qdq_nodes"]["activation_qdq"] > 0
    assert not any("conv" in op or "linear" in op for op in a.extra["ops_outside_delegate"]), a.extra


def _fidelity_probe():
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import int8_fidelity

    return int8_fidelity


@pytest.mark.slow
@pytest.mark.parametrize("guarded", [True, False])
def test_cut_probe_tells_rounding_ties_from_a_fused_rounding(tmp_path, monkeypatch, guarded):
    """``benchmarks/int8_fidelity.py --cuts``: guarded, pte-int8 cut at every dequantize computes the .pte's own
    numbers and each int8 value equals the QAT model's or differs at a rounding tie. Without the ReLU6 guard (a
    checkpoint whose pw has a trained range before its ReLU6), XNNPACK folds the clamp into pw and skips a rounding;
    observing pw's output prevents that fold, so the probe reports that the cut .pte no longer computes the .pte's
    numbers: a fusion across a cut, not a per-layer difference."""
    from edgecv.quant import deploy

    fid = _fidelity_probe()
    if not guarded:
        monkeypatch.setattr(pte_qdq, "_guard_requantizing_acts", lambda gm: 0)
    qat = _qat_model(relu6_range=True)
    path = tmp_path / "m.pte"
    pte.export_int8(deploy(qat), path, S)
    x = np.random.default_rng(0).standard_normal((4, 3, S, S)).astype(np.float32) * 4
    rep = fid.cut_report(qat, S, x, path)
    assert rep["xnnpack"]["xnnpack_partitions"] == 1
    # stem, pw, dw's input, dw, pwl, the add, head, the pooled features
    assert [r["after"].split(".")[0] for r in rep["quantizers"]] == [
        "hardtanh", "conv2d", "hardtanh", "relu", "conv2d", "add", "conv2d", "flatten"], rep["quantizers"]
    if guarded:
        assert rep["cut_pte_vs_bundle_pte_max_abs_dlogit"] == 0.0, rep
        assert rep["max_lsb_from_boundary"] is None or rep["max_lsb_from_boundary"] < 1e-3, rep
    else:
        assert rep["cut_pte_vs_bundle_pte_max_abs_dlogit"] > 1e-4, rep
    with torch.no_grad():
        ref = qat(torch.from_numpy(x)).numpy()
    f64 = fid._float64_logits(fid._batchable(pte.int8_qdq_graph(deploy(qat), S)), x)
    assert np.abs(f64 - ref).max() < 1e-3  # the q/dq graph in float64: the QAT model without its fp32 rounding
