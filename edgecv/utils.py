"""Small shared helpers: atomic writes and output checks, hashing, progress bars, seeding, devices, JSON."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from edgecv.errors import OutputError, UserError

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


def progress(iterable: Iterable, desc: str = "", total: int | None = None, leave: bool = False):
    """A tqdm bar that stays silent when stderr is not a TTY or ``--quiet`` was given."""
    from tqdm.auto import tqdm

    disable = _QUIET or not sys.stderr.isatty() or env_rank() != 0
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=disable, dynamic_ncols=True)


def env_rank() -> int:
    """The rank torchrun gave this process (``RANK``; 0 when unset or not a number: it only picks who prints).
    :func:`edgecv.distributed.rank` is the one to call; it reads this until the process group is up."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    The temporary file is removed whatever happens, except when the process is killed outright (SIGKILL, power
    loss): ``path`` itself is then never half-written, and the orphan (named ``.<name>.<pid>.<random>.tmp``) is
    removed by the next successful write of ``path`` once its process is gone. A failure to write (an
    :class:`OSError`, or torch's ``RuntimeError`` from a full disk) becomes one
    :class:`~edgecv.errors.OutputError` naming ``path``.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.replace(tmp_path, path)
        _remove_orphans(path)
    except OutputError:
        raise
    except OSError as e:
        raise output_error(path, e) from e
    except RuntimeError as e:  # torch.save reports a full disk as "[enforce fail at inline_container.cc] ..."
        if not any(k in str(e) for k in ("inline_container", "PytorchStreamWriter", "file write failed")):
            raise
        raise output_error(path, e) from e
    finally:
        if tmp_path is not None:
            _remove_quietly(tmp_path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user's process
        return True
    return True


def _remove_orphans(path: Path) -> None:
    """The temporary files of earlier writes of ``path`` whose process no longer runs (killed mid-write)."""
    head = f".{path.name}."
    with contextlib.suppress(OSError):
        for f in path.parent.iterdir():
            pid = f.name[len(head):].split(".", 1)[0] if f.name.startswith(head) and f.name.endswith(".tmp") else ""
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                _remove_quietly(f)


def _remove_quietly(p: Path) -> None:
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def output_error(path: str | os.PathLike, e: BaseException) -> OutputError:
    """The one-line :class:`OutputError` for a failed write of ``path`` (``e``: what the OS or torch said)."""
    path = Path(path)
    anc = _existing_ancestor(path.parent)
    if not anc.is_dir():
        return OutputError(path, f"{anc} is a file, not a directory")
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or _disk_full(anc):
        return OutputError(path, "no space left on device")
    if isinstance(e, OSError):
        what = e.strerror or str(e)
        return OutputError(path, what + (f" ({e.filename})" if e.filename and str(e.filename) != str(path) and
                                         not Path(str(e.filename)).name.startswith(f".{path.name}.") else ""))
    return OutputError(path, str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__)


def _disk_full(d: Path) -> bool:
    try:
        return shutil.disk_usage(d).free == 0
    except OSError:
        return False


def check_writable(path: str | os.PathLike, directory: bool = False) -> Path:
    """Fail before long work when ``path`` (a file, or with ``directory`` a folder) cannot be written.

    Raises :class:`OutputError` for an existing entry of the other kind, a parent path that is a file, a folder
    without write permission (or on a read-only file system) and a full disk. Creates nothing.
    """
    p = Path(path)
    if p.exists() and p.is_dir() != directory:
        raise OutputError(p, "is a directory" if p.is_dir() else "exists and is not a directory")
    anc = _existing_ancestor(p if directory else p.parent)
    if not anc.is_dir():
        raise OutputError(p, f"{anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(p, f"{anc} is not writable")
    if _disk_full(anc):
        raise OutputError(p, "no space left on device")
    return p


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def finite_json(obj: Any) -> Any:
    """A copy of ``obj`` with every non-finite float (NaN, inf) replaced by None: every JSON file and ``--json``
    output of edgecv is strict JSON (no bare ``NaN`` token a strict parser rejects)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, dumps_json(obj) + "\n")


def _json_default(o: Any):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return finite_json(o.tolist())
    if hasattr(o, "to_dict"):
        return finite_json(o.to_dict())
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps_json(obj: Any) -> str:
    return json.dumps(finite_json(obj), indent=2, default=_json_default, allow_nan=False)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def cache_dir() -> Path:
    d = Path(os.environ.get("EDGECV_CACHE", Path.home() / ".cache" / "edgecv"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def stderr_console(width: int = 160):
    """A rich console on stderr; wide enough for the tables when stderr is a file or pipe (no terminal width)."""
    from rich.console import Console

    return Console(stderr=True, width=None if sys.stderr.isatty() else width)


def available_devices() -> list[str]:
    """The torch devices this process can use: ``cpu``, then ``cuda:N`` for each visible GPU (and ``mps``)."""
    import torch

    devs = ["cpu"]
    if torch.cuda.is_available():
        devs += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devs.append("mps")
    return devs


def resolve_device(device: str | None = "auto", check: bool = True):
    """``auto`` (a GPU if one is visible, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a
    :class:`torch.device`; anything else is a :class:`UserError` naming the devices available. ``check``: a
    device that is not there is one too (``check=False`` only parses: torchrun set-up, which maps ranks to GPUs
    itself)."""
    import torch

    name = str(device or "auto").strip()
    if name.lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {name!r}; available here: {', '.join(available_devices())}") from None
    if dev.type == "cpu" or not check:
        return dev
    avail = available_devices()
    if dev.type == "cuda":
        n = len([d for d in avail if d.startswith("cuda:")])
        if n == 0:
            raise UserError(f"device {name!r}: no CUDA GPU is visible here; available: {', '.join(avail)}")
        if dev.index is not None and dev.index >= n:
            raise UserError(f"device {name!r}: only {n} CUDA GPU(s) visible; available: {', '.join(avail)}")
        return dev
    if dev.type in avail:
        return dev
    raise UserError(f"device {name!r} is not available here; available: {', '.join(avail)}")


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this host (``/proc/cpuinfo``; empty where unreadable, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
