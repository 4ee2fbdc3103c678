"""The chunked output layer + cross-entropy equals the plain one, loss and gradients."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig
from lmlab.model import build_model
from lmlab.model import loss as fused
from lmlab.model.presets import PRESETS


def reference(h, w, y):
    return F.cross_entropy(h @ w.t(), y, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("chunk_elements", [1 << 22, 97 * 16])  # one chunk; many, with a ragged last one
def test_loss_and_gradients_match_the_plain_path(chunk_elements, monkeypatch):
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    h = torch.randn(150, 24, requires_grad=True)
    w = torch.randn(97, 24, requires_grad=True)
    y = torch.randint(0, 97, (150,))
    y[::7] = -100  # ignored targets
    got = fused.linear_cross_entropy(h, w, y)
    (got * 0.37).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = reference(h, w, y)
    (ref * 0.37).backward()
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(gh, h.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, w.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # evaluation: the loss alone
        assert fused.linear_cross_entropy(h, w, y).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_model_targets_path_matches_logits_path(preset):
    """Tied (gpt2) and untied (llama) heads: same loss and parameter gradients."""
    torch.manual_seed(1)
    cfg = replace(ModelConfig(vocab_size=50, n_layer=2, n_head=2, d_model=32, context_length=16), **PRESETS[preset])
    model = build_model(cfg)
    x, y = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    y[0, :5] = -100
    a = model(x, targets=y)
    a.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    b = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
    b.backward()
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_bfloat16_autocast_is_close_to_float32():
    torch.manual_seed(2)
    cfg = replace(ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, context_length=16), **PRESETS["llama"])
    model = build_model(cfg)
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    ref = model(x, targets=y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, targets=y)
    low.backward()
    assert low.dtype == torch.float32 and low.item() == pytest.approx(ref.item(), rel=2e-2)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
