"""The INT8 scheme (symmetric per-channel int8 weights, per-tensor int8 activations, int32 bias on the
``x_scale * w_scale`` grid): :mod:`~edgecv.quant.scheme` (config, fake-quant arithmetic), :mod:`~edgecv.quant.modules`
(QAT modules, observer / fake-quant / BN switches, calibration), :mod:`~edgecv.quant.placement` (where they go,
:func:`prepare_qat`), :mod:`~edgecv.quant.deploy_form` (BN folded, constant Q/DQ) and
:mod:`~edgecv.quant.onnx_rules` (ONNX graph rules).

Two facades are the public surface the other layers use:

* :func:`ptq` - a float model -> a calibrated fake-quant (QAT-form) model, no training;
* :func:`deploy` - a QAT-form model -> its deployment form (BN folded, explicit quantize/dequantize), the model
  every INT8 exporter starts from.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from edgecv.quant.deploy_form import is_qat, to_deploy
from edgecv.quant.modules import calibrate, freeze_bn, output_fq_names, set_fake_quant, set_observers
from edgecv.quant.placement import prepare_qat
from edgecv.quant.scheme import QuantConfig, auto_weight_bits

__all__ = ["QuantConfig", "auto_weight_bits", "calibrate", "deploy", "freeze_bn", "is_qat", "output_fq_names", "prepare_qat", "ptq",
           "set_fake_quant", "set_observers", "to_deploy"]


def ptq(model: nn.Module, calib, size: int, qcfg: QuantConfig | None = None) -> tuple[nn.Module, int]:
    """Post-training quantization of a copy of ``model``: QAT-form modules placed for ``size``, observers run on
    ``calib`` (arrays / tensors N x 3 x S x S, or a loader of ``(x, y)`` batches). A model that is already QAT is
    copied unchanged. Returns the eval-mode model and the number of calibration images seen."""
    if is_qat(model):
        return copy.deepcopy(model).eval(), 0
    q = prepare_qat(copy.deepcopy(model).eval(), qcfg or QuantConfig(trace_size=size))
    batches = [(torch.from_numpy(b) if isinstance(b, np.ndarray) else b, None)
               for b in calib] if isinstance(calib, (list, tuple)) else calib
    n = calibrate(q, batches)
    return q.eval(), n


def deploy(qat_model: nn.Module, fake_quant: bool = True) -> nn.Module:
    """The deployment form of a copy of ``qat_model``. ``fake_quant=False``: the QAT-trained weights with BN
    folded and quantization off (the float model of a QAT-only checkpoint)."""
    m = qat_model
    if not fake_quant:
        m = copy.deepcopy(qat_model)
        set_fake_quant(m, False)
    return to_deploy(m).eval()  # to_deploy copies
