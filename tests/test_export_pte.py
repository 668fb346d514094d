"""ExecuTorch INT8 reference fidelity: the PT2E reference must compute XNNPACK's exact integer mean."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from edgecv.export import pte


def test_exact_qmean_rounds_ties_half_even_on_q_with_zero_point():
    scale, zp = 0.05, -119  # odd zero point: ties on q and on q - zp round in opposite directions
    q = torch.tensor([[-119] * 7 + [-118] * 9, [-110] * 8 + [-109] * 8], dtype=torch.float32)  # means -118.4375, -109.5
    x = ((q - zp) * scale).reshape(1, 2, 4, 4)
    y = pte._exact_qmean(x, scale, zp)
    qy = torch.clamp(torch.round(y * (1.0 / scale)) + zp, -128, 127)  # quantize_per_tensor's formula
    assert qy.flatten().tolist() == [-118.0, -110.0]  # -109.5 -> -110 (even); on q - zp: 9.5 -> 10 -> -109


class _Pool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.act = nn.Hardswish()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.act(self.conv(x)))


@pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="executorch not installed")
def test_pte_int8_global_pool_matches_reference_exactly(tmp_path):
    from edgecv.runtimes.pte import PteRunner

    torch.manual_seed(0)
    model = _Pool().eval()
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((8, 3, 8, 8)).astype(np.float32)]
    x = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    converted, _ = pte.pt2e_int8(model, 8, calib, [])
    path = tmp_path / "pool.pte"
    info = pte.lower_int8(converted, path, 8, 8)
    assert info["xnnpack_partitions"] >= 1
    out = PteRunner(path).predict(x).reshape(len(x), -1)
    ref = pte.pt2e_logits(converted, x).reshape(len(x), -1)
    # 4x4 pool: ~1 in 16 means is a .5 tie; the plain fp32 reference rounds those at random
    assert np.abs(out - ref).max() < 1e-5
