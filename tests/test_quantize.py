"""INT8 QAT on a pruned student: checkpoint round trip (build() recreates it) and deploy form."""

from __future__ import annotations

import torch

from edgecv.compress.prune import prune_to_macs
from edgecv.compress.quantize import (
    QuantConfig,
    calibrate,
    freeze_bn,
    is_qat,
    prepare_qat,
    set_observers,
    to_deploy,
)
from edgecv.data.preprocess import Preprocess
from edgecv.models.checkpoint import load_checkpoint, save_checkpoint
from edgecv.models.registry import count_macs, create_model
from edgecv.models.spec import channel_spec_of


def _qat_pruned(size=32):
    torch.manual_seed(0)
    m = create_model("mobilenet_v3_small", 3)
    prune_to_macs(m, size, 3, int(0.7 * count_macs(m, size)))
    spec = channel_spec_of(m)
    qcfg = QuantConfig(trace_size=size)
    prepare_qat(m, qcfg)
    data = [(torch.randn(8, 3, size, size), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    assert calibrate(m, data) == 16
    # one training step so weights and BN statistics move away from their initial values
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    m(torch.randn(8, 3, size, size)).sum().backward()
    opt.step()
    freeze_bn(m)
    set_observers(m, False)
    return m.eval(), spec, qcfg


def test_qat_checkpoint_reload_identical(tmp_path):
    m, spec, qcfg = _qat_pruned()
    p = save_checkpoint(tmp_path / "quantize.pt", m, "mobilenet_v3_small", ["a", "b", "c"],
                        Preprocess(input_size=32), meta={"channel_spec": spec, "quant": qcfg.to_dict()})
    m2 = load_checkpoint(p).build()
    assert is_qat(m2)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(m(x), m2(x))


def test_deploy_form_matches_qat_model():
    m, _, _ = _qat_pruned()
    d = to_deploy(m)
    x = torch.randn(4, 3, 32, 32)
    ref, out = m(x), d(x)
    # same folded weights and scales; only float summation order differs
    assert (ref.argmax(1) == out.argmax(1)).all()
    assert torch.allclose(ref, out, atol=1e-3 * ref.abs().max().item() + 1e-4)
