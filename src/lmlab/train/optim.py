"""Optimizer setup and learning-rate schedules.

Weight decay goes on every parameter with two or more dimensions: linear weights and, as in
nanoGPT and GPT-2, the token/position embeddings (with tied embeddings the embedding *is* the
output projection, a matrix like any other). Biases and norm gains (1-D) are never decayed,
since shrinking them towards zero only fights the normalisation.

Schedules (``train.lr_schedule``), all starting with ``train.warmup_steps`` of linear warmup
from ``lr / warmup_steps`` up to ``lr``:
  - ``cosine``: cosine decay from ``lr`` to ``min_lr`` at ``max_steps``;
  - ``linear``: straight line from ``lr`` to ``min_lr`` at ``max_steps``;
  - ``constant``: ``lr`` after warmup;
  - ``wsd`` (warmup-stable-decay): ``lr`` until the last ``decay_fraction`` of the steps, then
    linear decay to ``min_lr``.
"""

from __future__ import annotations

import inspect
import math

import torch

from lmlab.config import OptimConfig, TrainConfig
from lmlab.errors import ConfigError
from lmlab.train.muon import Muon, split_params


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed (dim >= 2) and not decayed (biases, norm gains)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return [g for g in groups if g["params"]]


def _adamw(
    groups: list[dict], ocfg: OptimConfig, lr: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over ``groups``; the fused kernel where torch offers it, else foreach."""
    kwargs: dict = {"lr": lr, "betas": (ocfg.beta1, ocfg.beta2), "eps": ocfg.eps}
    params = inspect.signature(torch.optim.AdamW).parameters
    if "fused" in params and device.type in ("cuda", "cpu"):
        kwargs["fused"] = True
    elif "foreach" in params:
        kwargs["foreach"] = True
    try:
        return torch.optim.AdamW(groups, **kwargs)
    except (RuntimeError, ValueError):  # fused unsupported for this device/dtype
        kwargs.pop("fused", None)
        return torch.optim.AdamW(groups, **kwargs)


def build_optimizer(
    model: torch.nn.Module, ocfg: OptimConfig, lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """``optim.name``: AdamW over :func:`param_groups`, or :class:`lmlab.train.muon.Muon`
    (hidden matrices) with AdamW for the embeddings, head, norms and biases."""
    if ocfg.name != "muon":
        return _adamw(param_groups(model, ocfg.weight_decay), ocfg, lr, device)

    muon, decay, no_decay = split_params(model)
    if any(type(p).__name__ == "DTensor" for p in muon):  # Newton-Schulz needs whole matrices
        raise ConfigError(
            "optim.name: muon needs whole weight matrices on every rank (DDP), not FSDP shards"
        )
    groups = [
        {"params": decay, "weight_decay": ocfg.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    groups = [g for g in groups if g["params"]]
    inner = _adamw(groups, ocfg, lr, device) if groups else None
    return Muon(muon, inner, lr, ocfg.muon_lr, ocfg.muon_momentum, ocfg.muon_ns_steps)


def lr_at(step: int, t: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) under ``t.lr_schedule``."""
    # 1) linear warmup: step 0 gets lr/warmup, step warmup-1 gets lr
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    total = max(t.max_steps, 1)
    if t.lr_schedule == "wsd":
        # 2) stable at lr, then 3) linear decay over the last decay_fraction of the steps
        decay_steps = max(1, round(t.decay_fraction * total))
        decay_start = max(t.warmup_steps, total - decay_steps)
        if step < decay_start:
            return t.lr
        frac = min(1.0, (step - decay_start) / max(1, total - decay_start))
        return t.lr + frac * (t.min_lr - t.lr)
    # 2) cosine / linear from lr at the end of warmup to min_lr at max_steps
    span = max(1, total - t.warmup_steps)
    frac = min(1.0, (step - t.warmup_steps) / span)
    if t.lr_schedule == "linear":
        return t.lr + frac * (t.min_lr - t.lr)
    coeff = 0.5 * (1.0 + math.cos(math.pi * frac))  # 1 -> 0
    return t.min_lr + coeff * (t.lr - t.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group to ``lr`` times its ``lr_scale`` (Muon's matrices run at their own lr)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
