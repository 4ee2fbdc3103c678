"""Muon: orthogonalised momentum for the hidden weight matrices, AdamW for everything else.

Muon (Keller Jordan et al., 2024; the optimizer of modded-nanogpt and nanochat) keeps an
SGD momentum buffer per matrix and applies, instead of the momentum itself, its nearest
semi-orthogonal matrix ``U V^T`` (all singular values set to one), computed approximately by
a quintic Newton-Schulz iteration. Every direction of the update then moves by the same
amount, however small its gradient component was.

Which parameters get which rule (:func:`split_params`):
  - Muon: 2-D weights of ``nn.Linear`` layers inside the network (attention and MLP
    projections);
  - AdamW: token/position embeddings, the output head (a tied head is the embedding),
    norm gains and biases; matrices decayed, 1-D parameters not (as :mod:`lmlab.train.optim`).

One Muon step for a matrix ``W`` (rows x cols) with gradient ``G``:
1. ``M = momentum * M + (1 - momentum) * G`` (the buffer, in float32);
2. Nesterov: ``D = (1 - momentum) * G + momentum * M``;
3. ``O = NewtonSchulz5(D)`` (about ``U V^T`` of D's SVD; in bfloat16 on CUDA and on CPUs
   with native bf16, else float32, where a wide matrix iterates on its Gram matrix);
4. ``W -= lr * sqrt(max(1, rows / cols)) * O`` (the factor evens out tall matrices).
Muon's matrices take no weight decay. Its learning rate is ``optim.muon_lr``, following the
same schedule as ``train.lr`` (warmup, decay): each group carries an ``lr_scale`` that
:func:`lmlab.train.optim.set_lr` applies.

Under DDP the gradients are already averaged when ``step`` runs, so every rank computes the
same orthogonalisation on the same matrices and the weights stay identical (the work is
repeated, not split). Its cost grows with parameters x the smaller matrix side, a training
step's with parameters x tokens: at shakespeare-char's 768 tokens per step the standard
iteration in fp32 costs about 18 ms of a 67 ms step (measured, two threads of an AVX2-only
Zen 3), the Gram form about 12 ms; hence bf16 where it is native, the Gram form elsewhere.
Matrices of the same shape, a tall one counted as the wide matrix it transposes to,
are orthogonalised together in one batched iteration.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from lmlab.device import cpu_has_native_bf16

# Quintic Newton-Schulz coefficients (modded-nanogpt): converge fast from a spectral norm <= 1.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


# The Gram form pays where its flops are fewer: 4 m^2 n + 34 m^3 against the standard form's
# 20 m^2 n + 10 m^3 for 5 steps on an m x n matrix (m <= n), i.e. once n > 1.5 m.
GRAM_MIN_ASPECT = 1.5


@torch.no_grad()
def newton_schulz(
    g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32, form: str = "auto"
) -> torch.Tensor:
    """Approximately orthogonalise ``g`` (..., rows, cols): singular values to ~1 (0.7-1.2).

    ``form``: ``"standard"`` iterates on the matrix itself; ``"gram"`` on its small Gram matrix
    (:func:`_gram_iteration`), the same polynomial with fewer flops for a wide matrix but more
    rounding (fine in float32 and float64, known to break down in bf16); ``"auto"`` picks the
    Gram form in float32/float64 when the long side exceeds 1.5x the short one.
    """
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix x x^T is the smaller one
        x = x.mT
    # scale so the spectral norm is <= 1 (the Frobenius norm bounds it)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    lead = x.shape[:-2]
    x = x.reshape(-1, *x.shape[-2:])  # (batch, rows, cols), the shape baddbmm takes
    if form == "auto":
        wide = x.size(-1) > GRAM_MIN_ASPECT * x.size(-2)
        form = "gram" if wide and dtype in (torch.float32, torch.float64) else "standard"
    if form == "gram":
        x = _gram_iteration(x, steps)
    elif form == "standard":
        x = _standard_iteration(x, steps)
    else:
        raise ValueError(f"newton_schulz: form must be auto, standard or gram, not {form!r}")
    x = x.reshape(*lead, *x.shape[-2:])
    return x.mT if tall else x


def _standard_iteration(x: torch.Tensor, steps: int) -> torch.Tensor:
    """x <- a x + (b A + c A^2) x with A = x x^T, ``steps`` times, on (batch, m, n), m <= n.

    Each sum of a scaled term and a product is one baddbmm: 3 kernels per iteration instead
    of 8, which on small matrices (a CPU model of width 128) are mostly per-call overhead."""
    a, b, c = NS_COEFFS
    for _ in range(steps):
        A = x @ x.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        x = torch.baddbmm(x, B, x, beta=a, alpha=1.0)
    return x


def _gram_iteration(x0: torch.Tensor, steps: int) -> torch.Tensor:
    """The standard iteration's result from m x m products only, on (batch, m, n), m <= n.

    Step k is x_{k+1} = P_k x_k with P_k = a I + b A_k + c A_k^2, A_k = x_k x_k^T. So
    x_k = Q_k x_0 with Q_k = P_{k-1} ... P_0, and A_{k+1} = P_k A_k P_k (P_k is symmetric):
    the n-long side is touched twice (A_0 = x_0 x_0^T and x_0's final product with Q), not
    twice per step."""
    a, b, c = NS_COEFFS
    A = x0 @ x0.mT
    Q = None
    for k in range(steps):
        P = torch.baddbmm(A, A, A, beta=b, alpha=c)
        P.diagonal(dim1=-2, dim2=-1).add_(a)
        Q = P if Q is None else P @ Q
        if k < steps - 1:
            A = P @ A @ P
    return x0 if Q is None else Q @ x0


def split_params(
    model: nn.Module,
) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(Muon matrices, AdamW decayed, AdamW not decayed), each parameter once."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "head", None)
    head_ids = {id(head.weight)} if isinstance(head, nn.Linear) else set()
    hidden = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Linear)
        and m.weight.dim() == 2
        and id(m.weight) not in embedded | head_ids
    }
    muon, decay, no_decay = [], [], []
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in hidden:
            muon.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    return muon, decay, no_decay


class Muon(torch.optim.Optimizer):
    """Muon on its own group (``kind = "muon"``) plus ``adamw``, an AdamW over the rest.

    ``param_groups`` lists both kinds (the same dicts the inner AdamW holds), so the loop's
    lr schedule, gradient clipping, ``zero_grad`` and GradScaler see one optimizer;
    ``state_dict`` holds both states.
    """

    def __init__(
        self,
        muon_params: list[nn.Parameter],
        adamw: torch.optim.AdamW | None,
        lr: float,
        muon_lr: float,
        momentum: float = 0.95,
        ns_steps: int = 5,
    ):
        scale = muon_lr / lr if lr > 0 else 0.0
        defaults = {
            "lr": lr * scale,
            "lr_scale": scale,
            "momentum": momentum,
            "ns_steps": ns_steps,
            "kind": "muon",
        }
        groups = [{"params": muon_params, "name": "muon"}] if muon_params else []
        super().__init__(groups or [{"params": [], "name": "muon"}], defaults)
        self._muon_groups = list(self.param_groups) if muon_params else []
        self.param_groups = list(self._muon_groups)
        self.adamw = adamw
        if adamw is not None:
            self.param_groups += adamw.param_groups  # shared dicts: set_lr reaches both

    @staticmethod
    def ns_dtype(p: torch.Tensor) -> torch.dtype:
        """bf16 where matmuls are native in it (CUDA, CPUs with AMX/AVX512-BF16: 3-4x faster
        than fp32 there, and the iteration is robust to it), else fp32."""

        native = p.device.type == "cuda" or (p.device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else torch.float32

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self._muon_groups:
            m, steps = group["momentum"], group["ns_steps"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # 1-2) momentum and the Nesterov direction, each one foreach call over the group
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
                bufs.append(state["momentum_buffer"])
            grads = [p.grad.float() for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - m)
            directions = torch._foreach_lerp(grads, bufs, m)
            # 3) one batched iteration per shape in its wide orientation: a tall matrix joins
            # the wide ones it transposes to (shakespeare-char: qkv's 384 x 128 with the MLP
            # output's 128 x 384), fewer, larger batches of small matmuls
            by_shape: dict[tuple, list[tuple[torch.Tensor, torch.Tensor, bool]]] = defaultdict(list)
            for p, d in zip(params, directions, strict=True):
                tall = p.size(0) > p.size(1)
                d = d.mT if tall else d
                by_shape[(tuple(d.shape), p.device, p.dtype)].append((p, d, tall))
            for (_, _, dtype), items in by_shape.items():
                ortho = newton_schulz(
                    torch.stack([d for _, d, _ in items]), steps, self.ns_dtype(items[0][0])
                ).to(dtype)
                # 4) the update, scaled for tall matrices (rows / cols of the parameter)
                for tall in (False, True):
                    picked = [
                        (p, o.mT if tall else o) for (p, _, t), o in zip(items, ortho) if t == tall
                    ]
                    if picked:
                        rows, cols = picked[0][0].shape
                        alpha = -group["lr"] * max(1.0, rows / cols) ** 0.5
                        torch._foreach_add_(
                            [p for p, _ in picked], [o for _, o in picked], alpha=alpha
                        )
        if self.adamw is not None:
            self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        saved_groups = self.param_groups
        self.param_groups = self._muon_groups  # torch's state_dict over the Muon groups only
        try:
            muon = super().state_dict()
        finally:
            self.param_groups = saved_groups
        return {"muon": muon, "adamw": self.adamw.state_dict() if self.adamw is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or set(state_dict) != {"muon", "adamw"}:
            raise ValueError("not a Muon optimizer state (saved with another optim.name?)")
        if (state_dict["adamw"] is None) != (self.adamw is None):
            raise ValueError("the AdamW part of the Muon state does not fit this model")
        saved_groups = self.param_groups
        self.param_groups = self._muon_groups
        try:
            if self._muon_groups:
                super().load_state_dict(state_dict["muon"])
                self._muon_groups = list(self.param_groups)  # torch rebuilds the group dicts
        finally:
            self.param_groups = saved_groups
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = list(self._muon_groups) + (
            list(self.adamw.param_groups) if self.adamw else []
        )
