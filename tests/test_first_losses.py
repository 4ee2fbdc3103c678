"""Stored first 10 training losses of the gpt2 and llama presets at a fixed seed.

A change to the model, init, optimizer, schedule, loss or batching moves these numbers; if it
was meant to, regenerate them (the values were written by this test's own setup on CPU,
torch 2.13, 1 and 2 threads alike) and say why in the commit.
"""

from __future__ import annotations

import pytest

from lmlab.model.presets import PRESETS
from lmlab.train.loop import train
from lmlab_train_fixtures import losses, make_text, tiny_config, write_dataset

EXPECTED = {
    "llama": [3.11616, 3.069955, 2.97705, 2.883951, 2.869576, 2.80957, 2.747295, 2.740216, 2.668843, 2.700099],
    "gpt2": [3.150221, 3.098155, 3.005098, 2.897472, 2.867999, 2.850785, 2.837043, 2.870055, 2.744501, 2.789452],
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("golden") / "ds", make_text(60, seed=0))


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_first_ten_losses_are_the_stored_ones(preset, dataset, tmp_path):
    presets = {f"model__{k}": v for k, v in PRESETS[preset].items()}
    cfg = tiny_config(dataset, tmp_path / preset, train__max_steps=10, train__eval_every=0,
                      train__checkpoint_every=0, eval__samples=0, **presets)
    train(cfg)
    got = [v for _, v in sorted(losses(tmp_path / preset).items())]
    assert got == pytest.approx(EXPECTED[preset], abs=2e-4)
