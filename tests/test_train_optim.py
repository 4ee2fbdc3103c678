"""Learning-rate schedules at known steps and AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.config import ModelConfig, OptimConfig, TrainConfig
from lmlab.model import build_model
from lmlab.train.optim import build_optimizer, lr_at, param_groups


def tc(**kw) -> TrainConfig:
    base = {"max_steps": 100, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10}
    base.update(kw)
    return TrainConfig(**base)


def test_warmup_is_linear():
    t = tc()
    assert lr_at(0, t) == pytest.approx(1e-4)
    assert lr_at(4, t) == pytest.approx(5e-4)
    assert lr_at(9, t) == pytest.approx(1e-3)


def test_cosine():
    t = tc(lr_schedule="cosine")
    assert lr_at(10, t) == pytest.approx(1e-3)
    assert lr_at(55, t) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway: cos(pi/2) = 0
    assert lr_at(10 + 90 // 3, t) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 3)) * 9e-4)
    assert lr_at(100, t) == pytest.approx(1e-4)
    assert lr_at(500, t) == pytest.approx(1e-4)


def test_linear_constant_wsd():
    assert lr_at(55, tc(lr_schedule="linear")) == pytest.approx(5.5e-4)
    assert lr_at(99, tc(lr_schedule="constant")) == pytest.approx(1e-3)
    w = tc(lr_schedule="wsd", decay_fraction=0.2)  # stable until step 80, then linear to min_lr
    assert lr_at(50, w) == pytest.approx(1e-3)
    assert lr_at(80, w) == pytest.approx(1e-3)
    assert lr_at(90, w) == pytest.approx(5.5e-4)
    assert lr_at(100, w) == pytest.approx(1e-4)


def test_no_warmup():
    assert lr_at(0, tc(warmup_steps=0, lr_schedule="constant")) == pytest.approx(1e-3)


@pytest.mark.parametrize("tie", [True, False])
def test_param_groups_decay_matrices_only(tie):
    m = build_model(
        ModelConfig(
            vocab_size=50,
            n_layer=2,
            n_head=2,
            d_model=32,
            context_length=8,
            bias=True,
            norm="layernorm",
            position="learned",
            tie_embeddings=tie,
        )
    )
    groups = {g["name"]: g for g in param_groups(m, 0.1)}
    decay = {id(p) for p in groups["decay"]["params"]}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    names = dict((id(p), n) for n, p in m.named_parameters())
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in groups["decay"]["params"])
    assert all(p.dim() == 1 for p in groups["no_decay"]["params"])
    assert {names[i] for i in decay} >= {
        "tok_emb.weight",
        "pos_emb.weight",
        "blocks.0.attn.qkv.weight",
    }
    assert "blocks.0.attn.qkv.bias" in {names[i] for i in no_decay}
    assert "blocks.0.norm1.weight" in {names[i] for i in no_decay}
    # every parameter exactly once (a tied head is not listed twice)
    assert len(decay) + len(no_decay) == len({id(p) for p in m.parameters()})
    assert not decay & no_decay
    opt = build_optimizer(m, OptimConfig(), 1e-3, torch.device("cpu"))
    assert len(opt.param_groups) == 2
