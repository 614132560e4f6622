"""Scans spread over processes with ``torch.distributed``, as ``torchrun`` starts them.

Under ``torchrun`` (one process per GPU, or several CPU processes; one or several machines through torchrun's
rendezvous) every process scans its own deterministic shard of the images, the per-channel top-k are merged
with collectives, the projections of the kept hits are shared out, and rank 0 writes the result. The process
group is joined here from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...): NCCL when the
scan runs on CUDA, gloo on the CPU; ``DECONVVIZ_DIST_BACKEND=gloo`` takes gloo on CUDA too (NCCL refuses two
processes on one GPU), the collectives then passing through the CPU. A caller that set up its own process group
keeps it.

Outside torchrun, everything here is the one-process case: rank 0 of 1, and the collectives return their input.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

_OWNED = False  # whether this module started the process group (and so should end it)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the group.

    Attributes:
        rank: this process's rank.
        world: number of processes.
        local_rank: its rank on this machine (picks its GPU).
        device: where tensors handed to collectives live (the GPU for NCCL, else the CPU).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def spread(self) -> bool:
        """Whether more than one process takes part."""
        return self.world > 1


def launched() -> bool:
    """Whether this process was started by torchrun as one of several (``WORLD_SIZE`` above 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def local_rank() -> int:
    """This process's rank on its machine (0 outside torchrun)."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def rank_device(device: str) -> str:
    """The device of this process: under torchrun, ``cuda`` means the GPU of its local rank.

    With more processes than GPUs on the machine, the processes share the GPUs in turn (rank ``r`` takes GPU
    ``r % count``).
    """
    if launched() and device == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return f"cuda:{local_rank() % count if count else local_rank()}"
    return device


BACKEND_VARIABLE = "DECONVVIZ_DIST_BACKEND"
"""Environment variable naming the process group's backend (``nccl`` or ``gloo``) instead of the device's."""


def _sharing_gpus() -> tuple[int, int] | None:
    """``(processes, GPUs)`` on this machine when torchrun started more processes here than it has GPUs."""
    try:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return (processes, count) if count and processes > count else None


def backend_for(device: torch.device | str) -> str:
    """The backend of the process group: ``$DECONVVIZ_DIST_BACKEND`` if set, else NCCL on CUDA and gloo elsewhere.

    NCCL refuses two processes on one GPU, so with more processes than GPUs on the machine (``rank_device`` then
    shares them in turn) gloo is chosen on CUDA too, with a warning from the first process.

    Raises:
        ValueError: the variable names another backend, or NCCL for a scan on the CPU.
    """
    device = torch.device(device)
    chosen = os.environ.get(BACKEND_VARIABLE, "").strip().lower()
    if not chosen:
        if device.type != "cuda":
            return "gloo"
        shared = _sharing_gpus()
        if shared is None:
            return "nccl"
        if os.environ.get("RANK", "0") == "0":
            warnings.warn(
                f"{shared[0]} processes share {shared[1]} GPU(s) on this machine and NCCL takes one process per GPU; "
                f"gloo gathers the results instead (set {BACKEND_VARIABLE}=nccl to try NCCL all the same)",
                stacklevel=2,
            )
        return "gloo"
    if chosen not in ("nccl", "gloo"):
        raise ValueError(f"{BACKEND_VARIABLE}={chosen!r} is not a backend: use nccl or gloo")
    if chosen == "nccl" and device.type != "cuda":
        raise ValueError(f"{BACKEND_VARIABLE}=nccl needs the scan on CUDA, not on {device}: use gloo")
    return chosen


def setup(device: torch.device | str) -> Ranks:
    """Join torchrun's process group (once per process) and say where this process stands.

    Args:
        device: where the scan runs; CUDA selects the NCCL backend and this process's GPU, anything else gloo.

    Returns:
        The :class:`Ranks` (rank 0 of 1 outside torchrun).
    """
    import torch.distributed as dist

    global _OWNED
    if not dist.is_available():
        return Ranks()
    device = torch.device(device)
    if not dist.is_initialized():
        if not launched():
            return Ranks()
        if device.type == "cuda":
            torch.cuda.set_device(device.index if device.index is not None else local_rank())
        dist.init_process_group(backend=backend_for(device))
        _OWNED = True
    backend = str(dist.get_backend()).lower()
    if "nccl" in backend:
        where = torch.device("cuda", torch.cuda.current_device())
    else:
        where = torch.device("cpu")
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank(), device=where)


def shutdown() -> None:
    """Leave the process group, if :func:`setup` started it."""
    import torch.distributed as dist

    global _OWNED
    if _OWNED and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED = False


def all_gather(tensor: Tensor, ranks: Ranks) -> list[Tensor]:
    """Every rank's ``tensor`` (same shape and dtype on all ranks), in rank order, on the collectives' device."""
    if not ranks.spread:
        return [tensor]
    import torch.distributed as dist

    local = tensor.to(ranks.device).contiguous()
    out = [torch.empty_like(local) for _ in range(ranks.world)]
    dist.all_gather(out, local)
    return out


def all_gather_objects(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order."""
    if not ranks.spread:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj: Any, ranks: Ranks, dst: int = 0) -> list[Any] | None:
    """Every rank's picklable ``obj`` on rank ``dst`` (in rank order); None on the other ranks."""
    if not ranks.spread:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * ranks.world if ranks.rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj: Any, ranks: Ranks, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if not ranks.spread:
        return obj
    import torch.distributed as dist

    box = [obj if ranks.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(ranks: Ranks) -> None:
    """Wait until every rank gets here."""
    if ranks.spread:
        import torch.distributed as dist

        dist.barrier()


__all__ = [
    "BACKEND_VARIABLE",
    "Ranks",
    "all_gather",
    "all_gather_objects",
    "backend_for",
    "barrier",
    "broadcast_object",
    "gather_objects",
    "launched",
    "local_rank",
    "rank_device",
    "setup",
    "shutdown",
]


def batches(count: int, batch_size: int, ranks: Ranks) -> list[list[int]]:
    """This process's batches: batch ``b`` of the whole scan goes to rank ``b % world``.

    Every batch holds the same images whatever the number of processes, so each image's activations are
    computed exactly as in a one-process scan.
    """
    starts = range(ranks.rank * batch_size, count, ranks.world * batch_size)
    return [list(range(start, min(start + batch_size, count))) for start in starts]
