"""Multi-process training under ``torchrun``: process group setup and small collectives.

``torchrun --nproc_per_node=N -m lmlab train cfg.toml`` sets RANK, WORLD_SIZE and LOCAL_RANK;
:func:`setup` then joins the process group (NCCL on CUDA, gloo on CPU). Without those
variables everything here degrades to single-process no-ops, so the training loop has one
code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """Rank information from torchrun's environment (single process when absent)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    return Dist(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    )


def under_torchrun() -> bool:
    """True when torchrun (or another launcher setting RANK and WORLD_SIZE) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup(info: Dist, device: torch.device, force: bool = False) -> None:
    """Join the process group under torchrun with more than one process (or one, with ``force``).

    The rendezvous is torchrun's: ``--standalone`` on one machine, ``--nnodes N
    --rdzv-backend c10d --rdzv-endpoint HOST:PORT`` across machines; either way RANK is the
    global rank, so each rank's share of the data follows from RANK and WORLD_SIZE alone.
    """
    if not (info.enabled or (force and under_torchrun())) or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, info: Dist, device: torch.device) -> torch.nn.Module:
    if not info.enabled:
        return model

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def all_reduce_sum(values: list[float], info: Dist, device: torch.device) -> list[float]:
    """Sum a few floats over ranks (identity in one process); one collective call."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(values: list[float], info: Dist, device: torch.device) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def gather_objects(obj: Any, info: Dist) -> list[Any]:
    """Every rank's ``obj`` on every rank (a list of one in a single process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: Dist) -> None:
    if info.enabled:
        dist.barrier()
