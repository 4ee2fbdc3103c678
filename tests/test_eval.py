"""Eval metrics on a hand-checkable case: a model with all-zero weights predicts uniformly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.cli import main
from lmlab.data.loader import TokenSplit
from lmlab.eval.metrics import evaluate_path, format_metrics, summarize
from lmlab.model import build_model
from lmlab.train.checkpoint import save_checkpoint
from lmlab_train_fixtures import make_text, tiny_config, write_dataset


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("eval")
    data = write_dataset(base / "ds", make_text(30))
    cfg = tiny_config(data, base / "run")
    cfg.model.vocab_size = json.loads((data / "meta.json").read_text())["vocab_size"]
    model = build_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # zero head -> zero logits -> uniform prediction, loss ln V everywhere
    save_checkpoint(base / "run" / "checkpoints", 7, model, None, None, {"rng": []}, cfg)
    return base / "run", data


def test_whole_split_metrics_by_hand(uniform_run):
    run, data = uniform_run
    meta = json.loads((data / "meta.json").read_text())
    V = meta["vocab_size"]
    val = TokenSplit(data, "val")
    tokens = np.concatenate([s for s in val.shards]).astype(np.int64)
    m = evaluate_path(run)
    assert m["whole_split"] and m["step"] == 7
    assert m["tokens"] == len(tokens) - 1  # every token after the first, once
    # each eval batch's loss is a float32 sum of B x T = 64 equal terms (ln V, itself rounded):
    # relative error at most 65 * U32 whatever the CPU's summation order; batches add in float64
    rel = 65 * 2.0**-24
    assert m["val_loss"] == pytest.approx(math.log(V), rel=rel)
    assert m["perplexity"] == pytest.approx(V, rel=math.log(V) * rel)  # d exp(x) / exp(x) = dx
    # argmax of all-equal logits is id 0: accuracy is the share of targets equal to 0
    assert m["accuracy"] == pytest.approx(float(np.mean(tokens[1:] == 0)))
    # bits per byte = summed nats / (ln 2 x bytes of the split's text)
    want = (len(tokens) - 1) * math.log(V) / (math.log(2) * meta["splits"]["val"]["bytes"])
    assert m["bits_per_byte"] == pytest.approx(want, rel=rel)
    text = format_metrics(m)
    assert "bits per byte" in text and "whole val split" in text


def test_a_deadline_stops_the_whole_split_between_batches(uniform_run):
    """``stop`` is asked before every batch after the first: True after two batches leaves a
    prefix of the split, reported as such, its bytes estimated from the split's ratio."""
    run, data = uniform_run
    meta = json.loads((data / "meta.json").read_text())
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 2  # the second question: after the second batch

    m = evaluate_path(run, stop=stop)
    whole = evaluate_path(run)
    assert whole["batches"] > 2  # the split has more batches than the deadline allows
    assert m["stopped"] and not m["whole_split"] and m["batches"] == 2 and len(asked) == 2
    assert m["tokens"] == 2 * 4 * 16
    val = meta["splits"]["val"]
    want = (
        m["tokens"]
        * math.log(meta["vocab_size"])
        / (math.log(2) * m["tokens"] * val["bytes"] / val["tokens"])
    )
    assert m["bits_per_byte"] == pytest.approx(want, rel=65 * 2.0**-24)  # as above
    assert "stopped at the deadline" in format_metrics(m)
    never = evaluate_path(run, stop=lambda: False)
    assert never["whole_split"] and not never["stopped"] and never["tokens"] == whole["tokens"]


def test_sampled_batches_scale_bytes_by_the_split_ratio(uniform_run):
    run, data = uniform_run
    meta = json.loads((data / "meta.json").read_text())
    val = meta["splits"]["val"]
    m = evaluate_path(run, batches=2)
    assert not m["whole_split"] and m["batches"] == 2
    assert m["tokens"] == 2 * 4 * 16  # 2 batches x 4 sequences x 16 targets
    est_bytes = m["tokens"] * val["bytes"] / val["tokens"]
    want = m["tokens"] * math.log(meta["vocab_size"]) / (math.log(2) * est_bytes)
    assert m["bits_per_byte"] == pytest.approx(
        want, rel=65 * 2.0**-24
    )  # float32 batch sums, as above


def test_summarize_by_hand():
    m = summarize({"nats": 2 * math.log(2) * 10, "tokens": 10, "correct": 4}, n_bytes=5)
    assert m["val_loss"] == pytest.approx(2 * math.log(2))
    assert m["perplexity"] == pytest.approx(4.0)
    assert m["accuracy"] == pytest.approx(0.4)
    assert m["bits_per_byte"] == pytest.approx(4.0)  # 20 bits over 5 bytes
    assert summarize({"nats": 1.0, "tokens": 1, "correct": 0}, None)["bits_per_byte"] is None


def test_cli_eval_json(uniform_run, capsys):
    run, data = uniform_run
    assert main(["eval", str(run), "--json", "--batches", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"val_loss", "perplexity", "accuracy", "bits_per_byte"} <= set(out)
    assert main(["eval", str(run.parent / "missing")]) == 2
    assert "no such run" in capsys.readouterr().err


def test_eval_context_length_sets_the_val_windows(tmp_path):
    """eval.context_length scores a model on shorter windows than its context (to compare
    models of different contexts on the same windows), in training's evals and in
    evaluate_path; above the model's context it is a ConfigError naming the key."""
    from lmlab.data.batches import TokenData
    from lmlab.errors import ConfigError

    data = write_dataset(tmp_path / "ds", make_text(30))
    cfg = tiny_config(data, tmp_path / "run")
    cfg.model.vocab_size = json.loads((data / "meta.json").read_text())["vocab_size"]
    cfg.eval.context_length = 8  # the model's is 16
    cfg.validate()
    save_checkpoint(
        tmp_path / "run" / "checkpoints", 1, build_model(cfg.model), None, None, {"rng": []}, cfg
    )
    m = evaluate_path(tmp_path / "run", batches=2)
    assert m["tokens"] == 2 * cfg.eval_batch_size * 8
    x, y = next(iter(TokenData(cfg).val_batches(cfg.eval_batch_size, 2, cfg.train.seed)))
    assert x.shape == y.shape == (cfg.eval_batch_size, 8)
    cfg.eval.context_length = 32
    with pytest.raises(ConfigError, match="eval.context_length"):
        cfg.validate()
