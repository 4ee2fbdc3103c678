"""Causal self-attention for training in bf16 on a CPU: batched matmuls over chunks of heads.

PyTorch's CPU flash attention is slow in bf16 training. Its backward took 15 ms a layer at the
demo's shapes (16 x 4 heads x 256 positions x 48) on 2 Xeon cores with AMX, against 2.3 ms
for its forward; on 2 AMD EPYC (Zen 5: avx512_bf16, no AMX) cores its forward alone takes 7-9
ms there, as long as in float32. This module does flash's arithmetic with batched matmuls over
chunks of heads whose float32 scores are ~2 MiB (CHUNK_SCORES), so that every elementwise pass
runs in cache:

- forward: S = scale * Q K^T in float32 with the future masked, P = softmax(S), the row's
  log-sum-exp kept for the backward (max(S) - log(max(P)): no second exp pass), O = bf16(P) V;
- backward: P recomputed in float32 from the log-sum-exp, dP = dO V^T from a bf16 matmul
  (rounded to bf16, as eager autograd rounds it under autocast; in float32 it cost a quarter
  more time), dS = P * (dP - rowsum(dO * O)) in float32, and dV = P^T dO, dQ = scale * dS K,
  dK = scale * dS^T Q with P and dS rounded to bf16 (as flash-attention's kernels round them).

tests/test_cpu_attention.py bounds outputs and gradients by these roundings. Forward and
backward together on 2 AMD EPYC cores: 19.9 against flash's forward with stop 15's backward
29.9 ms a layer at the demo's shapes, 1.50 against 1.60 ms at shakespeare-char's (12 x 4 x 64
x 32), 23.7 against 25.4 ms at the ~10M LLaMA's (8 x 6 x 256 x 64) (bench/RESULTS.md, stop 16).
"""

from __future__ import annotations

import math

import torch

# Float32 scores per chunk of heads: 2 MiB, a share of the cores' caches.
CHUNK_SCORES = 1 << 19
# Scores this far below a row's log-sum-exp are raised to it before exp in the backward:
# exp(-60) ~ 1e-26 is nothing beside the row's sum of 1, and an exp whose result is subnormal
# (below ~1e-38) runs ~40x slower on x86 (measured: 4.9 against 0.11 ms for 2^19 scores).
MIN_LOG_PROB = -60.0

_future_masks: dict[int, torch.Tensor] = {}


def _future_mask(T: int) -> torch.Tensor:
    """(T, T) float32: 0 where query i may see key j (j <= i), -inf above the diagonal."""
    mask = _future_masks.get(T)
    if mask is None:
        mask = torch.zeros(T, T).masked_fill_(
            torch.ones(T, T, dtype=torch.bool).triu_(1), float("-inf")
        )
        _future_masks[T] = mask
    return mask


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """(n, T, T) float32 scale * Q K^T, the future at -inf (one float32 matmul: no bf16 matmul
    on a CPU writes float32, and bf16 scores would be off by 2^-8 of |S|)."""
    return torch.baddbmm(
        _future_mask(q.shape[1]), q.float(), k.float().transpose(1, 2), alpha=scale
    )


def _forward_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    o: torch.Tensor,
    lse: torch.Tensor,
) -> None:
    """Output and log-sum-exp of a chunk of (n, T, hd) heads into ``o``, ``lse`` (n, T, 1)."""
    s = _scores(q, k, scale)
    row_max = s.amax(-1, keepdim=True)
    p = torch.softmax(s, -1)
    # the largest probability is exp(row_max - lse): its log gives lse without another exp
    torch.sub(row_max, p.amax(-1, keepdim=True).log_(), out=lse)
    torch.bmm(p.to(q.dtype), v, out=o)


def _backward_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    scale: float,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
) -> None:
    """Gradients of a chunk of (n, T, hd) heads into ``dq``, ``dk``, ``dv``."""
    low = q.dtype
    p = _scores(q, k, scale).sub_(lse).clamp_min_(MIN_LOG_PROB).exp_()  # the future: exp(-inf) = 0
    delta = (do.float() * o.float()).sum(-1, keepdim=True)  # (n, T, 1)
    ds = torch.bmm(do, v.transpose(1, 2)).float().sub_(delta).mul_(p)
    p_low, ds_low = p.to(low), ds.to(low)
    torch.bmm(p_low.transpose(1, 2), do, out=dv)
    torch.bmm(ds_low, k, out=dq).mul_(scale)
    torch.bmm(ds_low.transpose(1, 2), q, out=dk).mul_(scale)


def _chunks(n_heads: int, T: int) -> list[slice]:
    step = max(1, CHUNK_SCORES // (T * T))
    return [slice(i, i + step) for i in range(0, n_heads, step)]


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, H, T, hd = q.shape
        scale = 1.0 / math.sqrt(hd)
        qs, ks, vs = (x.reshape(B * H, T, hd) for x in (q, k, v))
        out = torch.empty(B * H, T, hd, dtype=q.dtype)
        lse = torch.empty(B * H, T, 1)
        for c in _chunks(B * H, T):
            _forward_chunk(qs[c], ks[c], vs[c], scale, out[c], lse[c])
        ctx.save_for_backward(qs, ks, vs, out, lse)
        ctx.shape = (B, H, T, hd)
        return out.view(B, H, T, hd)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        qs, ks, vs, out, lse = ctx.saved_tensors
        B, H, T, hd = ctx.shape
        scale = 1.0 / math.sqrt(hd)
        dos = grad_out.reshape(B * H, T, hd)
        dq, dk, dv = (torch.empty(B * H, T, hd, dtype=qs.dtype) for _ in range(3))
        for c in _chunks(B * H, T):
            _backward_chunk(qs[c], ks[c], vs[c], out[c], lse[c], dos[c], scale, dq[c], dk[c], dv[c])
        return dq.view(B, H, T, hd), dk.view(B, H, T, hd), dv.view(B, H, T, hd)


def applies(q: torch.Tensor, k: torch.Tensor, dropout: float) -> bool:
    """Whether :func:`causal_attention` serves this call: bf16 on a CPU, with gradients, the
    same number of query and key heads and positions, no dropout, outside torch.compile."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad)
        and q.shape == k.shape
        and dropout == 0.0
        and not torch.compiler.is_compiling()
    )


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` for (B, H, T, hd) bf16
    tensors on a CPU in training: float32 scores, P and O rounded to bf16 as flash's are,
    chunked, with the backward above."""
    return _CausalAttention.apply(q, k, v)
