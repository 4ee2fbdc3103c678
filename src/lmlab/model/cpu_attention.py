"""Causal self-attention for training in bf16 on a CPU: PyTorch's flash forward, a faster backward.

PyTorch's CPU flash-attention backward is slow in bf16: on 2 Xeon cores (AMX) it took 15 ms a
layer at the demo's shapes (16 x 4 heads x 256 positions x 48) against 2.3 ms for the forward,
and 3.7 ms against 0.23 ms at shakespeare-char's (12 x 4 x 64 x 32), where its float32 backward
takes 0.57 ms. This backward does what flash's does, with batched matmuls over chunks of heads:

- the probabilities P = exp(scale * Q K^T - lse), recomputed in float32 from the forward's
  log-sum-exp, and the masked (future) half zeroed;
- dP = dO V^T in float32, and dS = P * (dP - rowsum(dO * O));
- dV = P^T dO, dQ = scale * dS K, dK = scale * dS^T Q with P and dS rounded to bf16, as
  flash-attention's own kernels round them for these products.

A chunk's float32 scores are ~2 MiB (CHUNK_SCORES), so its elementwise passes run in cache:
10.6 ms a layer at the demo's shapes, 1.0 ms at shakespeare-char's (bench/RESULTS.md).
"""

from __future__ import annotations

import math

import torch

# Float32 scores per chunk of heads in the backward: 2 MiB, a share of the cores' caches.
CHUNK_SCORES = 1 << 19
# Scores this far below a row's log-sum-exp are raised to it before exp: exp(-60) ~ 1e-26 is
# nothing beside the row's sum of 1, and an exp whose result is subnormal (below ~1e-38)
# runs ~40x slower on x86 (measured: 4.9 against 0.11 ms for 2^19 scores).
MIN_LOG_PROB = -60.0

_flash_forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default


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
    p = torch.baddbmm(lse.unsqueeze(-1).neg(), q.float(), k.float().transpose(1, 2), alpha=scale)
    p = p.clamp_min_(MIN_LOG_PROB).exp_().tril_()  # (n, T, T): row i sees keys 0..i
    do32 = do.float()
    delta = (do32 * o.float()).sum(-1, keepdim=True)  # (n, T, 1)
    ds = torch.bmm(do32, v.float().transpose(1, 2)).sub_(delta).mul_(p)
    p_low, ds_low = p.to(low), ds.to(low)
    torch.bmm(p_low.transpose(1, 2), do, out=dv)
    torch.bmm(ds_low, k, out=dq).mul_(scale)
    torch.bmm(ds_low.transpose(1, 2), q, out=dk).mul_(scale)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out, lse = _flash_forward(q, k, v, 0.0, True)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        B, H, T, hd = q.shape
        scale = 1.0 / math.sqrt(hd)

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(B * H, T, -1)

        qs, ks, vs, os, dos, ls = flat(q), flat(k), flat(v), flat(out), flat(grad_out), flat(lse)
        dq, dk, dv = (torch.empty(B * H, T, hd, dtype=q.dtype) for _ in range(3))
        step = max(1, CHUNK_SCORES // (T * T))
        for i in range(0, B * H, step):
            c = slice(i, i + step)
            _backward_chunk(
                qs[c], ks[c], vs[c], os[c], ls[c, :, 0], dos[c], scale, dq[c], dk[c], dv[c]
            )
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
    tensors on a CPU, with the backward above."""
    return _CausalAttention.apply(q, k, v)
