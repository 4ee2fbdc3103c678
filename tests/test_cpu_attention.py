"""lmlab.model.cpu_attention: bf16 causal attention on a CPU, flash's forward with a bmm backward.

The gradients are checked against float64 ones computed from the same bf16 inputs, within a
bound that follows from the roundings (U = 2^-8, bf16's unit roundoff): the forward's output,
whose P was rounded to bf16 for P V and which is itself rounded (this moves rowsum(dO * O)),
P and dS rounded to bf16 for their products, each gradient rounded to bf16, and the
probabilities recomputed in float32 from the forward's float32 log-sum-exp (E_P: that
log-sum-exp is off by up to ~6e-5 at these score sizes, float32 sums of bf16 products).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.model import cpu_attention

U = 2.0**-8  # bf16 unit roundoff (8 bits of precision, round to nearest)
E_P = 2.0**-13  # relative error of the recomputed probabilities (the log-sum-exp's, above)


def _inputs(B: int, H: int, T: int, hd: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # larger than unit scores: peaked rows (some probabilities below exp(-60)) as well as flat ones
    q, k, v, do = (
        (torch.randn(B, H, T, hd, generator=gen) * s).to(torch.bfloat16)
        for s in (2.0, 2.0, 1.0, 1.0)
    )
    return q, k, v, do


def _reference(q, k, v, do):
    """Float64 gradients and the error bound of each element."""
    q, k, v, do = (x.double() for x in (q, k, v, do))
    T, hd = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(hd)
    s = scale * q @ k.transpose(-1, -2)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    p = s.softmax(-1)
    o = p @ v
    dp = do @ v.transpose(-1, -2)
    delta = (do * o).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    grads = {
        "q": scale * ds @ k,
        "k": scale * ds.transpose(-1, -2) @ q,
        "v": p.transpose(-1, -2) @ do,
    }
    e_o = U * (p @ v.abs()) + U * o.abs()  # the forward's P V with P in bf16, O rounded
    e_delta = (do.abs() * e_o).sum(-1, keepdim=True)
    e_ds = p * e_delta + (U + E_P) * ds.abs()  # then dS rounded to bf16
    bounds = {
        "q": scale * e_ds @ k.abs() + U * grads["q"].abs(),
        "k": scale * e_ds.transpose(-1, -2) @ q.abs() + U * grads["k"].abs(),
        "v": (U + E_P) * p.transpose(-1, -2) @ do.abs() + U * grads["v"].abs(),
    }
    return grads, bounds


@pytest.mark.parametrize("shape", [(2, 3, 64, 32), (1, 2, 256, 48), (1, 1, 7, 16)])
def test_gradients_are_within_the_backwards_own_rounding(shape):
    q, k, v, do = _inputs(*shape)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = cpu_attention.causal_attention(*leaves)
    # the forward is flash's own
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    out.backward(do)
    grads, bounds = _reference(q, k, v, do)
    for name, leaf in zip("qkv", leaves):
        err = (leaf.grad.double() - grads[name]).abs()
        excess = (err - bounds[name] - 1e-6).max().item()  # 1e-6: float32 sums of T terms
        assert excess <= 0, (name, excess, err.max().item())


def test_a_chunk_boundary_changes_nothing(monkeypatch):
    """Heads are done in chunks of CHUNK_SCORES scores; any chunking gives the same gradients."""
    q, k, v, do = _inputs(2, 3, 32, 16, seed=1)

    def grads() -> list[torch.Tensor]:
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        cpu_attention.causal_attention(*leaves).backward(do)
        return [leaf.grad for leaf in leaves]

    whole = grads()
    monkeypatch.setattr(cpu_attention, "CHUNK_SCORES", 32 * 32 * 4)  # 4 heads of 6 per chunk
    assert all(torch.equal(a, b) for a, b in zip(whole, grads()))


def test_it_serves_only_bf16_training_calls_on_a_cpu():
    q = torch.zeros(1, 2, 8, 4, dtype=torch.bfloat16, requires_grad=True)
    assert cpu_attention.applies(q, q, 0.0)
    assert not cpu_attention.applies(q, q, 0.1)  # dropout: the usual kernel
    assert not cpu_attention.applies(q.float(), q.float(), 0.0)
    assert not cpu_attention.applies(q, q[:, :1], 0.0)  # grouped-query heads
    with torch.no_grad():
        assert not cpu_attention.applies(q, q, 0.0)  # inference
    assert not cpu_attention.applies(q.detach(), q.detach(), 0.0)


def test_the_transformer_trains_through_it_under_bf16_autocast(monkeypatch):
    from lmlab.config import ModelConfig
    from lmlab.model import build_model

    calls = []
    real = cpu_attention.causal_attention
    monkeypatch.setattr(cpu_attention, "causal_attention", lambda *a: calls.append(1) or real(*a))
    cfg = ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, context_length=16)
    model = build_model(cfg)
    x = torch.randint(0, 64, (2, 16))
    with torch.autocast("cpu", torch.bfloat16):
        loss = model(x, targets=x)
    loss.backward()
    assert len(calls) == 2  # one per layer
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    calls.clear()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        model(x)
    assert not calls  # inference keeps the usual kernel
