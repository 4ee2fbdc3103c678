"""The chunked output layer + cross-entropy equals the plain one, loss and gradients."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig
from lmlab.model import build_model
from lmlab.model import loss as fused
from lmlab.model.presets import PRESETS

U32 = 2.0**-24  # float32 unit roundoff


def reference(h, w, y):
    return F.cross_entropy(h @ w.t(), y, ignore_index=-100, reduction="sum")


def _chunked_problem(monkeypatch, chunk_elements: int, block_elements: int, seed: int):
    """h (150, 24), w (97, 24) and targets with every 7th ignored, the loss's chunk and block
    sizes set."""
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(fused, "BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(seed)
    h = torch.randn(150, 24, requires_grad=True)
    w = torch.randn(97, 24, requires_grad=True)
    y = torch.randint(0, 97, (150,))
    y[::7] = -100  # ignored targets
    return h, w, y


@pytest.mark.parametrize(
    "chunk_elements,block_elements", [(1 << 22, 1 << 22), (97 * 16, 97 * 48), (97 * 16, 1 << 22)]
)  # one chunk; many in several blocks, ragged last ones; many in one block
def test_loss_and_gradients_match_the_plain_path(chunk_elements, block_elements, monkeypatch):
    h, w, y = _chunked_problem(monkeypatch, chunk_elements, block_elements, seed=0)
    got = fused.linear_cross_entropy(h, w, y)
    (got * 0.37).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    # The truth in float64. The fused float32 path differs from it by rounding only: each result
    # is a sum of at most K = d + V + n products (logits: d, softmax: V, over tokens: n), so
    # |error| <= K * U32 * (the same sum over absolute values), on any CPU in any order.
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = reference(h64, w64, y)
    (ref * 0.37).backward()
    n, d, V = int((y != -100).sum()), h.shape[1], w.shape[0]
    K = d + V + n
    with torch.no_grad():
        logits = h64 @ w64.t()
        keep = y != -100
        terms = torch.logsumexp(logits[keep], -1).abs() + logits[keep].gather(
            1, y[keep, None]
        ).abs().squeeze(1)
        assert got.dtype == torch.float32
        assert abs(got.item() - ref.item()) <= K * U32 * float(terms.sum())
        # gradient bounds: |P - Y| @ |W| for h, |P - Y|^T @ |H| for w (0 rows where ignored)
        resid = torch.softmax(logits, -1) - F.one_hot(y.clamp(min=0), V).double()
        resid[~keep] = 0
        assert (
            (gh.double() - h64.grad).abs() <= K * U32 * 0.37 * (resid.abs() @ w64.abs()) + 1e-30
        ).all()
        assert (
            (gw.double() - w64.grad).abs() <= K * U32 * 0.37 * (resid.abs().t() @ h64.abs()) + 1e-30
        ).all()
        # evaluation: the loss alone
        assert abs(fused.linear_cross_entropy(h, w, y).item() - ref.item()) <= K * U32 * float(
            terms.sum()
        )


def _loss_and_grads(model, x, y, targets_path: bool):
    model.zero_grad()
    loss = (
        model(x, targets=y)
        if targets_path
        else F.cross_entropy(
            model(x).flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum"
        )
    )
    loss.backward()
    return loss.item(), {n: p.grad.detach().double().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_model_targets_path_matches_logits_path(preset):
    """Tied (gpt2) and untied (llama) heads: same loss and parameter gradients.

    Both float32 paths are measured against the same model in float64: the fused path must be
    as accurate as the plain one (within 4x its rounding error, plus 16 roundings of the value),
    which holds whatever order a CPU sums in, and fails for any real difference.
    """
    torch.manual_seed(1)
    cfg = replace(
        ModelConfig(vocab_size=50, n_layer=2, n_head=2, d_model=32, context_length=16),
        **PRESETS[preset],
    )
    model = build_model(cfg)
    x, y = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    y[0, :5] = -100
    a, ga = _loss_and_grads(model, x, y, targets_path=True)
    b, gb = _loss_and_grads(model, x, y, targets_path=False)
    truth, gt = _loss_and_grads(copy.deepcopy(model).double(), x, y, targets_path=False)
    assert abs(a - truth) <= 4 * abs(b - truth) + 16 * U32 * abs(truth)
    for n in gt:
        err_fused, err_plain = (ga[n] - gt[n]).norm(), (gb[n] - gt[n]).norm()
        assert err_fused <= 4 * err_plain + 16 * U32 * gt[n].norm(), (
            n,
            float(err_fused),
            float(err_plain),
        )


U_BF16 = 2.0**-8  # bfloat16 unit roundoff


@pytest.mark.parametrize("chunk_elements,block_elements", [(1 << 22, 1 << 22), (97 * 16, 97 * 48)])
def test_bfloat16_loss_and_gradients_are_those_of_its_bfloat16_logits(
    chunk_elements, block_elements, monkeypatch
):
    # Under bf16 autocast the logits are bf16(h) @ bf16(w) in bf16, as the plain autocast path
    # has them; from there the loss is float32 work, so it must equal the float64 loss of those
    # same logits within float32 rounding. The gradients round twice to bf16 (the softmax's
    # gradient before its matmul, the matmul's result), so each is within 2 bf16 roundings plus
    # the float32 sums' K roundings of |P - Y| @ |W| (for h) or |P - Y|^T @ |H| (for w).
    h, w, y = _chunked_problem(monkeypatch, chunk_elements, block_elements, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused.linear_cross_entropy(h, w, y)
    (got * 0.37).backward()
    hb, wb = h.detach().bfloat16().double(), w.detach().bfloat16().double()
    logits = (h.detach().bfloat16() @ w.detach().bfloat16().t()).double()  # bf16 logits
    keep = y != -100
    ref = F.cross_entropy(logits, y, ignore_index=-100, reduction="sum")
    K = 24 + 97 + int(keep.sum())
    terms = torch.logsumexp(logits[keep], -1).abs() + logits[keep].gather(1, y[keep, None]).abs()
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) <= K * U32 * float(terms.sum())
    resid = torch.softmax(logits, -1) - F.one_hot(y.clamp(min=0), 97).double()
    resid[~keep] = 0
    tol = 0.37 * (2 * U_BF16 + K * U32)
    want_h, want_w = 0.37 * resid @ wb, 0.37 * resid.t() @ hb
    assert ((h.grad.double() - want_h).abs() <= tol * (resid.abs() @ wb.abs()) + 1e-30).all()
    assert ((w.grad.double() - want_w).abs() <= tol * (resid.abs().t() @ hb.abs()) + 1e-30).all()
    assert (h.grad[~keep] == 0).all()  # ignored rows give nothing


def test_bfloat16_autocast_is_close_to_float32():
    torch.manual_seed(2)
    cfg = replace(
        ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, context_length=16),
        **PRESETS["llama"],
    )
    model = build_model(cfg)
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    ref = model(x, targets=y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, targets=y)
    low.backward()
    assert low.dtype == torch.float32 and low.item() == pytest.approx(ref.item(), rel=2e-2)
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        for p in model.parameters()
    )


def test_compile_runs_the_chunked_loss_eagerly_once_asked(monkeypatch):
    """The trainer calls run_eagerly_under_compile before torch.compile: dynamo then skips the
    chunked loss (left to eager mode, as the old import-time decorator did), and the
    compiled model's loss and gradients equal the eager model's."""
    dynamo = pytest.importorskip("torch._dynamo")
    monkeypatch.setattr(fused, "_eager_under_compile", None)  # as a fresh process has it
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(n_layer=1, n_head=2, d_model=32, context_length=16, vocab_size=300)
    )
    x, y = torch.randint(0, 300, (2, 16)), torch.randint(0, 300, (2, 16))
    want = model(x, targets=y)
    want.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    dynamo.reset()

    def skipped() -> list[str]:  # why dynamo left calls out of its graph
        dynamo.reset()
        return [r.reason for r in dynamo.explain(model)(x, targets=y).break_reasons]

    assert skipped() == []  # traced through
    fused.run_eagerly_under_compile()
    assert any("torch.compiler.disable" in r for r in skipped())  # left to eager mode
    dynamo.reset()
    got = torch.compile(model, backend="eager")(x, targets=y)
    got.backward()
    assert torch.equal(got, want)  # the same eager kernels run in the same order
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_importing_the_trainer_leaves_dynamo_and_fsdp_unloaded():
    """Every command imports the trainer's modules; torch._dynamo (torch.compiler.disable at
    import), torch.distributed.fsdp and its checkpoint API (about 2 s together) load only when a
    run compiles or shards."""
    import subprocess
    import sys

    code = (
        "import sys, lmlab.cli, lmlab.train.loop, lmlab.demo, lmlab.sample\n"
        "heavy = ('torch._dynamo', 'torch.distributed.fsdp', 'torch.distributed.checkpoint')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
