"""`model.residual = false`: the transformer's blocks stacked without skip connections, with
or without norms (the ladder's stacked model), against the no_residual baseline."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.accounting import count_params
from lmlab.config import Config, ModelConfig
from lmlab.errors import ConfigError, LmlabError
from lmlab.model import build_model


def cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=50, n_layer=4, n_head=2, d_model=32, context_length=16)
    return ModelConfig(**{**base, **kw})


def test_without_residuals_and_norms_it_is_the_no_residual_baseline():
    torch.manual_seed(0)
    plain = build_model(cfg(residual=False, norm="none"))
    baseline = build_model(cfg(arch="no_residual"))
    assert plain.state_dict().keys() == baseline.state_dict().keys()
    baseline.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(plain(idx), baseline(idx), rtol=0, atol=0)


def test_the_blocks_drop_the_skip_connections_and_keep_the_norms():
    torch.manual_seed(0)
    model = build_model(cfg(residual=False))
    block = model.blocks[0]
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    block = block.double()
    rope = model.rotary(0, 16)
    rope = tuple(t.double() for t in rope)
    want = block.mlp(block.norm2(block.attn(block.norm1(x), rope)))
    torch.testing.assert_close(block(x, rope), want, rtol=0, atol=0)
    with_skip = build_model(cfg()).blocks[0].double()
    with_skip.load_state_dict(block.state_dict())
    assert not torch.allclose(with_skip(x, rope), want)  # the switch is what removes them
    # the same parameters as the residual model, and accounting agrees with the module
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(p.numel() for p in build_model(cfg()).parameters())
    assert n == count_params(cfg(residual=False))["total"]


def block_scales(norm: str) -> list[float]:
    """The activations' std after the embedding and after each of 4 blocks, at init."""
    torch.manual_seed(0)
    model = build_model(cfg(residual=False, norm=norm, n_layer=4, d_model=64, n_head=4))
    x = model.tok_emb(torch.randint(0, 50, (8, 16)))
    rope = model.rotary(0, 16)
    scales = [x.std().item()]
    for block in model.blocks:
        x = block(x, rope)
        scales.append(x.std().item())
    return scales


def test_without_norms_the_stack_fades_even_with_unit_scale_layers():
    # embeddings start at unit scale and every linear layer preserves variance, yet
    # attention's averaging over positions and the gated MLP shrink the signal block after
    # block: what norms (or residuals) are there to prevent
    without = block_scales("none")
    assert abs(without[0] - 1) < 0.1
    assert all(b < a for a, b in zip(without, without[1:], strict=False))
    assert without[-1] < 1e-2


def test_with_norms_it_keeps_the_standard_init_and_starts_near_uniform():
    # a unit-scale tied embedding under a final norm would start with logits of std ~sqrt(d)
    torch.manual_seed(0)
    model = build_model(cfg(residual=False, norm="rmsnorm", d_model=64, n_head=4))
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    logits = model(torch.randint(0, 50, (4, 16)))
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.randint(0, 50, (64,)))
    assert abs(loss.item() - math.log(50)) < 0.1


def test_residual_false_is_refused_where_it_means_nothing():
    c = Config()
    c.model.arch = "bow"
    c.model.residual = False
    with pytest.raises(ConfigError, match="model.residual"):
        c.validate()
    from lmlab.export import hf_family

    with pytest.raises(LmlabError, match="model.residual=false"):
        hf_family(cfg(residual=False))
