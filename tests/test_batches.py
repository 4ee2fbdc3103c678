"""The one batch protocol (lmlab.data.batches): token shards and SFT examples as TrainingData,
and the val windows and bits per byte that training and `lmlab eval --batches` share."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.data.batches import ProcessBatch, TokenData
from lmlab.data.sft import Example, SftData
from lmlab.eval.metrics import evaluate_path
from lmlab.train.loop import train
from lmlab_train_fixtures import make_text, tiny_config, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("batches") / "ds", make_text(40, seed=2))


def _rows(source, step: int) -> torch.Tensor:
    """The rows of every micro-batch of ``step``, stacked (x only, padding included)."""
    return torch.cat([x for x, _ in source.get(step)])


def test_token_shards_split_one_global_batch_over_ranks(dataset, tmp_path):
    data = TokenData(tiny_config(dataset, tmp_path / "r"))
    whole = data.loader(ProcessBatch(global_batch=8, micro_batch=4, seed=5))
    halves = [data.loader(ProcessBatch(8, 2, 5, rank=r, world=2)) for r in (0, 1)]
    assert whole.accum_steps == 2 and halves[0].accum_steps == 2
    for step in (0, 3):
        torch.testing.assert_close(
            _rows(whole, step), torch.cat([_rows(h, step) for h in halves]), rtol=0, atol=0
        )
    # every input token of a window has a target: the loss divides by all of them
    assert whole.counts(3) == (8 * 16, 8 * 16) == (whole.tokens_per_step,) * 2
    assert whole.state_dict() == {"seed": 5, "step": 0}


def test_sft_examples_split_one_global_batch_over_ranks():
    rng = np.random.default_rng(0)
    examples = [
        Example(rng.integers(1, 50, size=int(n)).astype(np.int64), 2, f"ex{i}")
        for i, n in enumerate(rng.integers(4, 12, size=24))
    ]
    data = SftData(examples, examples[:4], {"vocab_size": 64, "eot_id": 0}, pad_id=0)
    assert data.val_bytes_per_token() is None and not data.fixed_windows
    whole = data.loader(ProcessBatch(global_batch=8, micro_batch=8, seed=1))
    halves = [data.loader(ProcessBatch(8, 4, 1, rank=r, world=2)) for r in (0, 1)]
    for step in (0, 2, 5):
        ((x, y),) = whole.get(step)
        parts = [b for h in halves for b in h.get(step)]
        assert sum(len(px) for px, _ in parts) == len(x)
        lo = 0
        for (
            px,
            py,
        ) in parts:  # each micro-batch is the whole batch's rows, padded to its own longest
            width = px.shape[1]
            torch.testing.assert_close(x[lo : lo + len(px), :width], px, rtol=0, atol=0)
            torch.testing.assert_close(y[lo : lo + len(py), :width], py, rtol=0, atol=0)
            lo += len(px)
        tokens, targets = whole.counts(step)
        assert targets == int((y != -100).sum())


def test_eval_with_batches_scores_the_windows_training_evaluated(dataset, tmp_path):
    """`lmlab eval --batches N` and the loop's last eval: the same windows and one summary,
    so the same val loss and bits per byte. Both run the same float32 forward on the same
    weights and inputs; rel=1e-6 (a few float32 ulps) only allows for another thread split."""
    run = tmp_path / "run"
    train(tiny_config(dataset, run, train__max_steps=4, eval__batches=3, eval__samples=0))
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in last if "val_loss" in r][-1]
    m = evaluate_path(run, batches=3, device="cpu")
    assert m["val_loss"] == pytest.approx(last["val_loss"], rel=1e-6)
    assert m["accuracy"] == pytest.approx(last["accuracy"], rel=1e-6)
    assert last["bits_per_byte"] > 0
    assert m["bits_per_byte"] == pytest.approx(last["bits_per_byte"], rel=1e-6)
