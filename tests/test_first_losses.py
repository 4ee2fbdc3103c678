"""Stored first 10 training losses of the gpt2 and llama presets at a fixed seed.

A change to the model, init, optimizer, schedule, loss or batching moves these numbers; if it
was meant to, regenerate them (the values were written by this test's own setup on CPU,
torch 2.13, 1 and 2 threads alike, bit-identical) and say why in the commit.

The run is in float64: in float32 the losses depend on the CPU's summation order (AVX2,
AVX-512, AMX), which Adam amplifies step by step. Float64 roundoff (1.1e-16 per op), carried
through 10 Adam steps (lr 3e-3 over sqrt(v) + 1e-8), moves a loss by well under 1e-12; ABS_TOL
leaves 1000x margin and is still five orders finer than any real change to the computation.
"""

from __future__ import annotations

import pytest

from lmlab.model.presets import PRESETS
from lmlab.train.loop import train
from lmlab_train_fixtures import float64, losses, make_text, tiny_config, write_dataset

EXPECTED = {
    "llama": [
        3.1329464301607537,
        3.0997975625898975,
        3.011697414050177,
        2.8982768604284557,
        2.866644034623236,
        2.7975070343569204,
        2.7239714478910932,
        2.7131368317628257,
        2.663925870850132,
        2.689035548039406,
    ],
    "gpt2": [
        3.1538160030961446,
        3.093241670257864,
        2.9941997478153533,
        2.8979778251747472,
        2.895202929192316,
        2.8317768872858022,
        2.8408606056147403,
        2.888069360936286,
        2.741934827787942,
        2.786678941660166,
    ],
}
ABS_TOL = 1e-9


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("golden") / "ds", make_text(60, seed=0))


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_first_ten_losses_are_the_stored_ones(preset, dataset, tmp_path):
    presets = {f"model__{k}": v for k, v in PRESETS[preset].items()}
    cfg = tiny_config(
        dataset,
        tmp_path / preset,
        train__max_steps=10,
        train__eval_every=0,
        train__checkpoint_every=0,
        eval__samples=0,
        **presets,
    )
    with float64():
        train(cfg)
    got = [v for _, v in sorted(losses(tmp_path / preset).items())]
    assert got == pytest.approx(EXPECTED[preset], rel=0, abs=ABS_TOL)
