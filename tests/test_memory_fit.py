"""Micro-batches that fit: the probe, the out-of-memory retry, and their agreement with accounting.

On the CPU there is no out-of-memory to catch, so these tests inject a limit
(lmlab.train.memory_fit.set_fake_limit): a dispatch mode counts the bytes of the tensors the
step really creates and raises torch.OutOfMemoryError past it, as the CUDA allocator would.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from lmlab import accounting
from lmlab.train import memory_fit as mf
from lmlab.train.loop import train
from lmlab_train_fixtures import losses, make_text, tiny_config, write_dataset


@pytest.fixture
def no_limit():
    yield
    mf.set_fake_limit(None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("mf") / "ds", make_text(60))


@pytest.mark.parametrize("limit", [1, 2, 5, 7, 8, 31, 64, 100])
def test_largest_fitting_finds_the_boundary_in_log_steps(limit):
    calls = []

    def fits(n):
        calls.append(n)
        return n <= limit

    assert mf.largest_fitting(fits, 64) == min(limit, 64)
    assert len(calls) <= 2 * 7 + 1  # doubling then bisection over 64 sizes


def test_largest_fitting_none_fits():
    assert mf.largest_fitting(lambda n: False, 16) == 0


def test_largest_divisor_at_most():
    assert mf.largest_divisor_at_most(24, 10) == 8
    assert mf.largest_divisor_at_most(24, 24) == 24
    assert mf.largest_divisor_at_most(7, 6) == 1
    assert mf.largest_divisor_at_most(12, 0) == 1


def test_meter_counts_live_storages_and_raises_past_the_limit():
    meter = mf.MemoryMeter(limit=10 * 2**20)
    with meter:
        a = torch.ones(2**20)  # 4 MiB
        b = a.view(-1)  # a view adds nothing
        assert meter.current == 4 * 2**20
        del a, b
        assert meter.current == 0
        with pytest.raises(torch.OutOfMemoryError):
            torch.ones(3 * 2**20)  # 12 MiB > 10 MiB
    assert meter.peak == 12 * 2**20


def _cfg(dataset, out, **kw):
    # vocab 64 (< 1024): the plain head + cross-entropy, the path accounting's formula describes
    base = dict(
        model__d_model=64,
        model__n_layer=2,
        model__context_length=32,
        train__eval_every=0,
        eval__samples=0,
    )
    return tiny_config(dataset, out, **{**base, **kw})


def test_probe_agrees_with_account_memory_gb(dataset, tmp_path, capsys, no_limit, monkeypatch):
    cfg = _cfg(
        dataset,
        tmp_path / "r",
        train__batch_size=256,
        train__micro_batch_size=0,
        train__max_steps=1,
    )
    m = dataclasses.replace(cfg.model, vocab_size=64)
    T = cfg.model.context_length
    limit = accounting.training_memory(m, 24, T, "float32")["total"]
    predicted = accounting.max_batch_size(
        m, T, limit, "float32"
    )  # what `lmlab account --memory-gb` says
    assert predicted == 24
    split = []
    real_split = mf.split_batches
    monkeypatch.setattr(mf, "split_batches", lambda b, n: split.append(n) or real_split(b, n))
    mf.set_fake_limit(limit)
    probed = train(cfg)
    mf.set_fake_limit(None)
    # evaluation reads the same val windows in pieces of the probed size: the same val loss
    whole = train(_cfg(dataset, tmp_path / "whole", train__batch_size=256, train__max_steps=1))
    assert split and probed.final_val_loss == pytest.approx(whole.final_val_loss, rel=1e-6)
    out = capsys.readouterr().out
    found = int(
        re.search(r"memory probe: up to (\d+) sequences fit; micro-batch (\d+)", out).group(1)
    )
    micro = int(re.search(r"micro-batch (\d+)", out).group(1))
    assert abs(found - predicted) / predicted <= 0.2, (found, predicted)
    assert 256 % micro == 0 and micro <= found  # the global batch is kept by accumulation
    assert f"({256 // micro} micro-batch(es) per process)" in out


def test_cpu_without_limit_keeps_the_whole_batch(dataset, tmp_path, capsys):
    train(_cfg(dataset, tmp_path / "r", train__batch_size=8, train__max_steps=1))
    out = capsys.readouterr().out
    assert "memory probe" not in out and "(1 micro-batch(es) per process)" in out


def test_oom_in_training_halves_the_micro_batch_and_redoes_the_step(
    dataset, tmp_path, capsys, no_limit
):
    common = dict(train__batch_size=8, train__max_steps=4, model__dropout=0.1)
    ref = train(_cfg(dataset, tmp_path / "ref", train__micro_batch_size=4, **common))
    capsys.readouterr()
    cfg = _cfg(dataset, tmp_path / "oom", train__micro_batch_size=8, **common)
    m = dataclasses.replace(cfg.model, vocab_size=64)
    # room for about 6 sequences: 8 runs out of memory, 4 fits
    mf.set_fake_limit(
        accounting.training_memory(m, 6, cfg.model.context_length, "float32")["total"]
    )
    got = train(cfg)
    mf.set_fake_limit(None)
    assert "out of memory at micro-batch 8; retrying the step with 4" in capsys.readouterr().out
    assert got.steps == 4
    lo, lr_ = losses(tmp_path / "oom"), losses(tmp_path / "ref")
    # the redone step used the same data and dropout masks as a run at micro-batch 4 from the
    # start (the failed try's random draws are rewound): the same losses, bit for bit
    assert ref.steps == 4 and sorted(lo) == [1, 2, 3, 4]
    assert lo == lr_


def test_activation_checkpointing_lowers_peak_memory_and_keeps_the_losses(dataset, tmp_path):
    from lmlab.config import ModelConfig
    from lmlab.model import build_model
    from lmlab.train import fsdp

    def peak(checkpointed: bool) -> int:
        torch.manual_seed(0)
        model = build_model(
            ModelConfig(vocab_size=64, n_layer=4, n_head=2, d_model=64, context_length=64)
        )
        if checkpointed:
            fsdp.checkpoint_activations(model)
        x = torch.randint(0, 64, (8, 64), generator=torch.Generator().manual_seed(1))
        meter = mf.MemoryMeter(limit=float("inf"))
        with meter:
            model(x, targets=x).backward()
        return meter.peak

    plain, ckpt = peak(False), peak(True)
    assert ckpt < 0.7 * plain, (ckpt, plain)  # only block inputs are kept through the forward
    common = dict(train__max_steps=3, train__batch_size=4, model__dropout=0.1)
    a = train(_cfg(dataset, tmp_path / "a", **common))
    b = train(_cfg(dataset, tmp_path / "b", train__activation_checkpointing=True, **common))
    # recomputation replays the same dropout masks (the RNG state is kept for it): same losses
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), rel=1e-6)
    assert a.steps == b.steps == 3
