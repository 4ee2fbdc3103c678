"""Refuse a training run that cannot fit in memory, before the model is allocated.

A config such as ``--model.context_length=100000000`` used to be found out by the kernel's
OOM killer (22 GB into building the RoPE tables) or by a CUDA out-of-memory traceback. The
estimate is :func:`lmlab.accounting.training_memory` (weights, gradients, AdamW moments and
the activations of one micro-batch) plus the model's buffers; it leaves out allocator
overhead, so a run it lets through can still fail, but one it refuses cannot fit.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lmlab.accounting import training_memory
from lmlab.config import Config, ModelConfig
from lmlab.errors import ConfigError

# cgroup v2 and v1 limits: a container sees the host's MemAvailable but may hold far less
# (limit, usage, stat file, its reclaimable page-cache field): usage counts the page cache,
# which the kernel gives back, so the in-use figure is usage minus inactive file pages
_CGROUP_LIMITS = (
    (
        Path("/sys/fs/cgroup/memory.max"),
        Path("/sys/fs/cgroup/memory.current"),
        Path("/sys/fs/cgroup/memory.stat"),
        "inactive_file",
    ),
    (
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
        Path("/sys/fs/cgroup/memory/memory.stat"),
        "total_inactive_file",
    ),
)


def _stat_field(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def host_available_bytes() -> int | None:
    """Memory this process can still take: MemAvailable, capped by a cgroup limit; None if unknown."""
    avail: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit_file, usage_file, stat_file, cache_field in _CGROUP_LIMITS:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            in_use = max(usage - _stat_field(stat_file, cache_field), 0)
            avail = min(avail, max(limit - in_use, 0))
            break
    return avail


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: the device's free memory; CPU: the host's); None if unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:
            return None
    if device.type == "cpu":
        return host_available_bytes()
    return None  # mps shares host memory in ways this estimate does not model


def buffer_bytes(m: ModelConfig) -> float:
    """Bytes of non-parameter tensors the model allocates at build time: the RoPE tables."""
    if m.position != "rope" or m.arch == "bigram":
        return 0.0
    head_dim = m.d_model if m.arch == "one_head" else m.d_model // m.n_head
    return 2.0 * m.context_length * (head_dim // 2) * 4  # cos and sin, float32


def training_bytes(m: ModelConfig, micro_batch: int, compute_dtype: str) -> float:
    """lmlab.accounting's training memory for one micro-batch, plus the model's buffers."""
    return training_memory(m, micro_batch, m.context_length, compute_dtype)["total"] + buffer_bytes(
        m
    )


def _gib(x: float) -> str:
    return f"{x / 2**30:,.1f} GiB"


def check_training_fits(
    cfg: Config,
    micro_batch: int,
    device: torch.device,
    dtype: torch.dtype,
    available: int | None = None,
) -> None:
    """ConfigError naming the estimate and the free memory when training ``cfg`` cannot fit.

    ``available`` replaces the measured free memory (tests). Architectures the accounting does
    not model (the encoder-decoder) are not checked.
    """
    m = cfg.model
    if m.arch == "encdec" or m.vocab_size <= 0:
        return
    compute = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "float32")
    need = training_bytes(m, micro_batch, compute)
    have = available if available is not None else available_bytes(device)
    if have is None or need <= have:
        return
    raise ConfigError(
        f"model.context_length={m.context_length}, micro-batch {micro_batch}: training needs about {_gib(need)} "
        f"(weights, gradients, AdamW state, activations; `lmlab account` shows the parts) but {device} has "
        f"{_gib(have)} free; lower model.context_length, train.micro_batch_size or the model size"
    )
