"""Registry of teacher and student architectures (torchvision and timm), heads sized to the dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from edgecv.errors import UserError


@dataclass(frozen=True)
class ArchInfo:
    name: str
    role: str  # "teacher" | "student"
    source: str  # "torchvision" | "timm"
    build: Callable[[int], nn.Module]
    int8_friendly: bool = False
    note: str = ""


def _tv(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    return build


def _tv_mobilenet(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        m = _tv(name)(num_classes)
        # torchvision's MobileNetV3 uses BN momentum 0.01 (tuned for ImageNet-length training). On small data
        # the running statistics lag for many epochs and val accuracy stays near chance; 0.1 is the PyTorch
        # default and tracks within an epoch.
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = 0.1
        return m

    return build


def _timm(name: str, **kwargs) -> Callable[..., nn.Module]:
    def build(num_classes: int, pretrained: bool = False, pretrained_cfg_overlay: dict | None = None) -> nn.Module:
        # pretrained: timm's own loader (pretrained_cfg: Hugging Face hub cache, or the overlay's local
        # ``file``), which drops the 1000-class head for another class count; see edgecv.models.pretrained
        import timm

        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                 pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)

    return build


_ARCHS: dict[str, ArchInfo] = {}


def _register(info: ArchInfo) -> None:
    _ARCHS[info.name] = info


for _n in ("resnet18", "resnet34", "resnet50"):
    _register(ArchInfo(_n, "teacher", "torchvision", _tv(_n)))
for _i in range(4):
    _register(ArchInfo(f"efficientnet_b{_i}", "teacher", "torchvision", _tv(f"efficientnet_b{_i}")))
for _n in ("mobilenet_v3_small", "mobilenet_v3_large"):
    _register(ArchInfo(_n, "student", "torchvision", _tv_mobilenet(_n), note="hardswish + SE"))
# INT8-friendly students: ReLU, no squeeze-excite. timm's tf_* variants default to TF "same" padding, a
# dynamic Pad before every strided conv; symmetric padding (pad_type="") is used instead: identical
# architecture and weight shapes otherwise, and a cleaner graph for every exporter (the published TF-trained
# weights load into it; their border pixels see a one-pixel shift on stride-2 convs, which fine-tuning absorbs).
for _n in ("tf_mobilenetv3_small_minimal_100", "tf_mobilenetv3_large_minimal_100"):
    _register(ArchInfo(_n, "student", "timm", _timm(_n, pad_type=""), int8_friendly=True, note="ReLU, no SE"))
for _i in range(3):
    _register(
        ArchInfo(f"efficientnet_lite{_i}", "student", "timm", _timm(f"efficientnet_lite{_i}"), int8_friendly=True,
                 note="ReLU6, no SE")
    )

STUDENTS = [n for n, a in _ARCHS.items() if a.role == "student"]
ARCHS = list(_ARCHS)


def arch_info(arch: str) -> ArchInfo:
    try:
        return _ARCHS[arch]
    except KeyError:
        raise UserError(f"unknown arch '{arch}' (known: {', '.join(ARCHS)})") from None


def create_model(arch: str, num_classes: int, channel_spec: dict | None = None) -> nn.Module:
    """Build ``arch`` with a ``num_classes`` head; with ``channel_spec``, reshape it to a pruned layout."""
    if num_classes < 2:
        raise UserError(f"num_classes must be >= 2, got {num_classes}")
    model = arch_info(arch).build(num_classes)
    if channel_spec:
        from edgecv.nn.spec import apply_channel_spec

        apply_channel_spec(model, channel_spec)
    return model
