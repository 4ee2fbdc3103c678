"""lmlab.model.cpu_attention: bf16 causal attention on a CPU, batched matmuls over chunks of heads.

Outputs and gradients are checked against float64 ones computed from the same bf16 inputs,
within a bound that follows from the roundings (U = 2^-8, bf16's unit roundoff): P rounded to
bf16 for P V and the output rounded (this moves rowsum(dO * O)), dP = dO V^T rounded, P and dS
rounded for their products, each gradient rounded, and the float32 softmax and log-sum-exp
(E_P, relative: the log-sum-exp is off by up to ~6e-5 at these score sizes, float32 sums of
bf16 products).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.model import cpu_attention

U = 2.0**-8  # bf16 unit roundoff (8 bits of precision, round to nearest)
E_P = 2.0**-13  # relative error of float32 probabilities and log-sum-exp at these sizes


def _inputs(B: int, H: int, T: int, hd: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # larger than unit scores: peaked rows (some probabilities below exp(-60)) as well as flat ones
    q, k, v, do = (
        (torch.randn(B, H, T, hd, generator=gen) * s).to(torch.bfloat16)
        for s in (2.0, 2.0, 1.0, 1.0)
    )
    return q, k, v, do


def _reference(q, k, v, do):
    """Float64 output and gradients, and the error bound of each element."""
    q, k, v, do = (x.double() for x in (q, k, v, do))
    T, hd = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(hd)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    s = scale * q @ k.transpose(-1, -2)
    p = s.masked_fill(future, float("-inf")).softmax(-1)
    o = p @ v
    dp = do @ v.transpose(-1, -2)
    delta = (do * o).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    grads = {
        "q": scale * ds @ k,
        "k": scale * ds.transpose(-1, -2) @ q,
        "v": p.transpose(-1, -2) @ do,
    }
    r = 2 * E_P  # the probabilities' relative error: the forward's float32, then the backward's
    e_o = (p * r) @ v.abs() + U * (p @ v.abs()) + U * o.abs()  # P rounded for P V, O rounded
    e_delta = (do.abs() * e_o).sum(-1, keepdim=True)
    e_dp = U * (do.abs() @ v.abs().transpose(-1, -2))
    e_ds = p * (e_dp + e_delta) + (r + U) * ds.abs()  # then dS rounded to bf16
    bounds = {
        "o": e_o,
        "q": scale * e_ds @ k.abs() + U * grads["q"].abs(),
        "k": scale * e_ds.transpose(-1, -2) @ q.abs() + U * grads["k"].abs(),
        "v": ((r + U) * p).transpose(-1, -2) @ do.abs() + U * grads["v"].abs(),
    }
    return o, grads, bounds


@pytest.mark.parametrize("shape", [(2, 3, 64, 32), (1, 2, 256, 48), (1, 1, 7, 16)])
def test_output_and_gradients_are_within_their_own_rounding(shape):
    q, k, v, do = _inputs(*shape)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = cpu_attention.causal_attention(*leaves)
    out.backward(do)
    o, grads, bounds = _reference(q, k, v, do)
    results = {"o": out.detach(), **{name: leaf.grad for name, leaf in zip("qkv", leaves)}}
    for name, got in results.items():
        ref = o if name == "o" else grads[name]
        err = (got.double() - ref).abs()
        excess = (err - bounds[name] - 1e-6).max().item()  # 1e-6: float32 sums of T terms
        assert excess <= 0, (name, excess, err.max().item())


def test_the_forward_agrees_with_flash_attention():
    """PyTorch's kernel rounds P and O to bf16 as this one does: the two outputs are each
    within the forward's bound of the exact one, so within twice it of each other."""
    q, k, v, do = _inputs(2, 4, 128, 32, seed=3)
    ours = cpu_attention.causal_attention(q, k, v).double()
    flash = F.scaled_dot_product_attention(q, k, v, is_causal=True).double()
    _, _, bounds = _reference(q, k, v, do)
    assert ((ours - flash).abs() - 2 * bounds["o"] - 1e-6).max().item() <= 0


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
