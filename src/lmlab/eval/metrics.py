"""Language-model metrics: loss, perplexity, next-token accuracy, bits per byte.

Over a set of windows the model predicts every token after the first of each window:

- ``val_loss``    mean cross-entropy in nats per predicted token;
- ``perplexity``  ``exp(val_loss)``;
- ``accuracy``    fraction of predicted tokens whose argmax is the target;
- ``bits_per_byte`` summed nats / (ln 2 * UTF-8 bytes of the text evaluated). It compares models
  with different tokenizers. For the whole val split the byte count is ``splits.val.bytes`` from
  the dataset's meta.json (the eot separators carry no bytes; their loss is counted, as in
  nanochat). When only sampled batches are evaluated, the bytes are estimated as
  ``tokens_evaluated * splits.val.bytes / splits.val.tokens``, the split's average.

``lmlab eval`` defaults to the whole val split in contiguous non-overlapping windows; with
``--batches N`` it uses N fixed random batches (the same ones training evaluates on).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.data.batches import bytes_per_token, val_windows
from lmlab.data.loader import TokenSplit
from lmlab.data.shards import read_meta
from lmlab.device import autocast, inputs_to, resolve_device, resolve_dtype
from lmlab.errors import DataError
from lmlab.model import forward
from lmlab.runs import load_model, read_state

LN2 = math.log(2.0)


@torch.no_grad()
def evaluate_batches(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Sums over ``batches``: ``nats`` (summed loss), ``tokens`` (predicted), ``correct``, ``batches``.

    ``stop`` (a deadline) is asked before every batch after the first: once it says True the
    remaining batches are left out and ``stopped`` is True."""
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.int64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    stopped = False
    for x, y in batches:
        if n and stop is not None and stop():
            stopped = True
            break
        x, y = inputs_to(x, device), y.to(device)
        with autocast(device, dtype):
            logits = forward(model, x)
        logits = logits.float().flatten(0, 1)
        target = y.flatten()
        nats += F.cross_entropy(logits, target, ignore_index=-100, reduction="sum").double()
        mask = target != -100
        tokens += mask.sum()
        correct += ((logits.argmax(-1) == target) & mask).sum()
        n += 1
    model.train(was_training)
    return {
        "nats": nats.item(),
        "tokens": int(tokens.item()),
        "correct": int(correct.item()),
        "batches": n,
        "stopped": stopped,
    }


def summarize(sums: dict[str, float], n_bytes: float | None) -> dict[str, Any]:
    """Sums -> ``val_loss``, ``perplexity``, ``accuracy``, ``bits_per_byte`` (None without bytes).

    The one val computation: ``lmlab eval`` and the training loop's evals both call it (a
    perplexity past exp(700) is capped there, so metrics.jsonl stays finite JSON)."""
    tokens = sums["tokens"]
    if tokens == 0:
        raise DataError("nothing to evaluate: no target tokens")
    loss = sums["nats"] / tokens
    return {
        "val_loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "accuracy": sums["correct"] / tokens,
        "bits_per_byte": sums["nats"] / (LN2 * n_bytes) if n_bytes else None,
        "tokens": tokens,
        "bytes": n_bytes,
    }


def evaluate_path(
    run_or_ckpt: str | Path,
    data: str | None = None,
    batches: int | None = None,
    device: str = "auto",
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Evaluate a run (its latest checkpoint) or a checkpoint on a dataset's val split.

    With ``stop`` (a deadline, asked between batches) the evaluation may end early; the result
    then says so (``stopped``, ``whole_split`` False, the batches done) and its bits per byte
    use the split's average bytes per token, as for sampled batches."""

    dev = resolve_device(device)
    model, cfg, ckpt = load_model(run_or_ckpt, dev)
    data_path = Path(data or cfg.data.path)
    meta = read_meta(data_path)
    if "val" not in meta["splits"]:
        raise DataError(f"{data_path / 'meta.json'}: no val split to evaluate")
    if int(meta.get("vocab_size", 0)) > cfg.model.vocab_size:
        raise DataError(
            f"{data_path / 'meta.json'}: vocab_size {meta['vocab_size']} exceeds the model's {cfg.model.vocab_size}"
        )
    split = TokenSplit(data_path, "val", meta)
    t = cfg.train
    seq_len = cfg.eval_context_length
    bsz = cfg.eval_batch_size
    dtype = resolve_dtype(t.dtype if dev.type != "cpu" else "float32", dev)
    # the windows training evaluates on (fixed batches), or the whole split
    windows = val_windows(split, seq_len, bsz, batches or 0, t.seed, device=dev)
    sums = evaluate_batches(model, windows, dev, dtype, stop=stop)
    whole = not batches and not sums["stopped"]
    if not whole:  # sampled windows, or a prefix of the split: its average bytes per token
        ratio = bytes_per_token(split)
        n_bytes = sums["tokens"] * ratio if ratio else None
    else:
        n_bytes = split.n_bytes or None
    result = summarize(sums, n_bytes)
    result.update(
        {
            "checkpoint": str(ckpt),
            "step": read_state(ckpt).get("step"),
            "data": str(data_path),
            "split": "val",
            "whole_split": whole,
            "batches": sums["batches"],
            "stopped": sums["stopped"],
        }
    )
    return result


def format_metrics(m: dict[str, Any]) -> str:
    """A short human-readable table of :func:`evaluate_path`'s result."""
    bpb = m.get("bits_per_byte")
    if m.get("whole_split"):
        scope = "whole val split"
    elif m.get("stopped"):
        scope = f"{m.get('batches')} batches: stopped at the deadline"
    else:
        scope = f"{m.get('batches')} sampled batches"
    lines = [
        f"checkpoint     {m.get('checkpoint')} (step {m.get('step')})",
        f"data           {m.get('data')} ({scope})",
        f"val loss       {m['val_loss']:.4f}",
        f"perplexity     {m['perplexity']:.3f}",
        f"accuracy       {100 * m['accuracy']:.2f}%",
        f"bits per byte  {bpb:.4f}"
        if bpb is not None
        else "bits per byte  n/a (dataset records no byte count)",
        f"tokens         {m['tokens']:,}",
    ]
    return "\n".join(lines)
