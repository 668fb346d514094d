"""Fine-tuning policy: which blocks train, and the learning rate of a pretrained backbone.

``--freeze``:

- ``none``: everything trains.
- ``backbone``: the trunk (stem + stages: resnet ``conv1``..``layer4``; torchvision ``features``; timm
  ``conv_stem``..``blocks``) is frozen; the head (everything after the last stage: ``fc``, ``classifier``, timm's
  ``conv_head``/``bn2`` + ``classifier``) trains.
- ``until:LAYER``: every layer registered before module ``LAYER`` (a module name, e.g. ``layer3`` or
  ``features.9``) is frozen; ``LAYER`` and everything after it train.
- ``auto`` (the default): ``none`` -- everything trains, from scratch and from pretrained / ``--init-weights``
  weights alike (the trunk at ``lr x backbone_lr_scale``: :func:`default_backbone_lr_scale`). Measured from real
  ImageNet weights (EfficientNet-Lite0, 6 epochs, the trunk at x 0.1, benchmarks/RESULTS.md "The ImageNet start"):
  on cifar10-mini at 96 px (10,000 images) ``none`` 76.90 % against the last blocks' (``until:blocks.5``, this
  default's old choice there) 72.95 % on 2,000 val images; on hymenoptera at 224 px (245 images) ``none`` 90.85 %
  against the head only (``backbone``, its old choice under 1,000 images) 88.89 %. ``backbone`` and
  ``until:LAYER`` (the arch's last blocks: :func:`last_blocks`) cost a fraction of the time and stay available.

Frozen parameters get ``requires_grad=False`` and are left out of the optimizer; frozen BatchNorms stay in eval
mode (their running statistics untouched) whatever ``model.train()`` is called on: their ``train`` is replaced.
The trunk's trainable parameters get ``lr x backbone_lr_scale`` through their own optimizer param group
(default from pretrained / init weights: 0.1 under 1,000 training images, else 1; 1 from scratch); the head trains
at the full rate.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import nn

from edgecv.errors import UserError
from edgecv.training.config import DEFAULT_PRETRAINED_LR_SCALE, large_set

_STAGE_CONTAINERS = ("features", "blocks")  # torchvision / timm: expanded into their stages
_STAGE_PREFIXES = ("layer", "features.", "blocks.")  # trunk stages; the head is what follows the last one

# "the last blocks" per arch family (name prefix -> first trainable block), for ``--freeze until:`` by hand and
# benchmarks/transfer.py: resnet layer4; torchvision EfficientNet-B the last two stages (192/320 ch) + the final
# 1x1 conv; MobileNetV3 the last stage (96 / 160 ch) + the final conv; timm MobileNetV3-minimal / EfficientNet-Lite
# the same stages.
LAST_BLOCKS: tuple[tuple[str, str], ...] = (
    ("resnet", "layer4"),
    ("efficientnet_b", "features.6"),
    ("mobilenet_v3_small", "features.9"),
    ("mobilenet_v3_large", "features.13"),
    ("tf_mobilenetv3_small", "blocks.4"),
    ("tf_mobilenetv3_large", "blocks.5"),
    ("efficientnet_lite", "blocks.5"),
)


@dataclass
class FinetunePolicy:
    freeze: str  # as given (auto | none | backbone | until:LAYER)
    resolved: str  # none | backbone | until:LAYER
    reason: str
    trainable_blocks: list[str]
    frozen_blocks: list[str]
    trainable_params: int
    frozen_params: int
    frozen_bn: int
    backbone_lr_scale: float
    weights: dict | None = None  # edgecv.models.pretrained.WeightsSource.to_dict()
    param_groups: list[dict] = field(default_factory=list)  # [{"name", "lr_scale", "params"}] (counts)

    def to_dict(self) -> dict:
        return asdict(self)


def blocks(model: nn.Module) -> list[str]:
    """The model's top-level blocks that hold parameters, in order (``features``/``blocks`` expanded)."""
    out = []
    for name, child in model.named_children():
        if name in _STAGE_CONTAINERS:
            out += [f"{name}.{n}" for n, c in child.named_children() if any(True for _ in c.parameters())]
        elif any(True for _ in child.parameters()):
            out.append(name)
    return out


def head_blocks(model: nn.Module) -> list[str]:
    """The blocks after the last trunk stage (the head)."""
    bl = blocks(model)
    last = max((i for i, b in enumerate(bl) if b.startswith(_STAGE_PREFIXES)), default=len(bl) - 2)
    return bl[last + 1:]


def last_blocks(arch: str, model: nn.Module) -> str:
    for prefix, layer in LAST_BLOCKS:
        if arch.startswith(prefix):
            return layer
    bl = blocks(model)  # an arch without an entry: the last two trunk blocks
    trunk = [b for b in bl if b not in head_blocks(model)]
    return trunk[-2] if len(trunk) >= 2 else bl[0]


def parse_freeze(freeze: str) -> str:
    """Checks the ``--freeze`` syntax (the layer name is checked against the model later)."""
    f = (freeze or "auto").strip()
    if f in ("auto", "none", "backbone") or (f.startswith("until:") and f[len("until:"):]):
        return f
    raise UserError(f"--freeze must be auto, none, backbone or until:LAYER, got '{freeze}'")


def resolve_freeze(freeze: str, n_train: int, has_start: bool) -> tuple[str, str]:
    """(none | backbone | until:LAYER, why)."""
    f = parse_freeze(freeze)
    if f != "auto":
        return f, "--freeze"
    if not has_start:
        return "none", "from scratch"
    # from weights too: measured, everything trainable beat the head only (245 images) and the last blocks
    # (10,000 images) from ImageNet weights (module docstring)
    return "none", f"from weights, {n_train} training images: everything (the trunk at the backbone lr scale)"


def _cut(model: nn.Module, resolved: str) -> str | None:
    """The first trainable module's name (None: nothing frozen)."""
    if resolved == "none":
        return None
    if resolved == "backbone":
        heads = head_blocks(model)
        if not heads:
            raise UserError("--freeze backbone: this model has no head after its trunk")
        return heads[0]
    layer = resolved[len("until:"):]
    if layer not in dict(model.named_modules()) or layer == "":
        raise UserError(f"--freeze until:{layer}: no such layer; top-level blocks: {', '.join(blocks(model))}")
    return layer


def _frozen_modules(model: nn.Module, cut: str | None) -> set[str]:
    """Names of the modules registered before ``cut`` (not its ancestors, not inside it)."""
    if cut is None:
        return set()
    out = set()
    for name, _ in model.named_modules():
        if name == cut:
            break
        if name and not cut.startswith(name + "."):
            out.add(name)
    return out


def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)  # a frozen BatchNorm keeps its running statistics


def default_backbone_lr_scale(n_train: int, has_start: bool) -> float:
    """The trunk's learning-rate scale when none is given: 1 from scratch; from weights
    ``DEFAULT_PRETRAINED_LR_SCALE`` under ``LARGE_SET`` training images, else 1. Measured from real ImageNet weights
    (EfficientNet-Lite0, everything trainable, 6 epochs; benchmarks/RESULTS.md): on hymenoptera (245 images) x 0.1
    90.85 % against x 1 85.30 % (two seeds, 153 val photos); on cifar10-mini at 96 px (10,000 images) x 1 82.90 %
    against x 0.1 76.90 % (one seed, 2,000 val images). Where between the two the better scale changes was not
    measured; 1,000 is the boundary the size-based freeze policy used."""
    if not has_start:
        return 1.0
    return 1.0 if large_set(n_train) else DEFAULT_PRETRAINED_LR_SCALE


def apply_policy(model: nn.Module, freeze: str, n_train: int, weights: dict | None,
                 backbone_lr_scale: float | None = None,
                 log: Callable[[str], None] | None = None) -> tuple[FinetunePolicy, list[dict] | None]:
    """Freeze per the policy; returns it and the optimizer param groups for ``fit(params=...)`` (None when every
    parameter trains at the one learning rate, as before fine-tuning existed)."""
    has_start = weights is not None
    resolved, reason = resolve_freeze(freeze, n_train, has_start)
    scale = float(backbone_lr_scale if backbone_lr_scale is not None
                  else default_backbone_lr_scale(n_train, has_start))
    if not scale > 0:
        raise UserError(f"--backbone-lr-scale must be > 0, got {scale}")
    cut = _cut(model, resolved)
    frozen_mods = _frozen_modules(model, cut)
    n_bn = 0
    for name, m in model.named_modules():
        if name in frozen_mods:
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train = types.MethodType(_eval_only_train, m)
                m.eval()
                n_bn += 1
    heads = set(head_blocks(model))
    head_params, trunk_params = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head_params if any(name.startswith(h + ".") for h in heads) else trunk_params).append(p)
    bl = blocks(model)
    trainable = [b for b in bl if any(p.requires_grad for p in model.get_submodule(b).parameters())]
    groups = [{"params": head_params, "lr_scale": 1.0, "name": "head"},
              {"params": trunk_params, "lr_scale": scale, "name": "backbone"}]
    pol = FinetunePolicy(
        freeze=freeze, resolved=resolved, reason=reason, trainable_blocks=trainable,
        frozen_blocks=[b for b in bl if b not in trainable],
        trainable_params=sum(p.numel() for p in head_params + trunk_params),
        frozen_params=sum(p.numel() for p in model.parameters() if not p.requires_grad), frozen_bn=n_bn,
        backbone_lr_scale=scale, weights=weights,
        param_groups=[{"name": g["name"], "lr_scale": g["lr_scale"], "params": sum(p.numel() for p in g["params"])}
                      for g in groups])
    if not pol.trainable_params:
        raise UserError(f"--freeze {freeze}: nothing left to train")
    if log is not None and (has_start or resolved != "none" or scale != 1.0):
        log(f"finetune: freeze {resolved} ({reason}); trainable {', '.join(trainable)} "
            f"({pol.trainable_params:,} params, {pol.frozen_params:,} frozen, {n_bn} BatchNorms frozen in eval "
            f"mode); backbone lr x {scale:g}")
    if resolved == "none" and scale == 1.0:
        return pol, None
    return pol, [g for g in groups if g["params"]]
