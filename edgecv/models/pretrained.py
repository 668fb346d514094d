"""Starting weights for a registry arch: its published pretrained weights, or a local weights file.

Published weights go through each library's own mechanism and cache, so a machine with internet downloads them
once and every later run (or an offline machine where the file was put by hand) loads them from the cache:

- torchvision archs: ``torchvision.models.get_model_weights(arch).DEFAULT``, fetched by
  ``torch.hub.load_state_dict_from_url`` into ``torch.hub.get_dir()/checkpoints/<file name of the URL>``
  (``$TORCH_HOME/hub/checkpoints``; torch.hub checks the file's hash only when it downloads it).
- timm archs: the arch's ``pretrained_cfg`` (``hf_hub_id``), in the Hugging Face hub cache (``HF_HUB_CACHE``,
  default ``$HF_HOME/hub``); ``HF_HUB_OFFLINE=1`` never touches the network.

When the file is neither cached nor downloadable, :class:`~edgecv.errors.UserError` names the exact file, the
folder to put it in and where to get it. A local file (``--init-weights``) may be a plain state_dict
(``.pt``/``.pth``, read with ``weights_only=True``), a safetensors file or an edgecv checkpoint.

Keys are matched to the arch by :func:`load_matching`: the classifier head is left freshly initialised when its
class count differs (the log says so); any other difference is a UserError naming the layers. The preprocessing
spec follows the weights' own (:func:`weights_preprocess`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError
from edgecv.models.checkpoint import load_checkpoint
from edgecv.models.registry import arch_info
from edgecv.utils import sha256_file

Log = Callable[[str], None]


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's starting weights came from (recorded in the checkpoint meta and ``--json``)."""

    kind: str  # "torchvision" | "timm" | "file"
    name: str  # weights enum (ResNet18_Weights.IMAGENET1K_V1), hub id (timm/...in1k) or the file's kind
    path: str
    sha256: str
    head_replaced: bool
    preprocess: dict | None = None  # the weights' own preprocessing fields (None: the data default)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- matching keys
def head_name(model: nn.Module) -> str:
    """The classifier head: the last ``nn.Linear`` of the model (``fc``, ``classifier``, ``classifier.3``)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserError(f"{type(model).__name__} has no linear classifier head")
    return names[-1]


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_matching(model: nn.Module, sd: dict[str, torch.Tensor], label: str, arch: str,
                  replace_head: bool = False, log: Log | None = None) -> bool:
    """Load ``sd`` into ``model`` key by key; returns whether the head was left freshly initialised.

    The head is skipped when its shape differs (another class count) or ``replace_head``; anything else that
    does not fit (shape, missing or unexpected keys) is a UserError naming the first layers and the count.
    """
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DistributedDataParallel wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = model.state_dict()
    head = head_name(model)
    head_keys = {k for k in own if k.startswith(head + ".")}
    head_differs = any(k in sd and tuple(sd[k].shape) != tuple(own[k].shape) for k in head_keys)
    skip_head = replace_head or head_differs
    shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and k not in head_keys and tuple(sd[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")
               and not (skip_head and k in head_keys)]
    unexpected = [k for k in sd if k not in own]
    if shape or missing or unexpected:
        parts = []
        if shape:
            parts.append(f"{len(shape)} layer(s) of another shape (file vs model): {_few(shape)}")
        if missing:
            parts.append(f"{len(missing)} missing: {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_few(unexpected)}")
        raise UserError(f"{label} does not fit arch '{arch}': {'; '.join(parts)}")
    take = {k: v for k, v in sd.items() if not (skip_head and k in head_keys)}
    model.load_state_dict(take, strict=False)
    if log is not None:
        n_file = next((tuple(sd[k].shape)[0] for k in sorted(head_keys) if k in sd), None)
        n_model = own[f"{head}.weight"].shape[0] if f"{head}.weight" in own else "?"
        if skip_head:
            why = f"{n_file} classes in the weights, {n_model} in the data" if head_differs else "other class names"
            log(f"weights: loaded {len(take)} tensors from {label}; head '{head}' replaced ({why})")
        else:
            log(f"weights: loaded {len(take)} tensors from {label}, head '{head}' included ({n_model} classes)")
    return skip_head


# ---------------------------------------------------------------------------------------------- published weights
def _online(url: str) -> bool:
    host = urlparse(url).hostname
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def torchvision_weights(arch: str):
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise UserError(f"--pretrained: torchvision publishes no weights for '{arch}'") from None


def torchvision_cache_path(arch: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (and first looks for) ``arch``'s default weights."""
    w = torchvision_weights(arch)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(w.url).path)


def _torchvision_state_dict(arch: str) -> tuple[dict, Path, str]:
    w = torchvision_weights(arch)
    path = torchvision_cache_path(arch)
    try:
        sd = w.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except OSError as e:  # urllib's URLError is an OSError: no network, DNS, proxy
        raise UserError(
            f"--pretrained: {arch}'s weights {w} are not in the torch hub cache and cannot be downloaded here "
            f"({_reason(e)}): put {path.name} (from {w.url}) in {path.parent}/ (TORCH_HOME chooses the cache)"
        ) from None
    return sd, path, str(w)


def _reason(e: BaseException) -> str:
    return " ".join(str(getattr(e, "reason", None) or e).split())[:120]


def _timm_cfg(arch: str) -> dict:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        raise UserError(f"--pretrained: timm publishes no Hugging Face weights for '{arch}'")
    return cfg.to_dict()


_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader looks for, in its order


def _timm_cached_file(hub_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for fname in _HF_FILES:
        p = try_to_load_from_cache(hub_id, fname)
        if isinstance(p, str) and os.path.isfile(p):
            return p
    return None


def _timm_missing(arch: str, hub_id: str, why: str) -> UserError:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    repo = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=hub_id, repo_type="model")
    return UserError(
        f"--pretrained: {arch}'s weights ({hub_id}) are not in the Hugging Face cache and cannot be downloaded "
        f"here ({why}): put model.safetensors (from {constants.ENDPOINT}/{hub_id}/resolve/main/model.safetensors) "
        f"in {repo}/snapshots/local/ and write 'local' into {repo}/refs/main, or copy {repo} from a machine where "
        f"`hf download {hub_id} model.safetensors` ran (HF_HOME / HF_HUB_CACHE choose the cache)")


def _timm_pretrained(arch: str, num_classes: int, log: Log) -> tuple[nn.Module, WeightsSource]:
    from huggingface_hub import constants

    cfg = _timm_cfg(arch)
    hub_id = cfg["hf_hub_id"]
    path = _timm_cached_file(hub_id)
    info = arch_info(arch)
    if path is None:
        if constants.HF_HUB_OFFLINE:
            raise _timm_missing(arch, hub_id, "HF_HUB_OFFLINE is set")
        if not _online(constants.ENDPOINT):
            raise _timm_missing(arch, hub_id, f"{urlparse(constants.ENDPOINT).hostname} cannot be resolved")
        log(f"weights: downloading {hub_id} into the Hugging Face cache {constants.HF_HUB_CACHE}")
        model = info.build(num_classes, pretrained=True)  # timm downloads through huggingface_hub
        path = _timm_cached_file(hub_id)
        if path is None:
            raise _timm_missing(arch, hub_id, "the download left no file in the cache")
    else:
        # the cached file through timm's own pretrained loader (no network round trip to check for updates)
        try:
            model = info.build(num_classes, pretrained=True, pretrained_cfg_overlay={"file": path})
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            raise UserError(f"--pretrained: {path} does not load into '{arch}' ({_reason(e)}); delete it to "
                            "download it again") from None
    log(f"weights: {arch} pretrained on {cfg.get('tag') or 'ImageNet'} ({hub_id}, {path}); head '{head_name(model)}' "
        f"replaced ({cfg['num_classes']} -> {num_classes} classes)" if cfg["num_classes"] != num_classes else
        f"weights: {arch} pretrained ({hub_id}, {path})")
    pre = {"input_size": int(cfg["input_size"][-1]), "crop_pct": float(cfg.get("crop_pct") or 1.0),
           "interpolation": _interp(cfg.get("interpolation")), "mean": list(cfg["mean"]), "std": list(cfg["std"])}
    return model, WeightsSource("timm", hub_id, path, sha256_file(path), cfg["num_classes"] != num_classes, pre)


def _interp(name) -> str:
    name = str(getattr(name, "value", name) or "bilinear").lower()
    return name if name in ("bilinear", "bicubic", "nearest") else "bilinear"


def torchvision_preprocess(arch: str) -> dict:
    """The preprocessing fields of ``arch``'s default torchvision weights (``weights.transforms()``)."""
    t = torchvision_weights(arch).transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return {"input_size": crop, "crop_pct": crop / resize, "interpolation": _interp(t.interpolation),
            "mean": list(t.mean), "std": list(t.std)}


def pretrained_model(arch: str, num_classes: int, log: Log) -> tuple[nn.Module, WeightsSource]:
    """``arch`` with its published weights and a fresh ``num_classes`` head."""
    from edgecv.models.registry import create_model

    info = arch_info(arch)
    if info.source == "timm":
        return _timm_pretrained(arch, num_classes, log)
    model = create_model(arch, num_classes)  # the registry's arch (MobileNetV3 BN momentum fix included)
    sd, path, name = _torchvision_state_dict(arch)
    replaced = load_matching(model, sd, f"{name} ({path})", arch, log=log)
    return model, WeightsSource("torchvision", name, str(path), sha256_file(path), replaced,
                                torchvision_preprocess(arch))


# ---------------------------------------------------------------------------------------------- local weights
def read_weights_file(path: str, arch: str, trust_pickle: bool = False) -> tuple[dict, str, list[str] | None, dict | None]:
    """(state_dict, kind, class names or None, preprocess fields or None) of a local weights file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--init-weights: no such file: {path}")
    with open(p, "rb") as f:
        head = f.read(16)
    if p.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):  # 8-byte header length, then JSON
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu"), "safetensors", None, None
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"--init-weights {path}: not a readable safetensors file ({_reason(e)})") from None
    ck = load_checkpoint(p, arch=arch, trust_pickle=trust_pickle, arch_flag="--arch")
    if ck.kind == "edgecv":
        if ck.meta.get("channel_spec") or ck.meta.get("quant"):
            raise UserError(f"--init-weights {path}: a pruned or QAT checkpoint cannot start a full-size '{arch}' "
                            "(give the float distill.pt or a teacher)")
        pre = ck.preprocess.to_dict() if ck.preprocess else None
        fields = {k: pre[k] for k in ("input_size", "crop_pct", "interpolation", "mean", "std")} if pre else None
        return dict(ck.state_dict), f"edgecv checkpoint ({ck.arch})", ck.class_names, fields
    if ck.module is not None:  # TorchScript, or a pickled model with --trust-pickle
        return dict(ck.module.state_dict()), ck.kind, None, None
    return dict(ck.state_dict), "state_dict", None, None


def init_weights_model(arch: str, num_classes: int, path: str, class_names: list[str] | None = None,
                       trust_pickle: bool = False, log: Log | None = None) -> tuple[nn.Module, WeightsSource]:
    """``arch`` initialised from a local weights file (head kept when it fits the data's classes)."""
    from edgecv.models.registry import create_model

    sd, kind, file_classes, pre = read_weights_file(path, arch, trust_pickle)
    model = create_model(arch, num_classes)
    other_names = file_classes is not None and class_names is not None and list(file_classes) != list(class_names)
    replaced = load_matching(model, sd, f"--init-weights {path} ({kind})", arch, replace_head=other_names, log=log)
    return model, WeightsSource("file", kind, str(path), sha256_file(path), replaced, pre)


def check_start(pretrained: bool, init_weights: str | None, prefix: str = "") -> None:
    if pretrained and init_weights:
        raise UserError(f"give either --{prefix}pretrained or --{prefix}init-weights, not both")


def starting_model(arch: str, num_classes: int, pretrained: bool = False, init_weights: str | None = None,
                   class_names: list[str] | None = None, trust_pickle: bool = False,
                   log: Log | None = None) -> tuple[nn.Module, WeightsSource | None]:
    """The model training starts from: random init, published weights (``pretrained``) or a local file."""
    from edgecv.models.registry import create_model

    log = log or (lambda s: None)
    check_start(pretrained, init_weights)
    if pretrained:
        return pretrained_model(arch, num_classes, log)
    if init_weights:
        return init_weights_model(arch, num_classes, init_weights, class_names, trust_pickle, log)
    return create_model(arch, num_classes), None


def weights_preprocess(base: Preprocess, source: WeightsSource | None, img_size: int | None) -> Preprocess:
    """``base`` with the weights' own mean/std, resize (crop_pct), crop and interpolation; ``img_size`` (the
    user's ``--img-size``) overrides the weights' input size, keeping their crop_pct."""
    if source is None or not source.preprocess:
        return base
    f = dict(source.preprocess)
    f["mean"], f["std"] = tuple(float(x) for x in f["mean"]), tuple(float(x) for x in f["std"])
    f["input_size"] = int(img_size or f["input_size"])
    return dataclasses.replace(base, **f)
