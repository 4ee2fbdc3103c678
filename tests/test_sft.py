"""`lmlab sft` end to end on a tiny CPU base run: files, held-out loss, resume, chat, errors."""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from lmlab.chat import chat_session, find_template
from lmlab.cli import main
from lmlab.config import from_dict, load_config
from lmlab.data import sft as sd
from lmlab.train import checkpoint as ck
from lmlab.train.loop import train
from lmlab.train.sft import run_sft
from lmlab_train_fixtures import WORDS, losses, make_text

ALPACA = sd.TEMPLATES["alpaca"]
TEMPLATE = "Q: {instruction}\n{input}A: "  # short, so the tiny context holds it


def task(rng: random.Random) -> dict[str, str]:
    a, b = rng.choice(WORDS), rng.choice(WORDS)
    return {"instruction": f"repeat twice: {a} {b}", "input": "", "output": f"{a} {b} {a} {b}"}


def write_base_dataset(out: Path, docs: list[str], tok_dir: Path) -> Path:
    """A char tokenizer covering the Alpaca template, and a prepared dataset of ``docs``."""
    from lmlab.tokenizer import train_tokenizer

    out.mkdir(parents=True)
    corpus = out.parent / "corpus.txt"
    corpus.write_text(
        "\n".join(docs) + ALPACA.prompt + ALPACA.prompt_with_input + "0123456789:QA",
        encoding="utf-8",
    )
    tok = train_tokenizer(
        [str(corpus)], vocab_size=128, out=tok_dir, kind="char", special_tokens=["<|endoftext|>"]
    )
    eot = tok.eot_id
    splits = {}
    for split, part in (("train", docs[6:]), ("val", docs[:6])):
        ids = [t for d in part for t in [*tok.encode_ordinary(d), eot]]
        np.array(ids, dtype="<u2").tofile(out / f"{split}_000000.bin")
        splits[split] = {
            "tokens": len(ids),
            "documents": len(part),
            "bytes": sum(len(d) for d in part),
            "shards": [f"{split}_000000.bin"],
        }
    meta = {
        "format": "lmlab-tokens-v1",
        "dtype": "uint16",
        "vocab_size": tok.vocab_size,
        "eot_id": eot,
        "tokenizer": str(tok_dir.resolve()),
        "tokenizer_fingerprint": tok.fingerprint(),
        "splits": splits,
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return out


TRAIN = {"device": "cpu", "log_every": 1, "seed": 3, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sftbase")
    data = write_base_dataset(root / "data", make_text(50), root / "tok")
    cfg = from_dict(
        {
            "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "context_length": 64},
            "data": {"path": str(data)},
            "train": {
                **TRAIN,
                "max_steps": 8,
                "batch_size": 4,
                "eval_every": 0,
                "checkpoint_every": 0,
                "out": str(root / "run"),
            },
            "eval": {"batches": 1, "samples": 0},
            "log": {"progress": False},
        }
    ).validate()
    train(cfg)
    return root / "run"


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> Path:
    rng = random.Random(0)
    f = tmp_path_factory.mktemp("sftdata") / "pairs.jsonl"
    lines = [json.dumps(task(rng)) for _ in range(70)]
    lines[5] = '{"instruction": "broken'  # line 6: bad JSON
    lines[9] = json.dumps({"instruction": "no output here"})  # line 10
    lines[12] = json.dumps({"instruction": "empty", "output": ""})  # line 13
    lines[20] = json.dumps({"instruction": "long " * 30, "output": "x"})  # line 21: > context
    f.write_text("\n".join(lines) + "\n")
    return f


def sft_config(base: Path, data: Path, out: Path, **train: object):
    return from_dict(
        {
            "model": {"n_layer": 7, "d_model": 64},  # ignored: the base run's model is used
            "sft": {"data": [str(data)], "val_fraction": 0.2, "template": TEMPLATE},
            "train": {
                **TRAIN,
                "init_from": str(base),
                "out": str(out),
                "batch_size": 8,
                "max_steps": 12,
                "eval_every": 4,
                "checkpoint_every": 4,
                **train,
            },
            "eval": {"batches": 0, "samples": 1, "sample_tokens": 8},
            "log": {"progress": False},
        }
    ).validate()


@pytest.fixture(scope="module")
def sft_run(base, instructions, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    cfg = sft_config(base, instructions, out, checkpoint_every=3, keep_checkpoints=10, max_steps=12)
    return out, run_sft(cfg)


def test_sft_run_learns_and_records(sft_run, base, instructions, capfd):
    out, result = sft_run
    assert result.steps == 12 and result.stop_reason == "max_steps" and not result.diverged
    info = json.loads((out / "sft.json").read_text())
    # 70 lines, 4 unusable: 66 examples, 20% (13) held out
    assert info["records"] == 67 and info["skipped"]["total"] == 4
    assert info["skipped"]["counts"] == {
        "malformed_json": 1,
        "missing_field": 1,
        "empty_response": 1,
        "too_long": 1,
    }
    assert any(s.startswith(f"{instructions}:21: ") for s in info["skipped"]["first"])
    assert (info["train_examples"], info["val_examples"]) == (53, 13)
    # held-out loss before (base weights) and after fine-tuning
    assert info["val_loss_after"] == pytest.approx(result.final_val_loss)
    assert info["val_loss_after"] < info["val_loss_before"] - 0.3  # 3.41 -> 3.00 when written
    vals = losses(out, "val_loss")
    assert sorted(vals) == [4, 8, 12] and vals[12] < vals[4]
    # same run folder as pretraining, plus the template and the base's model + tokenizer
    assert (out / "tokenizer").is_dir() and ck.resolve_checkpoint(out).name == "step_000012"
    cfg = load_config(out / "config.toml")
    assert (cfg.model.n_layer, cfg.model.d_model) == (2, 32) and cfg.sft.template == TEMPLATE
    assert cfg.train.init_from == str(ck.resolve_checkpoint(base))  # the exact base checkpoint
    tj = json.loads((out / "template.json").read_text())
    assert tj["name"] == "custom" and tj["prompt"] == "Q: {prompt}\nA: "
    # state.json counts real tokens, not padded positions
    state = json.loads((ck.resolve_checkpoint(out) / "state.json").read_text())
    assert 0 < state["tokens"] < 12 * 8 * 50


def test_sft_resume_is_exact(sft_run, base, instructions, tmp_path):
    out, _ = sft_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    for p in (run / "checkpoints").glob("step_*"):
        if int(p.name[5:]) > 6:
            shutil.rmtree(p)
    (run / "checkpoints" / "latest").write_text("step_000006\n")
    result = run_sft(
        sft_config(base, instructions, run, checkpoint_every=3, keep_checkpoints=10), resume=True
    )
    assert result.steps == 12
    ref, got = losses(out), losses(run)
    for step in range(7, 13):
        assert got[step] == ref[step], step  # bit for bit
    assert losses(run, "val_loss") == losses(out, "val_loss")
    # changed data cannot resume silently
    other = tmp_path / "other.jsonl"
    other.write_text(instructions.read_text().replace("repeat twice", "say twice"))
    with pytest.raises(Exception, match="instruction data changed"):
        run_sft(sft_config(base, other, run, max_steps=13), resume=True)


def test_chat_uses_the_template(sft_run, base):
    out, _ = sft_run
    model, cfg, tok = ck.load_model_for_inference(out)
    template = find_template(ck.resolve_checkpoint(out), cfg)
    assert template is not None and template.render("hi") == "Q: hi\nA: " == sd.resolve_template(
        TEMPLATE
    ).render("hi")
    shown = io.StringIO()
    pairs = chat_session(
        model,
        tok,
        template,
        io.StringIO("repeat twice: cat dog\n"),
        shown,
        temperature=0.0,
        max_new_tokens=12,
    )
    assert "instruction template" in shown.getvalue() and len(pairs) == 1
    # the base run stays a plain-completion model
    _, base_cfg, _ = ck.load_model_for_inference(base)
    assert find_template(ck.resolve_checkpoint(base), base_cfg) is None


def test_sft_cli_errors(base, instructions, tmp_path, capsys):
    cfg = tmp_path / "sft.toml"
    cfg.write_text(
        f'[sft]\ndata = ["{instructions}"]\n[train]\nout = "{tmp_path / "o"}"\ndevice = "cpu"\n'
    )
    assert main(["sft", str(cfg)]) == 2
    assert "train.init_from" in capsys.readouterr().err
    assert main(["sft", str(cfg), f"--train.init_from={base}", "--sft.template=Q: {question}"]) == 2
    assert "sft.template: unknown placeholder {question}" in capsys.readouterr().err
    assert main(["sft", str(cfg), f"--train.init_from={tmp_path / 'nope'}"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["sft", str(cfg), f"--train.init_from={base}", "--sft.replay_fraction=1.5"]) == 2
    assert "sft.replay_fraction" in capsys.readouterr().err
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_sft_epochs_and_replay(base, instructions, tmp_path, capfd):
    out = tmp_path / "run"
    cfg = sft_config(base, instructions, out, eval_every=0, checkpoint_every=0)
    cfg.sft.epochs = 0.5
    cfg.sft.replay_fraction = 0.25  # the base run's dataset (data.path comes from it)
    result = run_sft(cfg)
    # 53 examples, 6 instruction rows per batch of 8 -> ceil(0.5 * 53 / 6) = 5 steps
    assert result.steps == 5
    printed = capfd.readouterr().out
    assert "model config taken from the base run" in printed and "[model] is ignored" in printed
    assert "skipped 4 records" in printed and f"{instructions}:6: malformed JSON" in printed
    info = json.loads((out / "sft.json").read_text())
    assert info["replay_data"] and Path(info["replay_data"]).name == "data"
