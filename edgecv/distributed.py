"""torchrun / DistributedDataParallel support. A no-op in a plain single process.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`init` creates the process group: nccl on CUDA, gloo on CPU.
Only rank 0 writes files; metrics are all-reduced; decisions (pruning) are broadcast from rank 0.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edgecv import utils
from edgecv.errors import UserError

if TYPE_CHECKING:  # torch is imported where a collective runs, so that the CLI can import this module cheaply
    import torch


# ---------------------------------------------------------------------------------------------- torchrun's environment
def _env_int(name: str, default: int, low: int) -> int:
    """An integer torchrun puts in the environment: unset or empty is ``default``; anything else must be an
    integer >= ``low``, else one UserError line naming the variable (exit 2, not a traceback)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low:
        raise UserError(f"{name}={raw!r} is not an integer >= {low} (torchrun sets it; unset it to run in one "
                        "process)")
    return value


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun set it: the processes of this job (unset, empty, 0 or 1: one process)."""
    return _env_int("WORLD_SIZE", 1, 0)


def launched_by_torchrun() -> bool:
    """True when this process is one of several that torchrun started (``WORLD_SIZE`` > 1)."""
    return env_world_size() > 1


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0, 0)


def local_world_size() -> int:
    """Processes on this node (torchrun's ``--nproc-per-node``)."""
    return _env_int("LOCAL_WORLD_SIZE", max(1, env_world_size()), 1)


# ---------------------------------------------------------------------------------------------- the process group
def _group():
    """``torch.distributed`` when a process group is up, else None (without importing torch: no torch, no group)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    return g.get_world_size() if (g := _group()) else 1


def rank() -> int:
    """This process's rank: the process group's once it is up, before that the one torchrun gave it (``RANK``),
    0 in a plain process. Only rank 0 logs, writes files and shows progress bars."""
    return g.get_rank() if (g := _group()) else utils.env_rank()


def is_main() -> bool:
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def init(device: str = "auto") -> torch.device:
    """Initialise the process group when launched by torchrun; return this process's device.

    nccl with one GPU per process (``LOCAL_RANK``) on CUDA, gloo on CPU (each process then gets its share of
    this node's cores as intra-op threads). Outside torchrun (or with ``WORLD_SIZE=1``) nothing happens.
    """
    import torch
    import torch.distributed as dist

    dev = resolve_device(device)
    if launched_by_torchrun() and not dist.is_initialized():
        lr = local_rank()
        if dev.type == "cuda":
            n = torch.cuda.device_count()
            if lr >= n:
                raise UserError(f"torchrun started {local_world_size()} processes on this node but only {n} "
                                f"CUDA device(s) are visible: use --nproc-per-node {n} (or --device cpu)")
            torch.cuda.set_device(lr)
            dev = torch.device("cuda", lr)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
            torch.set_num_threads(max(1, _usable_cores() // max(1, local_world_size())))
    elif dev.type == "cuda" and dist.is_initialized():
        dev = torch.device("cuda", local_rank())
    return dev


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[torch.device]:
    """:func:`init` ... :func:`shutdown` around a run (``edgecv train`` / ``compress`` and their API functions);
    yields this process's device. A no-op outside torchrun."""
    dev = init(device)
    try:
        yield dev
    finally:
        shutdown()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` | cpu | cuda | cuda:N, parsed (an unknown name is a UserError naming the devices available).
    Whether it is there is checked where the device is used (:func:`edgecv.utils.resolve_device`)."""
    return utils.resolve_device(device, check=False)


def shutdown() -> None:
    if dist := _group():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        _group().barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist = _group()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. a pruning decision)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    _group().broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (observers, BN statistics...)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        _group().broadcast(t.data, src=src)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics, observers...) to every rank.

    DDP (``broadcast_buffers=True``) broadcasts rank 0's buffers at the *start* of every forward, so after the
    last training step of an epoch each rank's BatchNorm statistics differ by that step's local update. Call
    this before evaluating/saving so that every rank holds exactly the same model.
    """
    if not is_distributed():
        return
    for t in module.buffers():
        _group().broadcast(t.data, src=src)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if ``flag`` is true on any rank (collective: every rank must call it)."""
    if not is_distributed():
        return bool(flag)
    import torch

    dist = _group()
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return bool(t.item() > 0)
