"""The INT8 scheme every target runtime executes as INT8: its configuration and fake-quant arithmetic.

Scheme (TensorRT explicit quantization, OpenVINO and ONNX Runtime QDQ all run it):

* weights: symmetric int8, per output channel, range [-127, 127], zero point 0 - or 7-bit, [-63, 63]
  (``QuantConfig.weight_bits = 7``, the ``reduce_range`` of ONNX Runtime's quantizer): x86 CPUs without VNNI/AMX
  run u8 x s8 products through ``vpmaddubsw``, which adds each pair in int16 with saturation
  (``2 x 255 x 127 > 32767``); with weights within +-63 it cannot saturate (``2 x 255 x 63 = 32130``), so ONNX
  Runtime and OpenVINO compute the exact QDQ result there (docs/int8.md, :func:`auto_weight_bits`);
* activations: symmetric int8, per tensor, zero point 0, scale from an EMA of the observed |min|/|max|;
* fake-quant sits on the *input* of every Conv2d and Linear (activation) and on its weight, with BatchNorm
  folded into the convolution (Q/DQ placement TensorRT recommends; OpenVINO fuses it too);
* plus an *output* fake-quant (``QConvBn2d.out_fq``, before the activation) on exactly the convs whose
  exported INT8 ONNX output needs a quantize of its own so ONNX Runtime runs them as ``QLinearConv`` (output
  read by hardswish, SE gates, residual adds...: no next-layer input Q it could reuse). Those convs are
  found by exporting the deploy form once and asking :func:`edgecv.quant.onnx_rules.conv_output_plan`, so the
  QAT model simulates (and trains with) exactly the graph that is deployed;
* the stem (a conv reading the 3-channel image) stays float by default (``QuantConfig.float_convs``): as an
  int8 kernel it ran 2.7x slower than its fp32 kernel on ONNX Runtime (0.31 vs 0.11 ms at 224 px, 1 thread:
  a K=27 GEMM gains nothing from int8) and it made the ExecuTorch INT8 model 16 % slower; every later conv
  is int8. The float stem's output is quantized by the next conv's input fake-quant as usual;
* biases as int8 runtimes apply them: int32 with scale ``input_scale * weight_scale`` (per channel),
  :func:`fake_quant_bias`, once BN is folded (eval / frozen BN). A one-LSB flip of an activation moves this
  model's logits noticeably, so leaving that rounding out cost ~3 points of top-1 agreement with ORT.

Conv+BN pairs are found by tracing one forward pass (:mod:`edgecv.quant.placement`) and become
:class:`~edgecv.quant.modules.QConvBn2d`, which simulates the BN fold during training (the torch.ao recipe:
fake-quantize the folded weight, un-scale, then real BN with batch statistics). After
:func:`~edgecv.quant.modules.freeze_bn` the forward is exactly the folded deployment graph.
:func:`~edgecv.quant.deploy_form.to_deploy` turns the QAT model into plain ``conv(fq(x), fq(W_folded), b_folded)`` modules that ``torch.onnx.export``
writes as QuantizeLinear/DequantizeLinear pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

QMIN, QMAX = -128, 127
WQMIN, WQMAX = -127, 127
# CPU flags of an exact int32 u8 x s8 dot product (no int16 pair saturation): VNNI (AVX-512 or AVX) and AMX
EXACT_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


WEIGHT_BITS = (7, 8)  # the weight ranges the scheme supports (--int8-weight-bits)


def weight_qmax(bits: int) -> int:
    """Largest |int| of a ``bits``-bit symmetric weight: 127 for 8, 63 for 7."""
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight bits must be 7 or 8, got {bits}")
    return 2 ** (bits - 1) - 1


def auto_weight_bits(flags: frozenset[str] | None = None, machine: str | None = None) -> tuple[int, str]:
    """(bits, reason): 7 on an x86 CPU without VNNI/AMX (its int8 kernels would saturate), else 8."""
    import platform

    from edgecv.utils import cpu_flags

    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return 8, f"8-bit weights: {machine} (no u8 x s8 int16 saturation)"
    if not flags:
        return 8, "8-bit weights: CPU flags unreadable"
    exact = sorted(EXACT_INT8_DOT_FLAGS & flags)
    if exact:
        return 8, f"8-bit weights: the CPU has {', '.join(exact)} (exact int8 dot products)"
    return 7, ("7-bit weights: this x86 CPU has no VNNI/AMX, so ONNX Runtime's and OpenVINO's int8 kernels "
               "saturate 8-bit weights (docs/int8.md)")


@dataclass
class QuantConfig:
    ema: float = 0.01  # averaging constant of the activation range observer
    trace_size: int = 64  # input size of the forward pass that finds Conv+BN pairs
    quantize_linear: bool = True
    # names of the QConvBn2d modules with an output fake-quant; None = decide from the deploy graph
    # (prepare_qat), [] = none (checkpoints written before output fake-quant existed)
    output_fq: list[str] | None = None
    # names of the convs that stay float (no input / weight fake-quant); None = decide (:func:`float_conv_placement`:
    # the image stem when ``float_stem``), [] = none (checkpoints written before float convs existed)
    float_convs: list[str] | None = None
    float_stem: bool = True
    weight_bits: int = 8  # 7: weights within +-63 (no int16 saturation on x86 without VNNI); see weight_qmax

    @property
    def weight_qmax(self) -> int:
        return weight_qmax(self.weight_bits)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | bool | None) -> QuantConfig:
        if not isinstance(d, dict):
            return cls()
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class ActFakeQuant(nn.Module):
    """Per-tensor symmetric int8 fake-quant with an EMA range observer."""

    def __init__(self, ema: float = 0.01):
        super().__init__()
        self.ema = ema
        self.register_buffer("amax", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self.register_buffer("observe", torch.tensor(1, dtype=torch.uint8))
        self.register_buffer("fake_quant", torch.tensor(1, dtype=torch.uint8))

    @property
    def scale(self) -> torch.Tensor:
        return (self.amax / QMAX).clamp(min=1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe.item() and self.training or (self.observe.item() and not self.initialized.item()):
            with torch.no_grad():
                cur = x.detach().abs().max().float()
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.all_reduce(cur, op=torch.distributed.ReduceOp.MAX)
                if not self.initialized.item():
                    self.amax.copy_(cur)
                    self.initialized.fill_(1)
                else:
                    self.amax.mul_(1 - self.ema).add_(self.ema * cur)
        if not self.fake_quant.item() or not self.initialized.item():
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale.float(), torch.zeros((), dtype=torch.int32),
                                                     QMIN, QMAX)


def fake_quant_weight(w: torch.Tensor, qmax: int = WQMAX) -> torch.Tensor:
    """Symmetric per-output-channel fake-quant of a weight to [-qmax, qmax] (scale from the current weight)."""
    scale = weight_scale(w, qmax)
    zp = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -qmax, qmax)


def fake_quant_bias(b: torch.Tensor, x_scale: torch.Tensor | float, w_scale: torch.Tensor) -> torch.Tensor:
    """The bias as int8 runtimes apply it: int32 with scale ``x_scale * w_scale`` (per output channel), rounded
    exactly like :func:`edgecv.quant.onnx_rules.quantize_bias` (scale in float32, where the int32 range would
    overflow the scale is raised as that pass does), with a straight-through gradient."""
    x_scale = torch.as_tensor(x_scale, dtype=torch.float64, device=b.device)
    bs = (x_scale * w_scale.detach().double()).float().double()
    need = b.detach().double().abs() / (2**31 - 1024)
    bs = torch.where(bs < need, need, bs).float()
    q = torch.round(b.detach().double() / bs.double()).clamp(-(2**31), 2**31 - 1)
    return b + ((q.float() * bs).to(b.dtype) - b).detach()


def weight_scale(w: torch.Tensor, qmax: int = WQMAX) -> torch.Tensor:
    return (w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp(min=1e-8) / qmax).float()


def simulated_bias(b: torch.Tensor | None, act_fq: ActFakeQuant, w: torch.Tensor, quantized: bool,
                   qmax: int = WQMAX) -> torch.Tensor | None:
    """The bias a QAT layer trains with: int32-rounded (:func:`fake_quant_bias`) when its input and weight are
    both quantized in the exported graph (``quantized``: weight fake-quant on, not a float layer), else as is."""
    if b is None or not (quantized and act_fq.fake_quant.item() and act_fq.initialized.item()):
        return b
    return fake_quant_bias(b, act_fq.scale.float(), weight_scale(w, qmax))
