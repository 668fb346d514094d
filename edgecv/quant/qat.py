"""INT8 quantization-aware training (QAT) with the scheme every target runtime executes as INT8.

Scheme (TensorRT explicit quantization, OpenVINO and ONNX Runtime QDQ all run it):

* weights: symmetric int8, per output channel, range [-127, 127], zero point 0;
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

Conv+BN pairs are found by tracing one forward pass and become :class:`QConvBn2d`, which simulates the BN
fold during training (the torch.ao recipe: fake-quantize the folded weight, un-scale, then real BN with batch
statistics). After :func:`freeze_bn` the forward is exactly the folded deployment graph. :func:`to_deploy`
turns the QAT model into plain ``conv(fq(x), fq(W_folded), b_folded)`` modules that ``torch.onnx.export``
writes as QuantizeLinear/DequantizeLinear pairs.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

QMIN, QMAX = -128, 127
WQMIN, WQMAX = -127, 127


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


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel int8 fake-quant of a weight (scale from the current weight)."""
    scale = _weight_scale(w)
    zp = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, WQMIN, WQMAX)


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


def _sim_bias(b: torch.Tensor | None, act_fq: ActFakeQuant, w: torch.Tensor, quantized: bool) -> torch.Tensor | None:
    """The bias a QAT layer trains with: int32-rounded (:func:`fake_quant_bias`) when its input and weight are
    both quantized in the exported graph (``quantized``: weight fake-quant on, not a float layer), else as is."""
    if b is None or not (quantized and act_fq.fake_quant.item() and act_fq.initialized.item()):
        return b
    return fake_quant_bias(b, act_fq.scale.float(), _weight_scale(w))


class QConvBn2d(nn.Module):
    """Conv2d (+ folded BatchNorm) with input-activation and per-channel weight fake-quant."""

    def __init__(self, conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm | None, ema: float):
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.act_fq = ActFakeQuant(ema)
        self.out_fq: ActFakeQuant | None = None  # output fake-quant (conv+BN output, before the activation)
        self.register_buffer("bn_frozen", torch.tensor(0, dtype=torch.uint8))
        self.register_buffer("weight_fq", torch.tensor(1, dtype=torch.uint8))
        self.float_layer = False  # stays float in every INT8 artifact (QuantConfig.float_convs): no fake-quant

    def _conv(self, x, w, b=None):
        c = self.conv
        if c.padding_mode != "zeros":
            raise ValueError("QAT supports zero padding only")
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)

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
        return _sim_bias(b, self.act_fq, w, bool(self.weight_fq.item()) and not self.float_layer)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.float_layer:
            x = self.act_fq(x)
        wq = (lambda t: fake_quant_weight(t)) if self.weight_fq.item() and not self.float_layer else (lambda t: t)
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
    def __init__(self, linear: nn.Linear, ema: float):
        super().__init__()
        self.linear = linear
        self.act_fq = ActFakeQuant(ema)
        self.register_buffer("weight_fq", torch.tensor(1, dtype=torch.uint8))

    def forward(self, x):
        x = self.act_fq(x)
        w = self.linear.weight
        b = _sim_bias(self.linear.bias, self.act_fq, w, bool(self.weight_fq.item()))
        return F.linear(x, fake_quant_weight(w) if self.weight_fq.item() else w, b)


class _BnTail(nn.Module):
    """What remains of a BN module that also applied an activation (timm's BatchNormAct2d)."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.drop = getattr(bn, "drop", nn.Identity())
        self.act = getattr(bn, "act", nn.Identity())

    def forward(self, x):
        return self.act(self.drop(x))


# ---------------------------------------------------------------------------------------------- graph surgery
def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def find_conv_bn_pairs(model: nn.Module, size: int = 64) -> list[tuple[str, str]]:
    """(conv name, bn name) where the BN's input is that conv's output tensor, found by tracing one forward.

    Works on any architecture built from modules (torchvision Sequential blocks, timm's named conv/bn
    attributes, BatchNormAct2d) without relying on module naming or FX traceability.
    """
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    names = {m: n for n, m in model.named_modules()}

    def conv_hook(m, inp, out):
        produced[id(out)] = names[m]

    def bn_hook(m, inp, out):
        src = produced.get(id(inp[0]))
        if src is not None:
            pairs.append((src, names[m]))

    from edgecv.nn.graph import traced_forward

    hooks = [(m, conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [(m, bn_hook) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    traced_forward(model, hooks, size, batch=2)
    return pairs


def prepare_qat(model: nn.Module, qcfg: QuantConfig | dict | None = None) -> nn.Module:
    """Replace Conv(+BN) with :class:`QConvBn2d` and Linear with :class:`QLinear`, in place, and give the convs
    of ``qcfg.output_fq`` (decided by :func:`output_fq_placement` when None) an output fake-quant. Returns the
    model; ``model.edgecv_quant`` is the resolved config to store in the checkpoint's ``meta["quant"]``."""
    qcfg = copy.deepcopy(qcfg) if isinstance(qcfg, QuantConfig) else QuantConfig.from_dict(qcfg)
    if qcfg.float_convs is None:  # traced on the float model: a forward after the swap would seed the observers
        qcfg.float_convs = float_conv_placement(model, qcfg.trace_size) if qcfg.float_stem else []
    pairs = find_conv_bn_pairs(model, qcfg.trace_size)
    paired_bn = {b: c for c, b in pairs}
    conv_to_bn = {c: b for c, b in pairs}
    mods = dict(model.named_modules())
    for name, m in list(mods.items()):
        if isinstance(m, nn.Conv2d):
            bn_name = conv_to_bn.get(name)
            bn = mods[bn_name] if bn_name else None
            _set_module(model, name, QConvBn2d(m, bn, qcfg.ema))
        elif isinstance(m, nn.Linear) and qcfg.quantize_linear:
            _set_module(model, name, QLinear(m, qcfg.ema))
    for bn_name in paired_bn:
        bn = mods[bn_name]
        _set_module(model, bn_name, _BnTail(bn) if hasattr(bn, "act") else nn.Identity())
    mods = dict(model.named_modules())
    for name in qcfg.float_convs:
        if not isinstance(mods.get(name), QConvBn2d):
            raise ValueError(f"float conv '{name}': not a conv of this model")
        mods[name].float_layer = True
    if qcfg.output_fq is None:
        qcfg.output_fq = output_fq_placement(model, qcfg.trace_size)
    for name in qcfg.output_fq:
        q = mods.get(name)
        if not isinstance(q, QConvBn2d):
            raise ValueError(f"output fake-quant on '{name}': not a quantized conv of this model")
        q.out_fq = ActFakeQuant(qcfg.ema).to(q.act_fq.amax.device)
    model.edgecv_quant = qcfg.to_dict()  # marker + the config that rebuilds this model
    return model


def float_conv_placement(model: nn.Module, size: int) -> list[str]:
    """The ``nn.Conv2d`` modules of a float model that read the network input itself (the image stem)."""
    from edgecv.nn.graph import traced_forward

    names = {m: n for n, m in model.named_modules()}
    found: list[str] = []
    inp: list[torch.Tensor] = []

    def first(m, args):
        inp.append(args[0])

    def hook(m, args, out):
        if inp and args[0] is inp[0] and names[m] not in found:
            found.append(names[m])

    h = model.register_forward_pre_hook(first)
    try:
        traced_forward(model, [(m, hook) for m in model.modules() if isinstance(m, nn.Conv2d)], size, batch=2)
    finally:
        h.remove()
    return found


def output_fq_placement(model: nn.Module, size: int) -> list[str]:
    """Names of the :class:`QConvBn2d` modules whose output the deployed INT8 ONNX graph quantizes with a scale
    of its own (``needs_range`` in :func:`edgecv.quant.onnx_rules.conv_output_plan`).

    The deploy form (every fake-quant enabled, placeholder scales) is exported once to an in-memory ONNX;
    its Conv nodes (graph order) are matched to the modules by the order of their forward calls.
    """
    from edgecv.quant.onnx_rules import conv_output_plan, onnx_model_in_memory

    d = to_deploy(model).cpu()
    for m in d.modules():
        if isinstance(m, _DeployBase) and not getattr(m, "float_layer", False):
            m.act_enabled, m.act_scale, m.w_enabled = True, 1.0, True
            if isinstance(m, DeployQConv):
                m.out_enabled = False
    from edgecv.nn.graph import traced_forward

    names = {m: n for n, m in d.named_modules()}
    order: list[str] = []
    traced_forward(d, [(m, lambda mod, i, o: order.append(names[mod])) for m in d.modules()
                       if isinstance(m, DeployQConv)], size)
    plan = conv_output_plan(onnx_model_in_memory(d, size))
    float_convs = {n for n, m in model.named_modules() if isinstance(m, QConvBn2d) and m.float_layer}
    unexpected = [r for r, n in zip(plan, order, strict=False) if (r["how"] == "float_input") != (n in float_convs)]
    if len(plan) != len(order) or unexpected:
        raise RuntimeError(
            f"output fake-quant placement: the deploy graph has {len(plan)} Conv nodes "
            f"({sum(r['how'] == 'float_input' for r in plan)} without a quantized input) but the model ran "
            f"{len(order)} convs ({len(float_convs)} float); cannot match them (architecture not supported by "
            f"prepare_qat)")
    decision: dict[str, bool] = {}
    for name, row in zip(order, plan, strict=True):
        if name in float_convs:
            continue
        need = row["how"] == "needs_range"
        if decision.setdefault(name, need) != need:
            raise RuntimeError(f"output fake-quant placement: '{name}' runs more than once with different needs")
    return [n for n, need in decision.items() if need]


def output_fq_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, QConvBn2d) and m.out_fq is not None]


def qmodules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, QConvBn2d | QLinear)]


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


# ---------------------------------------------------------------------------------------------- deployment form
def _weight_scale(w: torch.Tensor) -> torch.Tensor:
    return (w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp(min=1e-8) / WQMAX).float()


class _DeployBase(nn.Module):
    """Constant Q/DQ parameters: activation scale as a Python float, weight scales precomputed."""

    def _init_q(self, act_fq: ActFakeQuant, weight: torch.Tensor, w_enabled: bool) -> None:
        self.act_enabled = bool(act_fq.fake_quant.item() and act_fq.initialized.item())
        self.act_scale = float(act_fq.scale.item())
        self.w_enabled = bool(w_enabled)
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("w_scale", _weight_scale(weight))
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
            # scale = amax/127 keeps every weight in [-127, 127]; ONNX only accepts the (-128, 127) range spec
            return torch.fake_quantize_per_channel_affine(self.weight, self.w_scale, self.w_zp, 0, QMIN, QMAX)
        return self.weight


class DeployQConv(_DeployBase):
    """``conv(fq(x), fq(W), b)`` with folded, constant tensors: exported as Q/DQ + Conv."""

    def __init__(self, q: QConvBn2d):
        super().__init__()
        w, b = q.folded()
        c = q.conv
        self.stride, self.padding, self.dilation, self.groups = c.stride, c.padding, c.dilation, c.groups
        self._init_q(q.act_fq, w, bool(q.weight_fq.item()) and not q.float_layer)
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


class DeployQLinear(_DeployBase):
    def __init__(self, q: QLinear):
        super().__init__()
        self._init_q(q.act_fq, q.linear.weight, bool(q.weight_fq.item()))
        self.register_buffer("bias", self._bias_q(q.linear.bias))

    def forward(self, x):
        return F.linear(self._q_act(x), self._q_weight(), self.bias)


def to_deploy(model: nn.Module) -> nn.Module:
    """A copy of a QAT model with BN folded and constant Q/DQ parameters, ready for ONNX export."""
    m = copy.deepcopy(model).eval()
    for name, mod in list(m.named_modules()):
        if isinstance(mod, QConvBn2d):
            _set_module(m, name, DeployQConv(mod))
        elif isinstance(mod, QLinear):
            _set_module(m, name, DeployQLinear(mod))
    return m


def is_qat(model: nn.Module) -> bool:
    return any(isinstance(m, QConvBn2d | QLinear | DeployQConv | DeployQLinear) for m in model.modules())
