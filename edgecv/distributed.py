"""torchrun / DistributedDataParallel support. A no-op in a plain single process.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`init` creates the process group: nccl on CUDA, gloo on CPU.
Only rank 0 writes files; metrics are all-reduced; decisions (pruning) are broadcast from rank 0.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from edgecv import utils
from edgecv.errors import UserError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this node (torchrun's ``--nproc-per-node``)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


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


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` | cpu | cuda | cuda:N, parsed (an unknown name is a UserError naming the devices available).
    Whether it is there is checked where the device is used (:func:`edgecv.utils.resolve_device`)."""
    return utils.resolve_device(device, check=False)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. a pruning decision)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (observers, BN statistics...)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics, observers...) to every rank.

    DDP (``broadcast_buffers=True``) broadcasts rank 0's buffers at the *start* of every forward, so after the
    last training step of an epoch each rank's BatchNorm statistics differ by that step's local update. Call
    this before evaluating/saving so that every rank holds exactly the same model.
    """
    if not is_distributed():
        return
    for t in module.buffers():
        dist.broadcast(t.data, src=src)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if ``flag`` is true on any rank (collective: every rank must call it)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return bool(t.item() > 0)
