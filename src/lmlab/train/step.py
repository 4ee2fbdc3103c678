"""One optimizer step: forward/backward over this rank's micro-batches, clip, spike guard, update.

:func:`train_step` is the loop's only contact with the model during training (the
``train_step`` / ``forward_backward_step`` split of torchtitan). It returns the step's loss and
gradient norm as device tensors, so a caller that does not look at them forces no host sync.
The loss of a micro-batch is summed over its targets and divided by the global target count,
so any split of the same global batch into processes and micro-batches computes the same update.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from lmlab.config import Config
from lmlab.data.batches import BatchSource
from lmlab.device import autocast
from lmlab.model import forward
from lmlab.train import distributed as dd
from lmlab.train import fsdp
from lmlab.train import memory_fit as mf
from lmlab.train.optim import lr_at, set_lr

# The spike guard needs this many recent norms (or the whole window if smaller) before it acts.
SPIKE_MIN_HISTORY = 10


class SpikeGuard:
    """Skip an update whose grad norm exceeds ``factor`` x the median of the last ``window``."""

    def __init__(self, factor: float, window: int, history: list[float] | None = None):
        self.factor = factor
        self.history: deque[float] = deque(history or [], maxlen=window)
        self.min_history = min(window, SPIKE_MIN_HISTORY)

    @property
    def enabled(self) -> bool:
        return self.factor > 0

    def is_spike(self, norm: float) -> bool:
        """True to skip this update; otherwise the norm joins the history."""
        if len(self.history) >= self.min_history and norm > self.factor * statistics.median(
            self.history
        ):
            return True
        if math.isfinite(norm):
            self.history.append(norm)
        return False


class StepParts(Protocol):
    """What a step uses of the built run (:class:`lmlab.train.setup.TrainSetup`)."""

    cfg: Config
    info: dd.Dist
    device: torch.device
    dtype: torch.dtype
    model: torch.nn.Module  # wrapped (DDP, compile)
    raw_model: torch.nn.Module
    optimizer: Any
    scaler: torch.amp.GradScaler
    params: list[torch.Tensor]
    loader: BatchSource
    fsdp: bool
    fused_loss: bool

    def say(self, msg: str) -> None: ...


@dataclass
class StepOutput:
    """What one step reports; ``loss`` and ``grad_norm`` stay on the device until read."""

    loss: torch.Tensor  # this rank's summed share of the step loss (sum over ranks = the loss)
    grad_norm: torch.Tensor  # the global norm before clipping
    lr: float
    tokens: int  # input tokens of the global batch
    skipped: bool  # the spike guard vetoed the update
    state_bytes: dict[str, int] | None = None  # measured after the first update (see measure)


def _clip_grads(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global grad norm before clipping (clips in place when ``max_norm`` > 0)."""
    return torch.nn.utils.clip_grad_norm_(
        params, max_norm if max_norm > 0 else math.inf, foreach=True
    )


def micro_loss(
    s: StepParts, x: Any, y: torch.Tensor, inv_targets: float, model: torch.nn.Module | None = None
) -> torch.Tensor:
    """One micro-batch's share of the step loss (summed over its targets, scaled)."""
    model = s.model if model is None else model
    with autocast(s.device, s.dtype):
        if s.fused_loss:  # head + cross-entropy in chunks, no logits tensor
            return model(x, targets=y) * inv_targets
        logits = forward(model, x)
        return (
            F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
            * inv_targets
        )


def forward_backward(s: StepParts, step: int, inv_targets: float) -> torch.Tensor:
    """Accumulate this rank's gradients for ``step``; returns its summed (scaled) loss."""
    batches = s.loader.get(step)
    accum = len(batches)
    ddp = s.info.enabled
    loss_acc = torch.zeros((), device=s.device)
    with mf.watch(s.raw_model, s.optimizer):  # a no-op unless a memory limit is injected
        for i, (x, y) in enumerate(batches):
            # DDP syncs on the last micro-batch only; FSDP reduce-scatters every one, so
            # gradients stay sharded in fp32 instead of accumulating unsharded
            no_sync = ddp and not s.fsdp and i < accum - 1
            with s.model.no_sync() if no_sync else contextlib.nullcontext():
                loss = micro_loss(s, x, y, inv_targets)
                s.scaler.scale(loss).backward()
            loss_acc += loss.detach()
    return loss_acc


def _dropout_rng(s: StepParts) -> Any:
    """The torch generator states dropout draws from, or None without dropout."""
    if s.cfg.model.dropout <= 0:
        return None
    cuda = torch.cuda.get_rng_state(s.device) if s.device.type == "cuda" else None
    return (torch.get_rng_state(), cuda)


def _restore_dropout_rng(s: StepParts, saved: Any) -> None:
    torch.set_rng_state(saved[0])
    if saved[1] is not None:
        torch.cuda.set_rng_state(saved[1], s.device)


def shrink_micro_batch(s: StepParts) -> bool:
    """After an out-of-memory in a step: halve the micro-batch (a divisor of the per-process batch)."""
    old = s.loader.micro_batch
    # other ranks would wait for this one's collectives; an FSDP step cut short leaves its
    # gathered parameters behind
    if old <= 1 or s.info.enabled or s.fsdp:
        return False
    new = mf.largest_divisor_at_most(s.loader.per_rank, old // 2)
    s.loader.micro_batch = new
    s.say(f"out of memory at micro-batch {old}; retrying the step with {new}")
    return True


def _forward_backward_fitting(s: StepParts, step: int, inv_targets: float) -> torch.Tensor:
    """:func:`forward_backward`; an out-of-memory in one process halves the micro-batch and
    redoes the step (same data, same dropout masks, same loss)."""
    rng = _dropout_rng(s)
    while True:
        try:
            return forward_backward(s, step, inv_targets)
        except torch.OutOfMemoryError:
            mf.release(s.raw_model, s.device)
            if not shrink_micro_batch(s):
                raise
            if rng is not None:
                _restore_dropout_rng(s, rng)


def measure_state(s: StepParts) -> dict[str, int]:
    """This rank's parameter + gradient + optimizer bytes (max over ranks), while grads exist."""
    mine = fsdp.local_state_bytes(s.raw_model, s.optimizer)
    keys = ("params", "grads", "optimizer", "total")
    peak = dd.all_reduce_max([float(mine[k]) for k in keys], s.info, s.device)
    return {k: int(v) for k, v in zip(keys, peak)}


def train_step(s: StepParts, guard: SpikeGuard, step: int, measure: bool = False) -> StepOutput:
    """Optimizer step ``step``: set the learning rate, forward/backward, clip, guard, update.
    ``measure``: also measure the training state's bytes after the update."""
    lr = lr_at(step, s.cfg.train)
    set_lr(s.optimizer, lr)
    step_tokens, n_targets = s.loader.counts(step)
    inv_targets = s.info.world / max(n_targets, 1)  # DDP averages grads over ranks
    loss = _forward_backward_fitting(s, step, inv_targets)
    scaler = s.scaler
    if scaler.is_enabled():
        scaler.unscale_(s.optimizer)
    grad_norm = fsdp.full_value(_clip_grads(s.params, s.cfg.optim.grad_clip))
    skip = guard.enabled and guard.is_spike(float(grad_norm))
    if skip:
        if scaler.is_enabled():
            scaler.update()
    else:
        scaler.step(s.optimizer)
        scaler.update()
    state_bytes = measure_state(s) if measure else None
    s.optimizer.zero_grad(set_to_none=True)
    return StepOutput(loss, grad_norm, lr, step_tokens, skip, state_bytes)
