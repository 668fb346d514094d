"""Pruned-shape specs: a pruned model is saved as ``state_dict + channel spec`` and rebuilt from them.

The spec (JSON/text, like timm's pruned-shape text files) lists the shape of every Conv2d, Linear and
BatchNorm layer. Rebuilding creates the unpruned architecture and resizes those layers *in place*, which keeps
module subclasses (timm's BatchNormAct2d, torchvision's Conv2dNormActivation, SE blocks) intact.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecv.errors import UserError


def channel_spec_of(model: nn.Module) -> dict:
    spec: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            spec[name] = [m.in_channels, m.out_channels, m.groups]
        elif isinstance(m, nn.Linear):
            spec[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            spec[name] = [m.num_features]
    return spec


def _new_param(old: torch.Tensor | None, shape: tuple[int, ...], requires_grad: bool = True):
    if old is None:
        return None
    return nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device), requires_grad=requires_grad)


def apply_channel_spec(model: nn.Module, spec: dict) -> nn.Module:
    modules = dict(model.named_modules())
    for name, shape in spec.items():
        m = modules.get(name)
        if m is None:
            raise UserError(f"channel spec names a layer '{name}' that the architecture does not have")
        if isinstance(m, nn.Conv2d):
            cin, cout, groups = (int(x) for x in shape)
            kh, kw = m.kernel_size
            m.in_channels, m.out_channels, m.groups = cin, cout, groups
            m.weight = _new_param(m.weight, (cout, cin // groups, kh, kw))
            if m.bias is not None:
                m.bias = _new_param(m.bias, (cout,))
        elif isinstance(m, nn.Linear):
            fin, fout = (int(x) for x in shape)
            m.in_features, m.out_features = fin, fout
            m.weight = _new_param(m.weight, (fout, fin))
            if m.bias is not None:
                m.bias = _new_param(m.bias, (fout,))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            (n,) = (int(x) for x in shape)
            m.num_features = n
            if m.weight is not None:
                m.weight = _new_param(m.weight, (n,))
                m.bias = _new_param(m.bias, (n,))
            if m.running_mean is not None:
                m.running_mean = torch.zeros(n, dtype=m.running_mean.dtype)
                m.running_var = torch.ones(n, dtype=m.running_var.dtype)
        else:
            raise UserError(f"channel spec entry '{name}' is a {type(m).__name__}, not a Conv2d/Linear/BatchNorm")
    return model
