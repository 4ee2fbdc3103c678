"""`lmlab sample RUN`: JSON output, streaming to the terminal, seeds, one-line errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lmlab.cli import main
from lmlab.config import Config, ModelConfig
from lmlab.model import build_model
from lmlab.model.presets import PRESETS

CORPUS = "Once upon a time there was a little fox. The fox liked to run.\n" * 30


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from lmlab.tokenizer import train_tokenizer
    from lmlab.train.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("sample_run")
    (d / "c.txt").write_text(CORPUS, encoding="utf-8")
    tok = train_tokenizer(
        [str(d / "c.txt")],
        vocab_size=300,
        out=d / "run" / "tokenizer",
        special_tokens=["<|endoftext|>"],
    )
    cfg = dataclasses.replace(
        ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, context_length=32),
        **PRESETS["gpt2"],
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.3)
    save_checkpoint(d / "run" / "checkpoints", 3, model, None, None, {}, Config(model=cfg))
    return d / "run"


def sample_json(run, capsys, *args):
    capsys.readouterr()
    assert main(["sample", str(run), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_greedy_and_seeds(run, capsys):
    a = sample_json(
        run,
        capsys,
        "--prompt",
        "Once upon",
        "--temperature",
        "0",
        "--max-new-tokens",
        "6",
        "--num-samples",
        "2",
    )
    assert len(a) == 2 and a[0]["tokens"] == a[1]["tokens"]
    assert a[0]["prompt"] == "Once upon" and len(a[0]["tokens"]) <= 6
    s1 = sample_json(run, capsys, "--seed", "4", "--max-new-tokens", "8", "--temperature", "1.0")
    s2 = sample_json(run, capsys, "--seed", "4", "--max-new-tokens", "8", "--temperature", "1.0")
    from lmlab.tokenizer import load_tokenizer

    assert s1 == s2  # same seed, same samples
    assert s1[0]["prompt_tokens"] == [load_tokenizer(run / "tokenizer").eot_id]  # empty prompt


def test_stream_prints_prompt_then_text(run, capsys):
    ref = sample_json(
        run, capsys, "--prompt", "The fox", "--temperature", "0", "--max-new-tokens", "6"
    )[0]
    assert (
        main(
            [
                "sample",
                str(run),
                "--prompt",
                "The fox",
                "--temperature",
                "0",
                "--max-new-tokens",
                "6",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == "The fox" + ref["text"] + "\n"
    assert (
        main(
            [
                "sample",
                str(run),
                "--prompt",
                "The fox",
                "--temperature",
                "0",
                "--max-new-tokens",
                "6",
                "--no-stream",
                "--num-samples",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2 and out.count("The fox" + ref["text"]) == 2


def test_context_note_and_errors(run, capsys):
    capsys.readouterr()
    assert (
        main(
            [
                "sample",
                str(run),
                "--json",
                "--temperature",
                "0",
                "--prompt",
                "The fox",
                "--max-new-tokens",
                "100",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert rows[0]["finish_reason"] == "context"
    assert "context length 32" in captured.err and "learned positions" in captured.err
    assert main(["sample", str(run), "--top-p", "2"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert main(["sample", str(run.parent / "nope")]) == 2
    assert "no such run" in capsys.readouterr().err
