"""Config tree: TOML loading, overrides, validation and round-trips."""

from __future__ import annotations

import dataclasses

import pytest

from lmlab.config import Config, PhaseConfig, apply_overrides, describe_fields, load_config, to_toml
from lmlab.errors import ConfigError


def write(tmp_path, text: str):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_load_and_override(tmp_path):
    p = write(tmp_path, "[model]\nn_layer = 6\nnorm = 'layernorm'\n[train]\nlr = 1e-3\n")
    cfg = load_config(p, ["train.lr=3e-4", "--model.bias=true", "tokenizer.special_tokens=a,b"])
    assert cfg.model.n_layer == 6
    assert cfg.model.norm == "layernorm"
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.bias is True
    assert cfg.tokenizer.special_tokens == ["a", "b"]


def test_list_override_in_toml_syntax():
    cfg = apply_overrides(Config(), ['data.mix=["a:0.1", "b:0.2"]'])
    assert cfg.data.mix == ["a:0.1", "b:0.2"]


@pytest.mark.parametrize(
    "text, key",
    [
        ("[model]\nn_layers = 6\n", "model.n_layers"),
        ("[modle]\nn_layer = 6\n", "modle.n_layer"),
        ("[model]\nnorm = 'batchnorm'\n", "model.norm"),
        ("[model]\nn_layer = 'six'\n", "model.n_layer"),
        ("[model]\nn_layer = 0\n", "model.n_layer"),
        ("[train]\nlr = -1.0\n", "train.lr"),
        ("[model]\nbias = 'maybe'\n", "model.bias"),
        ("[model]\nd_model = 100\nn_head = 3\n", "model.d_model"),
        ("[train]\nlr = 1e-4\nmin_lr = 1e-3\n", "train.min_lr"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_bad_override_names_key(tmp_path):
    p = write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        load_config(p, ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(p, ["train.max_steps"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[model\n"))


def test_toml_round_trip_is_exact(tmp_path):
    cfg = apply_overrides(
        Config(),
        ["train.lr=0.00123", 'sample.prompt=say "hi"\\n', "data.mix=x:0.5", "model.dropout=0.1"],
    )
    p = tmp_path / "rt.toml"
    p.write_text(to_toml(cfg))
    again = load_config(p)
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_every_field_documented():
    for section in dataclasses.fields(Config):
        obj = section.default_factory()
        if isinstance(obj, list):  # [[phase]] tables
            assert section.metadata.get("help"), f"{section.name} has no help line"
            obj = PhaseConfig()
        for f in dataclasses.fields(obj):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no help line"
    text = describe_fields()
    assert "train.lr" in text and "model.norm" in text
