"""CLI flags built from config dataclasses: one source of truth for defaults, types and choices."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from lmlab.cli import (
    CHAT_FLAGS,
    PREPARE_FLAGS,
    SAMPLE_FLAGS,
    add_field_flags,
    build_parser,
    fields_from_args,
    main,
)
from lmlab.config import PrepareConfig, SampleConfig, opt


def _defaults(cls: type) -> dict:
    return {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}


def test_sample_chat_and_prepare_flags_default_to_their_config_fields():
    p = build_parser()
    sample = vars(p.parse_args(["sample", "RUN"]))
    chat = vars(p.parse_args(["chat", "RUN"]))
    prepare = vars(
        p.parse_args(["data", "prepare", "--input", "x", "--tokenizer", "t", "--out", "o"])
    )
    want_sample, want_prepare = _defaults(SampleConfig), _defaults(PrepareConfig)
    assert {k: sample[k] for k in SAMPLE_FLAGS} == {k: want_sample[k] for k in SAMPLE_FLAGS}
    assert {k: chat[k] for k in CHAT_FLAGS} == {
        k: want_sample[k] for k in CHAT_FLAGS
    }  # chat had 0.7 and 256
    assert {k: prepare[k] for k in PREPARE_FLAGS if k != "input"} == {
        k: want_prepare[k] for k in PREPARE_FLAGS if k != "input"
    }
    assert (
        fields_from_args(SampleConfig, argparse.Namespace(**sample), SAMPLE_FLAGS) == SampleConfig()
    )


@dataclass
class _Toy:
    name: str = opt("a", "the name")
    count: int = opt(3, "how many", minimum=1)
    rate: float = opt(0.5, "how fast")
    kind: str = opt("x", "which kind", choices=("x", "y"))
    items: list[str] = opt(["p"], "some items")


def test_add_field_flags_takes_type_default_choices_and_help_from_the_field(capsys):
    p = argparse.ArgumentParser()
    add_field_flags(p, _Toy, ("name", "count", "rate", "kind", "items"), {"name": {"metavar": "N"}})
    got = p.parse_args([])
    assert (got.name, got.count, got.rate, got.kind, got.items) == ("a", 3, 0.5, "x", ["p"])
    got = p.parse_args(["--count", "7", "--rate", "2", "--kind", "y", "--items", "q", "r"])
    assert (got.count, got.rate, got.kind, got.items) == (7, 2.0, "y", ["q", "r"])
    assert isinstance(got.rate, float)
    # a repeated list flag adds to the list; the default is replaced, not extended
    assert p.parse_args(["--items", "q", "--items", "r", "s"]).items == ["q", "r", "s"]
    assert p.parse_args([]).items == ["p"] and _Toy().items == ["p"]
    with pytest.raises(SystemExit):
        p.parse_args(["--kind", "z"])
    with pytest.raises(SystemExit):
        p.parse_args(["--count", "many"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    text = capsys.readouterr().out
    assert (
        "how many (default 3)" in text and "--name N" in text and "the name (default 'a')" in text
    )


def test_sample_flags_are_checked_like_the_config_section(capsys):
    assert main(["sample", "no-such-run", "--num-samples", "0"]) == 2
    assert "--num-samples: must be >= 1" in capsys.readouterr().err
    assert main(["chat", "no-such-run", "--temperature", "-1"]) == 2
    assert "--temperature: must be >= 0.0" in capsys.readouterr().err


def test_repeated_input_and_exclude_flags_all_count():
    """`--exclude A --exclude B` kept only B (argparse's store), so A's files went into the
    data; every repeatable list flag of prepare and tokenizer train now accumulates."""
    p = build_parser()
    got = p.parse_args(
        ["data", "prepare", "--input", "a", "--input", "b", "c", "--tokenizer", "t", "--out", "o"]
        + ["--exclude", "*/test/*", "--exclude", "*/tests/*"]
    )
    assert got.input == ["a", "b", "c"] and got.exclude == ["*/test/*", "*/tests/*"]
    got = p.parse_args(
        ["tokenizer", "train", "--input", "a", "--input", "b", "--vocab-size", "300"]
        + ["--exclude", "x", "--exclude", "y", "z", "--out", "o"]
    )
    assert got.input == ["a", "b"] and got.exclude == ["x", "y", "z"]
    got = p.parse_args(["tokenizer", "stats", "--tokenizer", "t", "--input", "a", "--input", "b"])
    assert got.input == ["a", "b"]
