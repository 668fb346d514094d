"""The QAT modules (:class:`QConvBn2d`, :class:`QLinear`) of the INT8 scheme and the switches that drive them
(observers, fake-quant, BN freeze, PTQ calibration)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgecv.errors import UserError
from edgecv.quant.scheme import WQMAX, ActFakeQuant, fake_quant_weight, simulated_bias


class QConvBn2d(nn.Module):
    """Conv2d (+ folded BatchNorm) with input-activation and per-channel weight fake-quant."""

    def __init__(self, conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm | None, ema: float,
                 w_qmax: int = WQMAX):
        super().__init__()
        self.w_qmax = w_qmax  # weights in [-w_qmax, w_qmax] (QuantConfig.weight_bits)
        if conv.padding_mode != "zeros":
            raise UserError(f"QAT supports zero-padded convolutions only (a conv uses padding_mode={conv.padding_mode!r})")
        self.conv = conv
        self.bn = bn
        self.act_fq = ActFakeQuant(ema)
        self.out_fq: ActFakeQuant | None = None  # output fake-quant (conv+BN output, before the activation)
        self.register_buffer("bn_frozen", torch.tensor(0, dtype=torch.uint8))
        self.register_buffer("weight_fq", torch.tensor(1, dtype=torch.uint8))
        self.float_layer = False  # stays float in every INT8 artifact (QuantConfig.float_convs): no fake-quant

    def _conv(self, x, w, b=None):
        # the conv's own F.conv2d call (zero padding), so a training epoch's depthwise patch reaches QAT too
        return self.conv._conv_forward(x, w, b)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """BN-folded float weight and bias (with running statistics)."""
        w = self.conv.weight
        b = self.conv.bias if self.conv.bias is not None else torch.zeros_like(w[:, 0, 0, 0])
        if self.bn is None:
            return w, b
        std = torch.sqrt(self.bn.running_var + self.bn.eps)
        gamma = self.bn.weight if self.bn.weight is not None else torch.ones_like(std)
        beta = self.bn.bias if self.bn.bias is not None else torch.zeros_like(std)
        sf = gamma / std
        return w * sf.reshape(-1, 1, 1, 1), (b - self.bn.running_mean) * sf + beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._forward(x)
        return self.out_fq(y) if self.out_fq is not None else y

    def _bias_q(self, b: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor | None:
        return simulated_bias(b, self.act_fq, w, bool(self.weight_fq.item()) and not self.float_layer, self.w_qmax)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.float_layer:
            x = self.act_fq(x)
        wq = ((lambda t: fake_quant_weight(t, self.w_qmax)) if self.weight_fq.item() and not self.float_layer
              else (lambda t: t))
        if self.bn is None:
            w = self.conv.weight
            return self._conv(x, wq(w), self._bias_q(self.conv.bias, w))
        bn = self.bn
        if not self.training or self.bn_frozen.item():
            w, b = self.folded()
            return self._conv(x, wq(w), self._bias_q(b, w))
        # training with live BN: fold with running stats, un-scale, then BN with batch statistics
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        sf = gamma / std
        y = self._conv(x, wq(self.conv.weight * sf.reshape(-1, 1, 1, 1)))
        y = y / sf.reshape(1, -1, 1, 1)
        if self.conv.bias is not None:
            y = y + self.conv.bias.reshape(1, -1, 1, 1)
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, True,
                            bn.momentum if bn.momentum is not None else 0.1, bn.eps)


class QLinear(nn.Module):
    def __init__(self, linear: nn.Linear, ema: float, w_qmax: int = WQMAX):
        super().__init__()
        self.linear = linear
        self.w_qmax = w_qmax
        self.act_fq = ActFakeQuant(ema)
        self.register_buffer("weight_fq", torch.tensor(1, dtype=torch.uint8))

    def forward(self, x):
        x = self.act_fq(x)
        w = self.linear.weight
        b = simulated_bias(self.linear.bias, self.act_fq, w, bool(self.weight_fq.item()), self.w_qmax)
        return F.linear(x, fake_quant_weight(w, self.w_qmax) if self.weight_fq.item() else w, b)


class BnTail(nn.Module):
    """What remains of a BN module that also applied an activation (timm's BatchNormAct2d)."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.drop = getattr(bn, "drop", nn.Identity())
        self.act = getattr(bn, "act", nn.Identity())

    def forward(self, x):
        return self.act(self.drop(x))


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def output_fq_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, QConvBn2d) and m.out_fq is not None]


def set_observers(model: nn.Module, enabled: bool) -> None:
    for m in model.modules():
        if isinstance(m, ActFakeQuant):
            m.observe.fill_(int(enabled))


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    """Turn all fake-quant (activations and weights) on or off; observers are unaffected."""
    for m in model.modules():
        if isinstance(m, ActFakeQuant):
            m.fake_quant.fill_(int(enabled))
        if isinstance(m, QConvBn2d | QLinear):
            m.weight_fq.fill_(int(enabled))


def freeze_bn(model: nn.Module) -> None:
    """From now on use running statistics (the folded form) and stop updating them."""
    for m in model.modules():
        if isinstance(m, QConvBn2d):
            m.bn_frozen.fill_(1)


@torch.no_grad()
def calibrate(model: nn.Module, loader, num_batches: int | None = None, device: str | torch.device = "cpu") -> int:
    """PTQ calibration: observe activation ranges on real data (fake-quant off during observation)."""
    set_fake_quant(model, False)
    set_observers(model, True)
    model.train()  # observers update in training mode; BN must not move, so freeze it
    bn_state = {}
    for m in model.modules():
        if isinstance(m, QConvBn2d):
            bn_state[m] = m.bn_frozen.item()
            m.bn_frozen.fill_(1)
    n = 0
    for i, (x, _y) in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            break
        model(x.to(device))
        n += x.shape[0]
    for m, v in bn_state.items():
        m.bn_frozen.fill_(v)
    set_fake_quant(model, True)
    model.eval()
    return n
