"""Baselines: each builds, is causal, trains with the same loss, and behaves as documented."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig
from lmlab.errors import ConfigError, LmlabError
from lmlab.model import build_model

V = 64
ARCHS = ["bigram", "bow", "one_head", "no_residual"]
# Equalities that hold in exact arithmetic (causality, order blindness) are checked in float64:
# in float32 a changed input order or length changes the summation order, by CPU-dependent
# amounts. Float64 roundoff through these few hundred ops on O(1) values stays below 1e-13.
F64_ATOL = 1e-10


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=V, d_model=32, n_layer=2, n_head=4, context_length=16)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("position", ["rope", "learned", "none"])
@pytest.mark.parametrize("arch", ARCHS)
def test_baseline_builds_is_causal_and_learns(arch, position, f64):
    torch.manual_seed(0)
    model = build_model(tiny(arch=arch, position=position))
    assert model.config.arch == arch
    idx = torch.randint(0, V, (4, 17))
    model.eval()
    changed = idx[:, :-1].clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % V
    assert torch.allclose(model(idx[:, :-1])[:, :10], model(changed)[:, :10], rtol=0, atol=F64_ATOL)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        logits = model(idx[:, :-1])
        assert logits.shape == (4, 16, V)
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_bigram_sees_only_the_current_token():
    model = build_model(tiny(arch="bigram")).eval()
    a = torch.tensor([[1, 2, 3, 4]])
    b = torch.tensor([[9, 8, 7, 4]])
    assert torch.equal(model(a)[0, -1], model(b)[0, -1])  # the same row of one table
    # never tied: a tied bigram could only hold a symmetric table
    assert sorted(n for n, _ in model.named_parameters()) == ["head.weight", "tok_emb.weight"]
    assert model.num_params() == 2 * V * 32


def test_bow_is_order_blind_but_not_context_blind(f64):
    model = build_model(tiny(arch="bow")).eval()
    a, b, c = (
        torch.tensor([[1, 2, 3, 4]]),
        torch.tensor([[3, 1, 2, 4]]),
        torch.tensor([[5, 5, 5, 4]]),
    )
    assert torch.allclose(model(a)[0, -1], model(b)[0, -1], rtol=0, atol=F64_ATOL)
    assert not torch.allclose(model(a)[0, -1], model(c)[0, -1], atol=1e-4)


def test_one_head_has_one_head_and_no_mlp():
    model = build_model(tiny(arch="one_head", n_head=4))
    assert model.attn.n_head == 1 and model.attn.head_dim == 32
    assert not any("mlp" in n for n, _ in model.named_parameters())


def test_no_residual_has_no_norms():
    model = build_model(tiny(arch="no_residual", norm="rmsnorm"))
    assert not any("norm" in n for n, _ in model.named_parameters())
    assert len(model.blocks) == 2


def test_baselines_refuse_kv_cache_and_bad_configs():
    model = build_model(tiny(arch="one_head"))
    assert model.supports_kv_cache is False
    with pytest.raises(LmlabError, match="no KV cache"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=object())
    with pytest.raises(LmlabError, match="context_length"):
        build_model(tiny(arch="one_head", position="learned"))(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ConfigError, match="rope"):
        build_model(tiny(arch="one_head", d_model=33, n_head=3))
    with pytest.raises(ConfigError, match="arch"):
        build_model(tiny(arch="rnn"))
