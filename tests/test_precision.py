"""train.dtype = auto on a CPU: bf16 autocast only when measured faster, recorded, kept on resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.model import build_model
from lmlab.train import checkpoint as ck
from lmlab.train import precision
from lmlab.train.loop import train
from lmlab_train_fixtures import losses, make_text, tiny_config, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", make_text())


@pytest.fixture(autouse=True)
def fresh_cache():
    precision._CACHE.clear()
    yield
    precision._CACHE.clear()


def _fake_times(monkeypatch, fp32: float, bf16: float) -> list[torch.dtype]:
    """Make every fp32 pass take ``fp32`` s and every bf16 pass ``bf16`` s; record the dtypes."""
    seen: list[torch.dtype] = []
    real = precision._pass_seconds

    def fake(model, x, y, dtype, fused):
        real(model, x, y, dtype, fused)  # still a real pass (it must run)
        seen.append(dtype)
        t = fp32 if dtype is torch.float32 else bf16
        return t, t

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "_pass_seconds", fake)
    return seen


def _autocast_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtypes the loop's training forward passes run under."""
    import lmlab.train.step as step

    used: list[torch.dtype] = []
    real = step.autocast
    monkeypatch.setattr(
        step, "autocast", lambda device, dtype: used.append(dtype) or real(device, dtype)
    )
    return used


def test_no_native_bf16_means_fp32_without_measuring(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(
        precision, "measure_cpu_train_dtype", lambda *a, **k: pytest.fail("measured")
    )
    used = _autocast_dtypes(monkeypatch)
    train(
        tiny_config(
            dataset, tmp_path / "r", train__dtype="auto", train__max_steps=2, eval__samples=0
        )
    )
    assert set(used) == {torch.float32}
    rec = json.loads((tmp_path / "r" / "precision.json").read_text())
    assert rec["dtype"] == "float32" and "no native bf16" in rec["reason"]


@pytest.mark.parametrize(
    ("fp32", "bf16", "expect"),
    [(2.0, 1.0, torch.bfloat16), (1.05, 1.0, torch.float32), (1.0, 2.0, torch.float32)],
)
def test_auto_follows_the_measurement(dataset, tmp_path, monkeypatch, fp32, bf16, expect):
    seen = _fake_times(monkeypatch, fp32, bf16)
    used = _autocast_dtypes(monkeypatch)
    result = train(
        tiny_config(
            dataset, tmp_path / "r", train__dtype="auto", train__max_steps=3, eval__samples=0
        )
    )
    assert (
        seen.count(torch.float32) == seen.count(torch.bfloat16) >= 3
    )  # alternated, warm-up included
    assert set(used) == {expect}
    rec = json.loads((tmp_path / "r" / "precision.json").read_text())
    assert rec["dtype"] == str(expect).removeprefix("torch.")
    assert rec["seconds_per_pass"] == {"float32": fp32, "bfloat16": bf16}
    assert result.final_val_loss is not None and not result.diverged


@pytest.mark.parametrize(
    ("fp32", "bf16", "clear"),
    [(1.5, 1.0, True), (1.0, 1.5, True), (1.15, 1.0, False), (1.0, 1.02, False)],
)
def test_the_probe_stops_early_only_when_the_pick_is_clear(monkeypatch, fp32, bf16, clear):
    """Best-of times that clear MIN_GAIN by CLEAR_MARGIN either way end the probe after
    MIN_ROUNDS rounds; a near call measures on to the budget (here 10 rounds: the fake passes
    take no time)."""
    _fake_times(monkeypatch, fp32, bf16)
    model = build_model(
        ModelConfig(vocab_size=50, n_layer=1, n_head=2, d_model=16, context_length=8)
    )
    got = precision.measure_cpu_train_dtype(model, 2, 8, 50, fused=False, budget_s=60.0)
    assert got["rounds"] == (precision.MIN_ROUNDS if clear else 10)
    assert got["dtype"] == ("bfloat16" if fp32 / bf16 >= precision.MIN_GAIN else "float32")


def test_explicit_dtype_is_not_measured(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(
        precision, "measure_cpu_train_dtype", lambda *a, **k: pytest.fail("measured")
    )
    train(
        tiny_config(
            dataset, tmp_path / "r", train__dtype="float32", train__max_steps=1, eval__samples=0
        )
    )
    assert not (tmp_path / "r" / "precision.json").exists()


def test_resume_keeps_the_first_choice_and_the_measurement_leaves_rng_alone(
    dataset, tmp_path, monkeypatch
):
    _fake_times(monkeypatch, 2.0, 1.0)  # bf16 "faster"
    common = dict(
        train__dtype="auto",
        train__max_steps=6,
        train__checkpoint_every=3,
        train__keep_checkpoints=5,
        eval__samples=0,
        model__dropout=0.1,
    )
    ref = tmp_path / "ref"
    train(tiny_config(dataset, ref, **common))
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    shutil.rmtree(run / "checkpoints" / "step_000006")
    (run / "checkpoints" / "latest").write_text(ck.checkpoint_name(3) + "\n")
    precision._CACHE.clear()
    _fake_times(monkeypatch, 1.0, 2.0)  # now fp32 would win: the resumed run must stay in bf16
    used = _autocast_dtypes(monkeypatch)
    train(tiny_config(dataset, run, **common), resume=True)
    assert set(used) == {torch.bfloat16}
    assert [losses(run)[s] for s in (4, 5, 6)] == [losses(ref)[s] for s in (4, 5, 6)]
    # the same run in bf16 chosen explicitly: the probe passes drew nothing from the training RNG
    plain = tmp_path / "plain"
    train(tiny_config(dataset, plain, **{**common, "train__dtype": "bfloat16"}))
    assert losses(plain) == losses(ref)


def test_real_measurement_is_finite_and_cached(monkeypatch):
    monkeypatch.setattr(
        precision, "cpu_has_native_bf16", lambda: True
    )  # bf16 runs (emulated if need be)
    model = build_model(
        ModelConfig(vocab_size=50, n_layer=1, n_head=2, d_model=16, context_length=8)
    )
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    a = precision.pick_cpu_train_dtype(model, 2, 8, 50, fused=False)
    assert a["dtype"] in ("float32", "bfloat16")
    assert all(
        0 < t < 60 for k in ("seconds_per_pass", "cpu_seconds_per_pass") for t in a[k].values()
    )
    assert 2 <= a["rounds"] <= 10
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    monkeypatch.setattr(
        precision, "measure_cpu_train_dtype", lambda *a, **k: pytest.fail("measured twice")
    )
    assert precision.pick_cpu_train_dtype(model, 2, 8, 50, fused=False) == a
