"""Muon (optim.name = "muon"): the orthogonalisation, the update rule, training, exact resume, DDP."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlab.config import ModelConfig, OptimConfig, to_toml
from lmlab.model import build_model
from lmlab.train import checkpoint as ck
from lmlab.train.loop import train
from lmlab.train.muon import Muon, newton_schulz, split_params
from lmlab.train.optim import build_optimizer, set_lr
from lmlab_train_fixtures import losses, make_text, tiny_config, write_dataset

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", make_text())


@pytest.mark.parametrize(
    "shape", [(48, 16), (16, 48)]
)  # (square random matrices have near-zero singular values that 5 steps leave small)
def test_newton_schulz_flattens_the_spectrum(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g[:, 0] *= 50  # a badly conditioned input
    o = newton_schulz(g, 5, torch.float64)
    s = torch.linalg.svdvals(o)
    # the quintic iteration trades exactness for speed: singular values land in ~(0.7, 1.2)
    assert s.min() > 0.6 and s.max() < 1.25
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cos = (o * (u @ vh)).sum() / (o.norm() * (u @ vh).norm())
    assert cos > 0.98  # the direction of U V^T


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        ModelConfig(vocab_size=40, n_layer=2, n_head=2, d_model=16, context_length=8, **kw)
    )


def test_split_params_gives_hidden_matrices_to_muon():
    model = _model(tie_embeddings=True)
    muon, decay, no_decay = split_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in muon) == sorted(
        f"blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    )
    assert [names[id(p)] for p in decay] == ["tok_emb.weight"]  # the tied head is the embedding
    assert all(p.dim() == 1 for p in no_decay) and no_decay
    untied = _model(tie_embeddings=False)
    _, decay, _ = split_params(untied)
    assert {n for n, p in untied.named_parameters() if any(p is q for q in decay)} == {
        "tok_emb.weight",
        "head.weight",
    }


@pytest.mark.parametrize("native_bf16", [False, True])
def test_one_step_matches_the_written_rule(monkeypatch, native_bf16):
    """Muon's matrices move by -lr*sqrt(max(1, rows/cols))*NS(nesterov momentum); the rest is AdamW."""
    import lmlab.train.muon

    monkeypatch.setattr(lmlab.train.muon, "cpu_has_native_bf16", lambda: native_bf16)
    assert Muon.ns_dtype(torch.zeros(1)) is (torch.bfloat16 if native_bf16 else torch.float32)
    model = _model()
    ocfg = OptimConfig(name="muon", muon_lr=0.05, weight_decay=0.1)
    opt = build_optimizer(model, ocfg, 1e-3, torch.device("cpu"))
    assert isinstance(opt, Muon)
    set_lr(opt, 5e-4)  # half the peak: Muon's lr halves too
    muon, decay, no_decay = split_params(model)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    ref = _model()
    ref.load_state_dict(model.state_dict())
    x = torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(1))
    for m in (model, ref):
        m(x).square().mean().backward()
    adam = torch.optim.AdamW(
        [
            {
                "params": [
                    q
                    for p, q in zip(model.parameters(), ref.parameters(), strict=True)
                    if any(p is d for d in decay)
                ],
                "weight_decay": 0.1,
            },
            {
                "params": [
                    q
                    for p, q in zip(model.parameters(), ref.parameters(), strict=True)
                    if any(p is d for d in no_decay)
                ],
                "weight_decay": 0.0,
            },
        ],
        lr=5e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    opt.step()
    adam.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        if any(p is m for m in muon):
            g = p.grad.float()
            d = 0.05 * g + 0.95 * (
                0.05 * g
            )  # buffer starts at zero: M = (1-m) G, D = (1-m) G + m M
            step = 0.025 * max(1.0, p.shape[0] / p.shape[1]) ** 0.5
            if Muon.ns_dtype(p) is torch.bfloat16:
                # bf16 on a CPU with native bf16: the same bf16 iteration, one rounding of O
                # (2^-8 relative) apart
                o = newton_schulz(d, 5, torch.bfloat16).double()
                atol = 2e-4
            else:
                # float32 (the Gram form for wide matrices) against the exact iteration
                # (float64): within a quarter of a bf16 rounding of O, the precision
                # test_gram_form_in_float32_is_as_precise_as_muon_needs asks for
                o = newton_schulz(d.double(), 5, torch.float64)
                atol = step * 2**-8 * o.abs().max().item() / 4
            expect = before[id(p)].double() - step * o
            torch.testing.assert_close(p.detach().double(), expect, rtol=0, atol=atol)
        else:
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)


def test_transposed_shapes_share_one_batched_iteration(monkeypatch):
    """A tall matrix is orthogonalised in the batch of the wide ones it transposes to (the
    qkv projection's 3d x d with the MLP's d x 3d at d_ff = 3d): one batch per wide shape."""
    import lmlab.train.muon

    model = build_model(
        ModelConfig(vocab_size=40, n_layer=2, n_head=2, d_model=16, d_ff=48, context_length=8)
    )
    opt = build_optimizer(model, OptimConfig(name="muon"), 1e-3, torch.device("cpu"))
    shapes = {tuple(p.shape) for p in split_params(model)[0]}
    assert {(48, 16), (16, 48)} <= shapes  # both orientations are there to merge
    wide = {(min(s), max(s)) for s in shapes}
    batches = []
    real = lmlab.train.muon.newton_schulz
    monkeypatch.setattr(
        lmlab.train.muon,
        "newton_schulz",
        lambda g, *a, **k: batches.append(tuple(g.shape)) or real(g, *a, **k),
    )
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert sorted(b[1:] for b in batches) == sorted(wide)
    assert sum(b[0] for b in batches) == len(split_params(model)[0])


def test_state_dict_round_trip():
    model = _model()
    opt = build_optimizer(model, OptimConfig(name="muon"), 1e-3, torch.device("cpu"))
    model(torch.zeros((1, 8), dtype=torch.long)).sum().backward()
    opt.step()
    opt.zero_grad()
    sd = opt.state_dict()
    model2 = _model()
    model2.load_state_dict(model.state_dict())
    opt2 = build_optimizer(model2, OptimConfig(name="muon"), 1e-3, torch.device("cpu"))
    opt2.load_state_dict(
        copy.deepcopy(sd)
    )  # (torch shares state tensors with the source otherwise)
    set_lr(opt2, 1e-3)
    assert [g["lr"] for g in opt2.param_groups] == [0.02, 1e-3, 1e-3]
    for m in (model, model2):
        m(torch.ones((1, 8), dtype=torch.long)).sum().backward()
    opt.step()
    opt2.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    adamw = build_optimizer(model, OptimConfig(), 1e-3, torch.device("cpu"))
    with pytest.raises(ValueError):
        opt2.load_state_dict(adamw.state_dict())


def test_muon_training_loss_falls_and_resume_is_exact(dataset, tmp_path):
    common = dict(
        optim__name="muon",
        train__max_steps=12,
        train__checkpoint_every=6,
        train__keep_checkpoints=5,
        train__eval_every=6,
        eval__samples=0,
        model__dropout=0.1,
    )
    ref = tmp_path / "ref"
    train(tiny_config(dataset, ref, **common))
    got = losses(ref)
    first, last = sum(got[s] for s in range(1, 4)) / 3, sum(got[s] for s in range(10, 13)) / 3
    assert last < first - 0.2, got
    # stop after step 6's checkpoint, resume: bit for bit the same as the uninterrupted run
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    shutil.rmtree(run / "checkpoints" / "step_000012")
    (run / "checkpoints" / "latest").write_text(ck.checkpoint_name(6) + "\n")
    train(tiny_config(dataset, run, **common), resume=True)
    again = losses(run)
    for step in range(7, 13):
        assert again[step] == got[step], step
    assert losses(run, "val_loss") == losses(ref, "val_loss")


@pytest.mark.slow
@pytest.mark.skipif(
    not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed"
)
def test_muon_under_ddp_matches_one_process(tmp_path):
    """Two gloo processes (grads averaged before the step) give one process's losses."""
    data = write_dataset(tmp_path / "ds", make_text(40))
    cfg = tiny_config(
        data,
        tmp_path / "one",
        optim__name="muon",
        train__max_steps=4,
        train__batch_size=8,
        train__micro_batch_size=4,
        train__eval_every=4,
        train__checkpoint_every=4,
        eval__samples=0,
    )
    toml = tmp_path / "cfg.toml"
    toml.write_text(to_toml(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    for cmd in (
        [sys.executable, "-m", "lmlab", "train", str(toml), "--out", str(tmp_path / "one")],
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "lmlab",
            "train",
            str(toml),
            "--out",
            str(tmp_path / "two"),
        ],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5)
    assert losses(tmp_path / "two", "val_loss")[4] == pytest.approx(
        losses(tmp_path / "one", "val_loss")[4], rel=1e-5
    )


def test_newton_schulz_is_three_kernels_per_iteration():
    """Each iteration is x x^T and two fused baddbmm (scaled term + product), not 8 separate
    kernels: on a width-128 CPU model the elementwise ones were a third of Muon's step. The
    result is the plain formula's, checked in float64 on a stack of matrices."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    g = torch.randn(3, 16, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with Count() as count:
        o = newton_schulz(g, 5, torch.float64, form="standard")
    heavy = {k: v for k, v in count.ops.items() if k in ("bmm", "baddbmm", "mul", "add", "matmul")}
    assert heavy == {"bmm": 5, "baddbmm": 10, "add": 1}, count.ops  # add: the norm's epsilon
    a, b, c = 3.4445, -4.7750, 2.0315  # the plain quintic iteration
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(5):
        A = x @ x.mT
        x = a * x + (b * A + c * (A @ A)) @ x
    # float64, |entries| <= ~1, sums of <= 48 products per step, 5 steps: far below 1e-12
    torch.testing.assert_close(o, x, rtol=0, atol=1e-12)


def _spectrum(rows: int, cols: int, smallest: float, seed: int) -> torch.Tensor:
    """A float64 matrix with singular values from 1 down to ``smallest`` (geometric), the
    badly conditioned kind a momentum of gradients is."""
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=torch.float64))
    return (u * torch.logspace(0, torch.tensor(smallest).log10().item(), k)) @ v.T


def _rounding_bound(rows: int, cols: int, steps: int, dtype: torch.dtype) -> float:
    """Worst-case elementwise rounding of either form: every product sums <= rows + cols terms
    of entries <= 1 (spectral norm <= 1.2 throughout), about 4 products a step, and an error
    made early grows by at most |P| <= a = 3.4445 a step (max of |a + b s^2 + c s^4| on [0, 1.2])."""
    return 3.4445**steps * steps * 4 * (rows + cols) * torch.finfo(dtype).eps


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (3, 8, 40)])
def test_gram_form_is_the_standard_iteration(shape):
    """The Gram form computes the same polynomial of x: in float64 both agree to rounding,
    which a wrong product order or a dropped P would miss by orders of magnitude."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g[..., 0, :] *= 30  # badly conditioned: one large singular value
    gram = newton_schulz(g, 5, torch.float64, form="gram")
    standard = newton_schulz(g, 5, torch.float64, form="standard")
    bound = _rounding_bound(shape[-2], shape[-1], 5, torch.float64)
    assert (gram - standard).abs().max().item() < bound < 1e-9
    assert newton_schulz(g, 0, torch.float64, form="gram").shape == g.shape


@pytest.mark.parametrize("smallest", [1e-3, 1e-8])
def test_gram_form_in_float32_is_as_precise_as_muon_needs(smallest):
    """In float32 the Gram form rounds more than the standard one (it multiplies m x m
    matrices whose small eigenvalues are squares of x's singular values); Muon runs the
    standard form in bf16 on GPUs, whose every product is rounded to 2^-8 of its size, so the
    float32 Gram form must stay well inside that, against float64, on a badly conditioned
    input."""
    g = _spectrum(64, 256, smallest, seed=3)
    exact = newton_schulz(g, 5, torch.float64, form="standard")
    got = newton_schulz(g.float(), 5, torch.float32, form="gram").double()
    scale = exact.abs().max().item()
    assert (got - exact).abs().max().item() < 2**-8 * scale / 4


def test_auto_takes_the_gram_form_for_wide_float32_matrices_only():
    """Counted flops (torch's FlopCounterMode: 2 per multiply-add): for an m x n matrix the
    Gram form costs 4 m^2 n + 34 m^3 over 5 steps, the standard 20 m^2 n + 10 m^3, so 'auto'
    takes it in float32/float64 once n > 1.5 m (Muon's fp32 path on CPUs without native bf16:
    the recipe's 768 x 128 MLP matrix 121 against 273 MFLOP), never in bf16."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(shape: tuple[int, int], dtype: torch.dtype) -> int:
        g = torch.randn(2, *shape)
        with FlopCounterMode(display=False) as counter:
            newton_schulz(g, 5, dtype)
        return counter.get_total_flops()

    def expected(m: int, n: int, form: str) -> int:
        per_matrix = 4 * m * m * n + 34 * m**3 if form == "gram" else 20 * m * m * n + 10 * m**3
        return 2 * per_matrix

    assert flops((32, 96), torch.float32) == expected(32, 96, "gram")
    assert flops((96, 32), torch.float32) == expected(32, 96, "gram")  # tall: transposed first
    assert flops((32, 40), torch.float32) == expected(32, 40, "standard")  # 1.25 < 1.5
    assert flops((32, 96), torch.bfloat16) == expected(32, 96, "standard")
    with pytest.raises(ValueError, match="form"):
        newton_schulz(torch.randn(4, 8), 5, torch.float32, form="fast")
