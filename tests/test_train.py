"""The training loop end to end on a tiny CPU model: files written, stopping rules, guards."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lmlab.errors import ConfigError
from lmlab.train import step as train_step_module
from lmlab.train.checkpoint import resolve_checkpoint
from lmlab.train.loop import SpikeGuard, train
from lmlab_train_fixtures import float64, losses, make_text, tiny_config, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", make_text())


def test_tiny_run_writes_its_files(dataset, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config(dataset, run))
    assert result.steps == 12 and not result.diverged and result.stop_reason == "max_steps"
    assert result.tokens == 12 * 4 * 16
    # resolved config, with the vocabulary taken from the dataset
    assert "vocab_size = " in (run / "config.toml").read_text()
    assert "vocab_size = 0" not in (run / "config.toml").read_text()
    train_losses = losses(run)
    assert sorted(train_losses) == list(range(1, 13))
    assert all(math.isfinite(v) for v in train_losses.values())
    assert train_losses[12] < train_losses[1]  # it learns
    val = losses(run, "val_loss")
    assert sorted(val) == [4, 8, 12]
    assert result.final_val_loss == pytest.approx(val[12])
    assert result.best_val_loss == pytest.approx(min(val.values()))
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"step", "train_loss", "lr", "grad_norm", "tok_per_s", "elapsed"} <= set(first)
    samples = (run / "samples.md").read_text()
    assert samples.count("## step") == 3 and "### sample 1" in samples
    # checkpoints: newest 2 kept (+ best, here the newest), latest names the last one
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000008", "step_000012"]
    assert resolve_checkpoint(run).name == "step_000012"
    state = json.loads((run / "checkpoints" / "step_000012" / "state.json").read_text())
    assert (
        state["step"] == 12
        and state["tokens"] == 768
        and state["loader"] == {"seed": 3, "step": 12}
    )
    assert {"python", "numpy", "torch"} <= set(state["rng"][0])
    assert json.loads((run / "result.json").read_text())["steps"] == 12
    assert (run / "tokenizer").is_dir()
    assert (run / "loss.png").is_file() and "stop_reason" in (run / "report.md").read_text()


def test_accumulation_matches_one_pass(dataset, tmp_path):
    # batch 8 in one forward pass vs 4 micro-batches of 2: the same update. In float32 the two
    # differ by summation order (4.6e-6 in a weight after 3 steps on one Intel CPU: Adam divides
    # gradient noise by sqrt(v) + eps); in float64 the same noise is ~1e-15, so 1e-10 has margin
    # yet catches any real difference (a mis-scaled micro-batch changes weights by ~lr = 3e-3).
    with float64():
        a = train(
            tiny_config(
                dataset,
                tmp_path / "a",
                train__batch_size=8,
                train__max_steps=3,
                train__eval_every=0,
                eval__samples=0,
            )
        )
        b = train(
            tiny_config(
                dataset,
                tmp_path / "b",
                train__batch_size=8,
                train__micro_batch_size=2,
                train__max_steps=3,
                train__eval_every=0,
                eval__samples=0,
            )
        )
    la, lb = losses(Path(a.run_dir)), losses(Path(b.run_dir))
    for step in (1, 2, 3):
        assert lb[step] == pytest.approx(la[step], rel=1e-12, abs=0)
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "checkpoints" / "step_000003" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "step_000003" / "model.safetensors"))
    for k in wa:
        assert wa[k].dtype == torch.float64
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-10)


def test_batch_tokens_sets_the_global_batch(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path / "r", train__batch_tokens=100, train__micro_batch_size=2)
    assert cfg.batch_shape(1) == (6, 2)  # 100/16 -> 6 sequences, a multiple of 2
    assert cfg.batch_shape(2) == (8, 2)  # and of micro x world
    bad = tiny_config(dataset, tmp_path / "r", train__batch_size=6)
    with pytest.raises(ConfigError, match="train.batch_size"):
        bad.batch_shape(4)


def test_divergence_is_recorded_not_raised(dataset, tmp_path):
    result = train(
        tiny_config(
            dataset,
            tmp_path / "r",
            train__lr=1e6,
            train__min_lr=1e6,
            train__warmup_steps=0,
            train__max_steps=30,
        )
    )
    assert result.diverged and result.stop_reason == "diverged"
    assert result.steps < 30
    recs = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert recs[-1].get("diverged") is True
    assert json.loads((tmp_path / "r" / "result.json").read_text())["diverged"] is True


def test_early_stopping(dataset, tmp_path):
    # lr 0: val loss never improves after the first eval, so patience 2 stops at the 3rd eval
    cfg = tiny_config(
        dataset,
        tmp_path / "r",
        train__lr=0.0,
        train__min_lr=0.0,
        train__max_steps=40,
        train__eval_every=2,
        train__patience=2,
        eval__samples=0,
    )
    result = train(cfg)
    assert result.stop_reason == "early_stop"
    assert result.steps == 6
    assert result.best_step == 2
    assert resolve_checkpoint(tmp_path / "r").name == "step_000006"


def test_time_budget_stops_and_checkpoints(dataset, tmp_path):
    cfg = tiny_config(
        dataset, tmp_path / "r", train__max_minutes=1e-6, train__max_steps=1000, eval__samples=0
    )
    result = train(cfg)
    assert result.stop_reason == "time_budget" and result.steps == 1
    assert resolve_checkpoint(tmp_path / "r").name == "step_000001"
    assert 1 in losses(tmp_path / "r", "val_loss")  # evaluated before stopping


def test_spike_guard_unit():
    g = SpikeGuard(factor=3.0, window=5)
    assert not any(g.is_spike(v) for v in [1.0, 1.1, 0.9, 1.0, 1.05])  # warming up
    assert g.is_spike(10.0)  # 10 > 3 x median 1.0
    assert 10.0 not in g.history
    assert not g.is_spike(2.0)
    assert SpikeGuard(0.0, 5).enabled is False


def test_spike_guard_skips_an_injected_spike(dataset, tmp_path, monkeypatch):
    real = train_step_module._clip_grads
    calls = {"n": 0}

    def spiky(params, max_norm):
        calls["n"] += 1
        if calls["n"] == 14:  # blow the gradient up at step 14
            for p in params:
                p.grad.mul_(1e4)
        return real(params, max_norm)

    monkeypatch.setattr(train_step_module, "_clip_grads", spiky)
    cfg = tiny_config(
        dataset,
        tmp_path / "r",
        train__max_steps=16,
        train__eval_every=0,
        eval__samples=0,
        optim__spike_factor=5.0,
        optim__spike_window=20,
    )
    result = train(cfg)
    assert result.skipped_steps == 1
    recs = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    by_step = {r["step"]: r for r in recs if "train_loss" in r}
    assert "skipped" not in by_step[13] and by_step[14]["skipped"] == 1
    assert by_step[14]["grad_norm"] > 1e3
    state = json.loads((tmp_path / "r" / "checkpoints" / "step_000016" / "state.json").read_text())
    assert state["skipped_steps"] == 1 and max(state["spike_history"]) < 1e3


def test_missing_tensorboard_is_a_clear_error(dataset, tmp_path):
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="log.tensorboard"):
        train(tiny_config(dataset, tmp_path / "r", log__tensorboard=True, train__max_steps=1))


def test_resume_without_checkpoint_starts_fresh(dataset, tmp_path):
    result = train(
        tiny_config(dataset, tmp_path / "r", train__max_steps=2, eval__samples=0), resume=True
    )
    assert result.steps == 2 and sorted(losses(tmp_path / "r")) == [1, 2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_run(dataset, tmp_path):
    result = train(
        tiny_config(
            dataset, tmp_path / "r", train__device="cuda", train__dtype="auto", train__max_steps=4
        )
    )
    assert not result.diverged and result.final_val_loss is not None
    recs = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(math.isfinite(r["train_loss"]) for r in recs if "train_loss" in r)


def test_fused_loss_trains_like_the_plain_loss(dataset, tmp_path, monkeypatch):
    """From vocab 1024 up the loop computes head + loss in chunks; same losses as the plain path."""
    from lmlab.model import transformer

    calls = []
    real = transformer.linear_cross_entropy
    monkeypatch.setattr(transformer, "linear_cross_entropy", lambda *a: calls.append(1) or real(*a))
    common = dict(model__vocab_size=1100, train__max_steps=6, train__eval_every=3, eval__samples=0)
    # in float64 (see test_accumulation_matches_one_pass): the two paths differ by roundoff only
    with float64():
        a = train(tiny_config(dataset, tmp_path / "fused", **common))
        assert len(calls) == 6  # one call per training step (evaluation takes the logits path)
        b = train(tiny_config(dataset, tmp_path / "plain", train__fused_loss=False, **common))
    assert len(calls) == 6
    la, lb = losses(Path(a.run_dir)), losses(Path(b.run_dir))
    assert sorted(la) == list(range(1, 7))
    for step in la:
        assert la[step] == pytest.approx(lb[step], rel=1e-10, abs=0)
    assert a.final_val_loss == pytest.approx(b.final_val_loss, rel=1e-10, abs=0)


def test_train_compile_prepares_the_loss_and_trains_the_same(dataset, tmp_path, monkeypatch):
    """``train.compile = true`` makes the chunked loss run eagerly under dynamo (set up before
    compiling, no longer at import) and, with dynamo's eager backend standing in for inductor
    (minutes of C++ compilation), trains to the eager run's losses."""
    from lmlab.model import loss as fused

    monkeypatch.setattr(fused, "_eager_under_compile", None)  # as a fresh process has it
    real_compile = torch.compile
    compiled = []

    def eager_backend(model, mode=None, **kw):
        compiled.append(mode)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_backend)
    want = losses(Path(train(tiny_config(dataset, tmp_path / "eager")).run_dir))
    got = losses(
        Path(train(tiny_config(dataset, tmp_path / "compiled", train__compile=True)).run_dir)
    )
    assert compiled == [None] and fused._eager_under_compile is not None
    assert got == want


def test_fit_to_time_refits_the_steps_to_the_pace_at_each_eval_and_resumes_with_them(
    dataset, tmp_path, monkeypatch
):
    """A fake clock: 0.5 s a step up to step 4, then 0.25 s. At the step-4 eval, 4.2 s of the
    6.2 s budget are left: 8 more steps at 0.5 s, max_steps 30 -> 12. At step 8 the pace since
    is 0.25 s and 3.2 s are left: 12 more, max_steps -> 20, where the later evals leave it. The
    cosine ends on step 20, and the run's config.toml and checkpoint say 20: a resume continues
    the fitted schedule."""
    from lmlab.config import load_config
    from lmlab.runs import read_state
    from lmlab.train.optim import lr_at
    from lmlab.train.setup import TrainSetup

    def fake_elapsed(self):
        n = self.state.step
        return 0.5 * min(n, 4) + 0.25 * max(n - 4, 0)

    monkeypatch.setattr(TrainSetup, "elapsed", fake_elapsed)
    run = tmp_path / "run"
    kw = dict(
        train__max_steps=30,
        train__eval_every=4,
        train__checkpoint_every=0,
        train__max_minutes=6.2 / 60,
        train__fit_to_time=True,
        eval__samples=0,
    )
    result = train(tiny_config(dataset, run, **kw))
    assert (result.steps, result.stop_reason) == (20, "max_steps")
    fitted = load_config(run / "config.toml")
    assert fitted.train.max_steps == 20
    lrs = losses(run, "lr")  # the last step's lr is that of a 20-step schedule
    assert max(lrs) == 20 and lrs[20] == pytest.approx(lr_at(19, fitted.train), rel=1e-6)
    assert read_state(resolve_checkpoint(run))["fitted_max_steps"] == 20
    # asked for more on resume, the fitted run is still 20 steps long: nothing left to do
    again = train(tiny_config(dataset, run, **{**kw, "train__max_steps": 40}), resume=True)
    assert again.steps == 20
    with pytest.raises(ConfigError, match=r"train\.fit_to_time: needs train\.max_minutes"):
        tiny_config(dataset, run, train__fit_to_time=True)
