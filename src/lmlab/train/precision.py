"""``train.dtype = "auto"`` on a CPU: bfloat16 autocast where it trains this model faster.

On a processor with native bfloat16 arithmetic (AMX or AVX512-BF16: Intel Sapphire Rapids
and later, AMD Zen 4 and later) the matrix multiplies of a training step run several times
faster in bf16 than in fp32, while the casts autocast adds cost the same in both; so bf16
wins for models with large matrices (1.9x for a ~10M LLaMA on a 2-core Sapphire Rapids,
bench/RESULTS.md) and can lose for tiny ones (shakespeare-char's 0.8M, where the step is
op overhead). Without native bf16 the CPU emulates it and fp32 is faster.

:func:`pick_cpu_train_dtype` therefore measures, as :mod:`lmlab.model.layout` does for
decoding: a few forward+backward passes of a copy of the model on a random batch of the run's
shape, alternating fp32 and bf16 autocast, best of each; bf16 is kept when it is at least
``MIN_GAIN`` faster in both wall and CPU time. The training RNG is untouched (the passes run under
``torch.random.fork_rng`` on a copy). The decision is cached for the process (a sweep measures
once per shape) and the loop records it in the run folder (``precision.json``), so a resumed
run keeps the precision it started with.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.device import autocast, cpu_has_native_bf16

MIN_GAIN = 1.1  # bf16 must be this many times faster: a near tie keeps fp32's precision
# After MIN_ROUNDS alternated rounds the probe stops once both ratios clear MIN_GAIN by this
# factor either way: more rounds only refine a decision they cannot turn (shakespeare-char's
# model measured 1.29x in 3 rounds and took 10, 0.6 s of every run's start-up)
CLEAR_MARGIN = 1.15
MIN_ROUNDS = 3
_CACHE: dict[tuple, dict[str, Any]] = {}
__all__ = ["cpu_has_native_bf16", "measure_cpu_train_dtype", "pick_cpu_train_dtype"]


def _pass_seconds(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype, fused: bool
) -> tuple[float, float]:
    """(wall, CPU) seconds of one forward+backward; CPU time is this process's, all threads."""
    device = x.device
    t0, c0 = time.perf_counter(), time.process_time()
    with autocast(device, dtype):
        if fused:
            loss = model(x, targets=y)
        else:
            loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(), reduction="sum")
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, time.process_time() - c0


def measure_cpu_train_dtype(
    model: torch.nn.Module, batch: int, seq_len: int, vocab: int, fused: bool, budget_s: float = 2.0
) -> dict[str, Any]:
    """Best-of wall and CPU seconds per forward+backward in fp32 and bf16 autocast, and the pick.

    A warm-up round, then rounds alternating the two until about ``budget_s`` of wall time has
    gone (2 to 10 rounds), or, from ``MIN_ROUNDS`` on, until the decision is clear
    (:func:`_clear`). bf16 is picked only when it is ``MIN_GAIN`` times faster in both wall
    and CPU time: on a machine shared with other jobs one of the two alone can be off."""
    probe = copy.deepcopy(model).train()
    device = next(probe.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, vocab, (batch, seq_len + 1), generator=gen).to(device)
    x, y = x[:, :-1], x[:, 1:]
    wall = {"float32": float("inf"), "bfloat16": float("inf")}
    cpu = dict(wall)
    dtypes = (("float32", torch.float32), ("bfloat16", torch.bfloat16))
    with torch.random.fork_rng(devices=[]):
        for _, dtype in dtypes:  # warm-up: allocator, kernels, autocast's casts
            _pass_seconds(probe, x, y, dtype, fused)
        t0, rounds = time.perf_counter(), 0
        while rounds < 2 or (rounds < 10 and time.perf_counter() - t0 < budget_s):
            for name, dtype in dtypes:
                w, c = _pass_seconds(probe, x, y, dtype, fused)
                wall[name], cpu[name] = min(wall[name], w), min(cpu[name], c)
            rounds += 1
            if rounds >= MIN_ROUNDS and _clear(wall, cpu):
                break
    faster = all(_gain(t) >= MIN_GAIN for t in (wall, cpu))
    return {
        "dtype": "bfloat16" if faster else "float32",
        "seconds_per_pass": wall,
        "cpu_seconds_per_pass": cpu,
        "rounds": rounds,
        "min_gain": MIN_GAIN,
        "batch": [batch, seq_len],
    }


def _gain(seconds: dict[str, float]) -> float:
    """How many times faster bf16 autocast ran than fp32."""
    return seconds["float32"] / seconds["bfloat16"]


def _clear(wall: dict[str, float], cpu: dict[str, float]) -> bool:
    """True when both gains clear ``MIN_GAIN`` by ``CLEAR_MARGIN`` (bf16), or either falls
    short of it by that factor (fp32)."""
    gains = (_gain(wall), _gain(cpu))
    return min(gains) >= MIN_GAIN * CLEAR_MARGIN or min(gains) <= MIN_GAIN / CLEAR_MARGIN


def pick_cpu_train_dtype(
    model: torch.nn.Module, batch: int, seq_len: int, vocab: int, fused: bool
) -> dict[str, Any]:
    """:func:`measure_cpu_train_dtype` once per (model shape, batch) in this process; fp32
    without measuring when the CPU has no native bf16."""
    if not cpu_has_native_bf16():
        return {"dtype": "float32", "reason": "no native bf16 on this CPU (amx_bf16 / avx512_bf16)"}
    cfg = getattr(model, "config", None)
    key = (repr(cfg), type(model).__name__, batch, seq_len, fused, torch.get_num_threads())
    if key not in _CACHE:
        _CACHE[key] = measure_cpu_train_dtype(model, batch, seq_len, vocab, fused)
    return dict(_CACHE[key])
