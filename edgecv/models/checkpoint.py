"""One checkpoint format (one file), always read with ``torch.load(weights_only=True)``.

Contents: ``format``, ``arch``, ``num_classes``, ``class_names``, ``preprocess`` (dict), ``state_dict``,
``metrics``, ``edgecv_version`` and an optional ``meta`` dict (``channel_spec`` for pruned models, ``quant``
for QAT models, training state for resumable runs...). Only tensors and plain Python values are stored, so
loading never unpickles code.

Accepted as a *teacher* besides that: a bare torchvision ``state_dict`` (with ``--arch``) and a TorchScript
file. A pickled whole model is refused unless the user passed ``--trust-pickle``.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecv import __version__
from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError
from edgecv.utils import atomic_path

FORMAT = "edgecv.checkpoint/1"


@dataclass
class Checkpoint:
    arch: str | None
    num_classes: int
    class_names: list[str] | None
    preprocess: Preprocess | None
    state_dict: dict[str, torch.Tensor] | None
    metrics: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    kind: str = "edgecv"  # "edgecv" | "state_dict" | "torchscript" | "pickle"
    module: nn.Module | None = None  # for TorchScript / trusted pickles
    path: str | None = None

    def build(self) -> nn.Module:
        """The model in eval mode, weights loaded."""
        if self.module is not None:
            return self.module.eval()
        from edgecv.models.registry import create_model

        if self.arch is None or self.state_dict is None:
            raise UserError(f"{self.path}: checkpoint has no arch/state_dict to build a model from")
        model = create_model(self.arch, self.num_classes, self.meta.get("channel_spec"))
        if self.meta.get("quant"):
            from edgecv.quant import prepare_qat

            model = prepare_qat(model, self.quant_config())
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise UserError(f"{self.path}: weights do not fit arch '{self.arch}': {' '.join(first[:2])[:300]}") from None
        return model.eval()

    def quant_config(self) -> dict:
        """``meta["quant"]`` with the output fake-quant placement made explicit: as recorded, else the modules
        that have one in the state_dict (checkpoints written before it was recorded; none for old QAT runs), so
        the model is rebuilt exactly as it was saved."""
        q = self.meta.get("quant")
        q = dict(q) if isinstance(q, dict) else {}
        if q.get("output_fq") is None:
            sd = self.state_dict or {}
            q["output_fq"] = sorted({k[: -len(".out_fq.amax")] for k in sd if k.endswith(".out_fq.amax")})
        if q.get("float_convs") is None:
            q["float_convs"] = []  # written before float convs existed: every conv was quantized
        return q


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    arch: str,
    class_names: list[str],
    preprocess: Preprocess,
    metrics: dict | None = None,
    meta: dict | None = None,
) -> Path:
    """Write the checkpoint atomically (temp file + rename)."""
    sd = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
    obj = {
        "format": FORMAT,
        "arch": arch,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "preprocess": preprocess.to_dict(),
        "state_dict": sd,
        "metrics": dict(metrics or {}),
        "meta": dict(meta or {}),
        "edgecv_version": __version__,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


# what ``torch.save`` writes first in its legacy (non-zip) format: the pickled magic number, protocol 2
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def _not_torch_reason(path: Path) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file (one phrase), or None when it looks like one."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head.startswith(b"PK\x03\x04"):
        return None if zipfile.is_zipfile(path) else "a damaged or truncated archive"
    if head == _LEGACY_MAGIC:
        return None
    return "not written by torch.save" if head else "an empty file"


def load_checkpoint(path: str | Path, arch: str | None = None, trust_pickle: bool = False,
                    map_location: str = "cpu", arch_flag: str = "--arch") -> Checkpoint:
    """Load an edgecv checkpoint, a bare state_dict (needs ``arch``) or a TorchScript module.

    ``arch_flag``: the caller's name for the flag that gives ``arch`` (quoted in the error for a bare state_dict).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such checkpoint file: {path}")
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # "torch.jit.load is deprecated": TorchScript teachers are still accepted
                warnings.simplefilter("ignore", FutureWarning)
                mod = torch.jit.load(str(path), map_location=map_location)
        except Exception as e:
            raise UserError(f"{path}: unreadable TorchScript file: {e}") from None
        return Checkpoint(arch=arch, num_classes=-1, class_names=None, preprocess=None, state_dict=None,
                          kind="torchscript", module=mod.eval(), path=str(path))
    reason = _not_torch_reason(path)
    if reason:
        raise UserError(f"{path}: not a PyTorch checkpoint ({reason}); expected an edgecv checkpoint, a state_dict "
                        "or a TorchScript file")
    obj = _torch_load(path, map_location, trust_pickle)

    if isinstance(obj, nn.Module):
        # only reachable with trust_pickle
        return Checkpoint(arch=arch, num_classes=-1, class_names=None, preprocess=None, state_dict=None,
                          kind="pickle", module=obj.eval(), path=str(path))
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        try:
            return Checkpoint(
                arch=obj["arch"],
                num_classes=int(obj["num_classes"]),
                class_names=list(obj["class_names"]),
                preprocess=Preprocess.from_dict(obj["preprocess"]),
                state_dict=obj["state_dict"],
                metrics=dict(obj.get("metrics") or {}),
                meta=dict(obj.get("meta") or {}),
                kind="edgecv",
                path=str(path),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: a damaged edgecv checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if arch is None:
            raise UserError(f"{path} is a bare state_dict: pass {arch_flag} to say which architecture it is for")
        return Checkpoint(arch=arch, num_classes=_infer_num_classes(obj), class_names=None, preprocess=None,
                          state_dict=obj, kind="state_dict", path=str(path))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        if arch is None:
            raise UserError(f"{path} holds a 'state_dict' entry: pass {arch_flag} to say which architecture it is "
                            "for")
        sd = obj["state_dict"]
        return Checkpoint(arch=arch, num_classes=_infer_num_classes(sd), class_names=None, preprocess=None,
                          state_dict=sd, kind="state_dict", path=str(path))
    raise UserError(f"{path}: not an edgecv checkpoint, state_dict or TorchScript file")


def _torch_load(path: Path, map_location: str, trust_pickle: bool) -> Any:
    """``torch.load`` of a file that is a ``torch.save`` file: tensors and plain values only, unless the user
    trusts it; every failure is one line."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise UserError(
                f"{path} holds pickled Python objects (a whole pickled model?), which can run arbitrary code "
                "when loaded; re-save it as a state_dict, or pass --trust-pickle if you trust its source"
            ) from e
    except Exception as e:
        raise UserError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=False)  # user passed --trust-pickle
    except Exception as e:  # e.g. the pickled model's class is not importable here
        raise UserError(f"{path}: cannot load it even with --trust-pickle ({type(e).__name__}: {_first_line(e)})"
                        ) from None


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else "")[:200]


def _infer_num_classes(sd: dict[str, torch.Tensor]) -> int:
    """The output size of the last 2-D weight (the classifier head) in a state_dict."""
    last = None
    for k, v in sd.items():
        if k.endswith("weight") and v.ndim == 2:
            last = v
    if last is None:
        raise UserError("cannot find a classifier head (a 2-D weight) in the state_dict")
    return int(last.shape[0])
