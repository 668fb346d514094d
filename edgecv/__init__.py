"""edgecv: distill, prune, quantize, export and benchmark image classifiers for edge targets.

The Python API (:mod:`edgecv.api`, docs/api.md) is imported on first use, so ``import edgecv`` stays cheap::

    import edgecv
    edgecv.train("digits", "resnet18", "teacher.pt", epochs=3)
    run = edgecv.compress(teacher="teacher.pt", data="digits", out="runs/r1")
"""

from __future__ import annotations

import importlib
import types

__version__ = "0.1.0"

_API = ("train", "compress", "export", "bench", "gate", "predict", "load_predictor", "serve")
_ERRORS = ("EdgecvError", "UserError", "OutputError", "CheckFailed", "TrainingError")
__all__ = [*_API, *_ERRORS, "__version__"]


class _CallablePackage(types.ModuleType):
    """A sub-package named like an API function: ``edgecv.compress`` is the package (``edgecv.compress.config``)
    and, called, :func:`edgecv.api.compress`. Python binds a sub-package to its parent's attribute on import,
    so a plain function of that name would be replaced by the package as soon as anything imported it."""

    def __call__(self, *args, **kwargs):
        return getattr(importlib.import_module("edgecv.api"), self.__name__.rpartition(".")[2])(*args, **kwargs)


for _name in ("compress", "export", "bench", "serve"):  # their __init__ modules are empty: importing them is free
    importlib.import_module(f"{__name__}.{_name}").__class__ = _CallablePackage


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module("edgecv.api"), name)
    if name in _ERRORS:
        return getattr(importlib.import_module("edgecv.errors"), name)
    raise AttributeError(f"module 'edgecv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
