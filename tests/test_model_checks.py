"""The architecture rules live in one place (lmlab.config.check_model), and so does filling
model.vocab_size from the data (resolve_vocab_size). Recipe validation and
build_model give the same error for the same model section."""

from __future__ import annotations

import dataclasses

import pytest

from lmlab.config import Config, ModelConfig, resolve_vocab_size
from lmlab.errors import ConfigError
from lmlab.model import build_model

BAD = [
    ({"n_head": 4, "d_model": 30}, "model.d_model: 30 is not divisible by model.n_head=4"),
    (
        {"n_head": 4, "n_kv_head": 3, "d_model": 32},
        "model.n_kv_head: 3 does not divide model.n_head=4",
    ),
    (
        {"n_head": 2, "d_model": 6, "position": "rope"},
        "model.position: rope needs an even head size, got 3",
    ),
    (
        {"arch": "one_head", "d_model": 33, "position": "rope"},
        "rope needs an even head size, got d_model=33",
    ),
    ({"arch": "bigram", "dropout": 1.0}, "model.dropout: must be in [0, 1), got 1.0"),
    (
        {"arch": "bow", "residual": False},
        "model.residual: false is a switch of model.arch=transformer",
    ),
]


@pytest.mark.parametrize(
    ("change", "message"), BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)]
)
def test_config_validation_and_build_model_reject_the_same_model(change, message):
    mcfg = dataclasses.replace(ModelConfig(vocab_size=16, n_layer=1, context_length=8), **change)
    with pytest.raises(ConfigError) as at_validation:
        Config(model=mcfg).validate()
    with pytest.raises(ConfigError) as at_build:
        build_model(mcfg)
    assert message in str(at_validation.value)
    assert str(at_build.value) == str(at_validation.value)


def test_build_model_needs_the_vocabulary_that_validation_leaves_open():
    mcfg = ModelConfig(vocab_size=0, n_layer=1, n_head=2, d_model=8, context_length=8)
    Config(model=mcfg).validate()  # 0: taken from the tokenizer later
    with pytest.raises(ConfigError, match="model.vocab_size: must be > 0"):
        build_model(mcfg)


def test_resolve_vocab_size_fills_zero_keeps_larger_and_refuses_smaller():
    assert resolve_vocab_size(ModelConfig(vocab_size=0), 66).vocab_size == 66
    assert (
        resolve_vocab_size(ModelConfig(vocab_size=80), 66).vocab_size == 80
    )  # room for more tokens
    with pytest.raises(
        ConfigError, match="model.vocab_size: 50 is below the dataset's vocab_size 66"
    ):
        resolve_vocab_size(ModelConfig(vocab_size=50), 66)
