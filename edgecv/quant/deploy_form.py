"""The deploy form of a QAT model: BN folded, constant Q/DQ parameters (``conv(fq(x), fq(W), b)``), the model
``torch.onnx.export`` writes as QuantizeLinear/DequantizeLinear pairs and every INT8 exporter starts from."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgecv.quant.modules import QConvBn2d, QLinear, set_module
from edgecv.quant.scheme import QMAX, QMIN, ActFakeQuant, fake_quant_bias, weight_scale


class DeployBase(nn.Module):
    """Constant Q/DQ parameters: activation scale as a Python float, weight scales precomputed."""

    def _init_q(self, act_fq: ActFakeQuant, weight: torch.Tensor, w_enabled: bool, w_qmax: int) -> None:
        self.act_enabled = bool(act_fq.fake_quant.item() and act_fq.initialized.item())
        self.act_scale = float(act_fq.scale.item())
        self.w_enabled = bool(w_enabled)
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("w_scale", weight_scale(weight, w_qmax))
        self.register_buffer("w_zp", torch.zeros(weight.shape[0], dtype=torch.int32))

    def _bias_q(self, b: torch.Tensor | None) -> torch.Tensor | None:
        """Float bias holding the int32-quantized values (quantize_bias then recovers the same integers)."""
        if b is None:
            return None
        b = b.detach().clone()
        if self.act_enabled and self.w_enabled:
            b = fake_quant_bias(b, self.act_scale, self.w_scale)
        return b

    def _q_act(self, x):
        if self.act_enabled:
            x = torch.fake_quantize_per_tensor_affine(x, self.act_scale, 0, QMIN, QMAX)
        return x

    def _q_weight(self):
        if self.w_enabled:
            # scale = amax/qmax keeps every weight in [-qmax, qmax] (127, or 63 for 7-bit weights); ONNX only
            # accepts the (-128, 127) range spec
            return torch.fake_quantize_per_channel_affine(self.weight, self.w_scale, self.w_zp, 0, QMIN, QMAX)
        return self.weight


class DeployQConv(DeployBase):
    """``conv(fq(x), fq(W), b)`` with folded, constant tensors: exported as Q/DQ + Conv."""

    def __init__(self, q: QConvBn2d):
        super().__init__()
        w, b = q.folded()
        c = q.conv
        self.stride, self.padding, self.dilation, self.groups = c.stride, c.padding, c.dilation, c.groups
        self._init_q(q.act_fq, w, bool(q.weight_fq.item()) and not q.float_layer, getattr(q, "w_qmax", 127))
        self.float_layer = q.float_layer
        if q.float_layer:
            self.act_enabled = False
        self.register_buffer("bias", self._bias_q(b))
        o = q.out_fq
        self.out_enabled = bool(o is not None and o.fake_quant.item() and o.initialized.item())
        self.out_scale = float(o.scale.item()) if o is not None else 1.0

    def forward(self, x):
        y = F.conv2d(self._q_act(x), self._q_weight(), self.bias, self.stride, self.padding, self.dilation,
                     self.groups)
        if self.out_enabled:  # exported as Conv -> Q -> DQ: ORT's QLinearConv with the QAT-trained output scale
            y = torch.fake_quantize_per_tensor_affine(y, self.out_scale, 0, QMIN, QMAX)
        return y


class DeployQLinear(DeployBase):
    def __init__(self, q: QLinear):
        super().__init__()
        self._init_q(q.act_fq, q.linear.weight, bool(q.weight_fq.item()), getattr(q, "w_qmax", 127))
        self.register_buffer("bias", self._bias_q(q.linear.bias))

    def forward(self, x):
        return F.linear(self._q_act(x), self._q_weight(), self.bias)


def to_deploy(model: nn.Module) -> nn.Module:
    """A copy of a QAT model with BN folded and constant Q/DQ parameters, ready for ONNX export."""
    m = copy.deepcopy(model).eval()
    for name, mod in list(m.named_modules()):
        if isinstance(mod, QConvBn2d):
            set_module(m, name, DeployQConv(mod))
        elif isinstance(mod, QLinear):
            set_module(m, name, DeployQLinear(mod))
    return m


def is_qat(model: nn.Module) -> bool:
    return any(isinstance(m, QConvBn2d | QLinear | DeployQConv | DeployQLinear) for m in model.modules())
