"""The checkpoint's training state (lmlab.runs.state.TrainState) and the in-loop samples.

``fixtures/checkpoint_before_trainstate/step_000003`` was written by lmlab before the trainer was
split into setup/step/hooks and its state packed into TrainState (commit 1c6acd2), from the run
in :func:`_config` (float64, dropout 0.1). Resuming it must continue that run's losses: the
on-disk keys and their meaning are unchanged. The run is in float64 for the reason
tests/test_first_losses.py gives; ABS_TOL is its tolerance.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from lmlab.outputs import write_marker
from lmlab.runs import read_state
from lmlab.runs.read import load_model, read_train_state
from lmlab.runs.state import TrainState
from lmlab.sample import generate
from lmlab.tokenizer import load_tokenizer
from lmlab.train.loop import train
from lmlab_train_fixtures import float64, losses, make_text, tiny_config, write_dataset

OLD_CKPT = Path(__file__).parent / "fixtures" / "checkpoint_before_trainstate" / "step_000003"
# train losses of the uninterrupted 6-step run, as the old code logged them
OLD_LOSSES = {
    4: 3.142523242846013,
    5: 3.1050426849263166,
    6: 3.111434449690311,
}
ABS_TOL = 1e-9
STATE_KEYS = [
    "tokens",
    "loader",
    "rng",
    "best_val_loss",
    "best_step",
    "evals_since_best",
    "last_val_loss",
    "best_checkpoint",
    "spike_history",
    "skipped_steps",
    "elapsed_s",
    "world_size",
    "global_batch",
    "step",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("state") / "ds", make_text(30, seed=1))


def _config(dataset: Path, run: Path, **overrides):
    settings = {
        "model__n_layer": 1,
        "model__n_head": 1,
        "model__d_model": 8,
        "model__context_length": 8,
        "model__dropout": 0.1,
        "train__max_steps": 6,
        "train__eval_every": 3,
        "train__checkpoint_every": 3,
        "train__keep_checkpoints": 5,
        "eval__samples": 0,
    }
    return tiny_config(dataset, run, **{**settings, **overrides})


def test_state_dict_round_trips_the_old_state_json():
    old = json.loads((OLD_CKPT / "state.json").read_text())
    assert list(old) == STATE_KEYS
    state = read_train_state(OLD_CKPT)
    assert state.step == 3 and state.loader == {"seed": 3, "step": 3}
    assert state.state_dict() == old


def test_a_state_without_the_later_keys_loads_and_a_broken_one_is_named(tmp_path):
    old = json.loads((OLD_CKPT / "state.json").read_text())
    older = {k: v for k, v in old.items() if k not in ("world_size", "global_batch")}
    state = TrainState.from_state_dict(older)
    assert state.world_size == 1 and state.tokens == old["tokens"]
    del older["spike_history"]
    with pytest.raises(ValueError, match=r"here\.json: incomplete training state.*spike_history"):
        TrainState.from_state_dict(older, "here.json")


def test_a_checkpoint_of_the_old_code_resumes_exactly(dataset, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(OLD_CKPT, run / "checkpoints" / OLD_CKPT.name)
    (run / "checkpoints" / "latest").write_text(OLD_CKPT.name + "\n")
    write_marker(run, "run")  # what the old run folder's meta.json said
    with float64():
        result = train(_config(dataset, run), resume=True)
    assert result.steps == 6
    got = losses(run)
    assert sorted(got) == [4, 5, 6]
    for step, want in OLD_LOSSES.items():
        assert got[step] == pytest.approx(want, abs=ABS_TOL), step
    # the new checkpoint keeps the old keys
    assert list(read_state(run / "checkpoints" / "step_000006")) == STATE_KEYS


def test_in_loop_samples_are_lmlab_sample_generate(dataset, tmp_path):
    """samples.md's texts at the last eval are generate()'s for the same weights and seed."""
    run = tmp_path / "run"
    cfg = _config(dataset, run, model__dropout=0.0, eval__samples=2, eval__sample_tokens=12)
    train(cfg)
    text = (run / "samples.md").read_text()
    last = text[text.rindex("## step 6") :]
    written = re.findall(r"### sample \d+\n\n```\n(.*?)\n```\n", last, flags=re.DOTALL)
    model, _, _ = load_model(run / "checkpoints" / "step_000006")
    tok = load_tokenizer(json.loads((dataset / "meta.json").read_text())["tokenizer"])
    eot = json.loads((dataset / "meta.json").read_text())["eot_id"]
    samples = generate(
        model,
        tok,
        [eot],
        max_new_tokens=12,
        temperature=0.8,
        num_samples=2,
        seed=cfg.train.seed + 6,
        stop_at_eot=False,
    )
    want = [tok.decode(s.tokens).replace("```", "` ` `") for s in samples]
    assert all(len(s.tokens) == 12 for s in samples)
    assert len(written) == 2 and written == want
