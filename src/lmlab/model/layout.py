"""Weight memory layout of linear layers, chosen by measurement for CPU decoding.

Decoding one token at a time multiplies each weight matrix by a single vector, and reads
every weight from memory once per token: the speed is the matrix-vector kernel's memory
throughput. Which layout of the same weight the BLAS streams faster depends on the library
and the processor: with MKL on an AMD EPYC (this project's 2-core development machine) a
column-major weight, ``W`` stored as ``W.T`` contiguous, decodes faster than PyTorch's usual
row-major ``(out, in)`` (bench/RESULTS.md), while training GEMMs run at about the same speed
in either.

:func:`pick_decode_layout` times a few real decode steps of the model in both layouts and
keeps the faster. The values are unchanged (only strides differ), so checkpoints, export
and ``state_dict`` are unaffected; weights shared with an embedding stay row-major, which
the embedding lookup needs.
"""

from __future__ import annotations

import time

import torch
from torch import nn

LAYOUTS = ("row", "col")


def _linears(model: nn.Module) -> list[nn.Linear]:
    shared = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [m for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) not in shared]


def linear_layout(model: nn.Module) -> str:
    """``row`` or ``col``: the layout of the model's (unshared) linear weights."""
    lins = _linears(model)
    if lins and all(
        m.weight.stride() == (1, m.weight.shape[0]) for m in lins if m.weight.shape[0] > 1
    ):
        return "col"
    return "row"


@torch.no_grad()
def set_linear_layout(model: nn.Module, layout: str) -> None:
    """Store every unshared linear weight row-major (``row``, PyTorch's default) or
    column-major (``col``); the Parameter objects and their values stay the same."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected row or col, got {layout!r}")
    for m in _linears(model):
        w = m.weight.data
        m.weight.data = w.contiguous() if layout == "row" else w.t().contiguous().t()


@torch.no_grad()
def _decode_seconds(model: nn.Module, batch_size: int, steps: int) -> float:
    """Best-of wall time of one cached decode step (after a short prefill)."""
    device = next(model.parameters()).device
    cache = model.new_kv_cache(batch_size, steps + 9, device=device)
    model(torch.zeros((batch_size, 8), dtype=torch.long, device=device), kv_cache=cache)
    ids = torch.zeros((batch_size, 1), dtype=torch.long, device=device)
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        model(ids, kv_cache=cache)
        best = min(best, time.perf_counter() - t0)
    return best


def pick_decode_layout(model: nn.Module, batch_size: int = 1, steps: int = 4) -> str:
    """On the CPU, leave ``model``'s linear weights in whichever layout decodes faster here
    (measured: ``steps`` decode steps per layout, twice, best of) and return it; elsewhere,
    or for a model without a KV cache, leave it as it is."""
    device = next(model.parameters()).device
    if (
        device.type != "cpu"
        or not getattr(model, "supports_kv_cache", False)
        or not _linears(model)
    ):
        return linear_layout(model)
    was_training = model.training
    model.eval()
    try:
        times = dict.fromkeys(LAYOUTS, float("inf"))
        for _ in range(2):  # alternate, so a burst of other load does not decide it
            for layout in LAYOUTS:
                set_linear_layout(model, layout)
                times[layout] = min(times[layout], _decode_seconds(model, batch_size, steps))
        best = min(LAYOUTS, key=lambda k: times[k])
        set_linear_layout(model, best)
        return best
    finally:
        model.train(was_training)
