"""Micro-batches that fit the device: probe before training, halve on out-of-memory during it.

``train.micro_batch_size = 0`` asks for the largest micro-batch that fits. On CUDA the trainer
probes forward + backward at growing micro-batches (1, 2, 4, ... then a bisection between the
last size that fit and the first that did not), catching ``torch.OutOfMemoryError`` and
releasing what the failed try allocated, with the optimizer's state reserved so the first real
step does not run out. It then takes the largest divisor of the per-process batch at or below
that size, so ``train.batch_size`` is kept exactly by accumulation. On the CPU there is no
out-of-memory signal to probe (the kernel kills the process instead), so 0 there means the
whole per-process batch, as before.

The same logic runs on the CPU under an injected limit: :func:`set_fake_limit` installs a
:class:`MemoryMeter`, a dispatch mode that counts the bytes of every tensor storage created
while it is active (freed ones are subtracted when their storage dies) on top of what the
parameters, gradients and optimizer state already hold, and raises ``torch.OutOfMemoryError``
past the limit, as the CUDA allocator would. Tests and ``bench/gpu/check.sh --cpu-dry-run`` use it.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# bytes; None: no injected limit (real devices report their own out-of-memory)
_FAKE_LIMIT: float | None = None


def set_fake_limit(limit_bytes: float | None) -> None:
    """Pretend the device holds ``limit_bytes`` (CPU tests); None removes the limit."""
    global _FAKE_LIMIT
    _FAKE_LIMIT = limit_bytes


def fake_limit() -> float | None:
    return _FAKE_LIMIT


def can_probe(device: torch.device) -> bool:
    """True where an out-of-memory can be caught: CUDA, or any device under an injected limit."""
    return device.type == "cuda" or _FAKE_LIMIT is not None


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[int, set[int]]:
    """Bytes (and storage keys) of this rank's parameters, gradients and optimizer state."""
    keys: set[int] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        loc = _local(t)
        key = _storage_key(loc)
        if key not in keys:
            keys.add(key)
            total += loc.untyped_storage().nbytes()

    for p in model.parameters():
        add(p)
        if p.grad is not None:
            add(p.grad)
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    add(v)
    return total, keys


def optimizer_reserve(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes AdamW will add at its first step (two fp32 moments per trainable value); 0 once it has state."""
    if optimizer is not None and optimizer.state:
        return 0
    n = sum(
        _local(p).numel()
        for p in {id(p): p for p in model.parameters() if p.requires_grad}.values()
    )
    return 8 * n


class MemoryMeter(TorchDispatchMode):
    """Count live bytes of tensors created under it (plus ``baseline``); OOM past ``limit``."""

    def __init__(self, limit: float, baseline: float = 0.0, external: set[int] | None = None):
        super().__init__()
        self.limit, self.baseline = limit, baseline
        self.external = external or set()  # storages that existed before (already in baseline)
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.is_meta:
                continue
            storage = t.untyped_storage()
            key, size = storage._cdata, storage.nbytes()
            if size == 0 or key in self.live or key in self.external:
                continue
            self.live[key] = size
            self.current += size
            weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        if self.baseline + self.current > self.limit:
            raise torch.OutOfMemoryError(
                f"injected memory limit: {self.baseline + self.current:.0f} bytes > {self.limit:.0f}"
            )
        return out


@contextlib.contextmanager
def watch(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, reserve: int = 0
) -> Iterator[MemoryMeter | None]:
    """Enforce the injected limit (if any) over the block; a no-op on real devices."""
    if _FAKE_LIMIT is None:
        yield None
        return
    held, keys = held_bytes(model, optimizer)
    meter = MemoryMeter(_FAKE_LIMIT, held + reserve, keys)
    with meter:
        yield meter


def release(model: nn.Module, device: torch.device) -> None:
    """Drop gradients and cached blocks after an out-of-memory, so the next try starts clean."""
    for p in model.parameters():
        p.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def largest_fitting(fits: Callable[[int], bool], upper: int) -> int:
    """The largest ``n`` in [1, upper] with ``fits(n)`` (0 if not even 1 fits), assuming monotone.

    1, 2, 4, ... until a size fails or ``upper`` is reached, then bisection in between.
    """
    good, bad = 0, upper + 1
    n = 1
    while n <= upper:
        if fits(n):
            good = n
            if n == upper:
                return n
            n = min(2 * n, upper)
        else:
            bad = n
            break
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is <= ``limit`` (at least 1)."""
    for d in range(max(1, min(n, limit)), 0, -1):
        if n % d == 0:
            return d
    return 1


def split_batches(
    batches: Iterable[tuple[Any, torch.Tensor]], size: int
) -> Iterator[tuple[Any, torch.Tensor]]:
    """The same (x, y) rows in batches of at most ``size`` (sums over them are unchanged)."""
    for x, y in batches:
        for i in range(0, len(y), size):
            part = (
                {k: v[i : i + size] for k, v in x.items()}
                if isinstance(x, dict)
                else x[i : i + size]
            )
            yield part, y[i : i + size]


def probe_micro_batch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step_fn: Callable[[int], None],
    upper: int,
    device: torch.device,
) -> int:
    """The largest micro-batch up to ``upper`` whose ``step_fn(n)`` (forward + backward) fits.

    The optimizer's first-step state is reserved during each try (a real allocation on CUDA,
    counted by the meter under an injected limit).
    """
    reserve = optimizer_reserve(model, optimizer)

    def fits(n: int) -> bool:
        held = None
        try:
            if device.type == "cuda" and reserve:
                held = torch.empty(reserve, dtype=torch.uint8, device=device)
            with watch(model, optimizer, 0 if held is not None else reserve):
                step_fn(n)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            del held
            release(model, device)

    return largest_fitting(fits, upper)
