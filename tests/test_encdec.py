"""The encoder-decoder: a tiny random ModernBERT (saved to a temporary folder) feeds an lmlab
decoder; trained on CPU through the shared loop. The loss falls, the encoder never changes,
checkpoints hold the decoder alone, resume is exact, the parse rate is reported."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import lmlab.model  # noqa: E402
from lmlab.cli import main  # noqa: E402
from lmlab.config import from_dict  # noqa: E402
from lmlab.model import encdec as me  # noqa: E402
from lmlab.train import checkpoint as ck  # noqa: E402
from lmlab.train.encdec import run_encdec  # noqa: E402
from lmlab_train_fixtures import losses  # noqa: E402

NAMES = ["total", "count", "width", "speed", "value", "index", "limit", "score"]
OPS = {"plus": "+", "minus": "-", "times": "*"}


def make_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """'set total to 3 plus 5' -> 'total = 3 + 5': the decoder must read names, numbers and
    the operator from the source, through cross-attention."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, (word, op) = rng.choice(NAMES), rng.choice(list(OPS.items()))
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append(
            {"source": f"set {name} to {a} {word} {b}", "target": f"{name} = {a} {op} {b}\n"}
        )
    return rows


def save_tiny_modernbert(folder: Path, texts: list[str]) -> None:
    """A random 2-layer, width-32 ModernBERT with a word-level tokenizer, saved like a hub model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(folder)
    cfg = ModernBertConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        cls_token_id=2,
        sep_token_id=3,
        global_attn_every_n_layers=1,
    )
    torch.manual_seed(0)
    ModernBertModel(cfg).save_pretrained(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    from lmlab.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("encdec")
    pairs = make_pairs(240, 0)
    with open(root / "pairs.jsonl", "w", encoding="utf-8") as f:
        for row in pairs:
            f.write(json.dumps(row) + "\n")
    save_tiny_modernbert(root / "encoder", [p["source"] for p in pairs])
    (root / "targets.txt").write_text("".join(p["target"] for p in pairs), encoding="utf-8")
    train_tokenizer(
        [str(root / "targets.txt")],
        vocab_size=64,
        out=root / "tok",
        kind="char",
        special_tokens=["<|endoftext|>"],
    )
    return {
        "root": root,
        "pairs": root / "pairs.jsonl",
        "encoder": root / "encoder",
        "tok": root / "tok",
    }


def config(setup: dict[str, Path], out: Path, **train: object):
    return from_dict(
        {
            "model": {
                "arch": "encdec",
                "encoder": str(setup["encoder"]),
                "n_layer": 2,
                "n_head": 2,
                "d_model": 32,
                "context_length": 24,
            },
            "data": {"tokenizer": str(setup["tok"])},
            "encdec": {"data": [str(setup["pairs"])], "val_fraction": 0.1, "parse_samples": 8},
            "train": {
                "max_steps": 150,
                "batch_size": 16,
                "lr": 1e-2,
                "min_lr": 1e-3,
                "warmup_steps": 5,
                "eval_every": 50,
                "checkpoint_every": 50,
                "log_every": 1,
                "device": "cpu",
                "out": str(out),
                "seed": 5,
                **train,
            },
            "eval": {"batches": 0, "samples": 2},
            "log": {"progress": False},
        }
    ).validate()


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory) -> dict[str, object]:
    """One full run, with the in-memory encoder captured to compare before and after."""
    captured = {}
    real = lmlab.model.load_encoder  # the name build_model looks up

    def spy(name: str):
        enc = real(name)
        captured["encoder"] = enc
        captured["before"] = {k: v.clone() for k, v in enc.state_dict().items()}
        return enc

    lmlab.model.load_encoder = spy
    try:
        out = tmp_path_factory.mktemp("encdec_run") / "run"
        result = run_encdec(config(setup, out))
    finally:
        lmlab.model.load_encoder = real
    return {"out": out, "result": result, **captured}


def test_loss_falls_and_parse_rate_is_reported(trained):
    out = trained["out"]
    train_losses = losses(out)
    assert train_losses[150] < train_losses[1] - 2.5  # 3.9 -> 0.3 nats when written
    vals = losses(out, "val_loss")
    assert sorted(vals) == [50, 100, 150] and vals[150] < vals[50] < 1.5
    info = json.loads((out / "encdec.json").read_text())
    assert (info["train_pairs"], info["val_pairs"]) == (216, 24)
    parse = info["parse"]
    assert parse["samples"] == 8 and parse["parse_rate"] == parse["parsed"] / 8
    assert parse["parse_rate"] >= 0.75  # 8/8 when written: "name = a op b" lines compile
    report = (out / "report.md").read_text()
    assert "Parse rate" in report and "loss.png" in report
    # samples.md shows the decoder's greedy targets for held-out sources
    assert "sample 1" in (out / "samples.md").read_text()


def test_decoder_reads_the_source_through_cross_attention(trained, setup):
    """Scored with another pair's source, the same targets cost far more: the decoder copies
    names, digits and operators from the encoder's states (0.3 vs 1.3 nats when written)."""
    from lmlab.eval.metrics import evaluate_batches
    from lmlab.tokenizer import load_tokenizer
    from lmlab.train.encdec import build_pair_data

    cfg = config(setup, trained["out"])
    data, _ = build_pair_data(
        cfg, load_tokenizer(setup["tok"]), me.load_encoder_tokenizer(str(setup["encoder"])), False
    )
    model, _, _ = ck.load_model(trained["out"], encdec_ok=True)
    batches = data.val_batches(24, 0, cfg.train.seed)
    cpu = torch.device("cpu")
    right = evaluate_batches(model, batches, cpu)
    shifted = [
        ({**x, "enc_ids": x["enc_ids"].roll(1, 0), "enc_mask": x["enc_mask"].roll(1, 0)}, y)
        for x, y in batches
    ]
    wrong = evaluate_batches(model, shifted, cpu)
    # the same model on the same pairs: only float32 rounding differs (batching, summation order),
    # a sum of `tokens` terms whose relative error is at most tokens * 2**-24 on any CPU
    logged = losses(trained["out"], "val_loss")[150]
    assert right["nats"] / right["tokens"] == pytest.approx(logged, rel=right["tokens"] * 2.0**-24)
    assert wrong["nats"] / wrong["tokens"] > 2 * right["nats"] / right["tokens"] + 0.2


def test_encoder_is_frozen_and_left_out_of_checkpoints(trained):
    enc = trained["encoder"]
    assert all(not p.requires_grad and p.grad is None for p in enc.parameters())
    after = enc.state_dict()
    assert after.keys() == trained["before"].keys()
    assert all(torch.equal(trained["before"][k], after[k]) for k in after)  # bit-identical
    from safetensors.torch import load_file

    ckpt = ck.resolve_checkpoint(trained["out"])
    keys = load_file(str(ckpt / "model.safetensors")).keys()
    assert keys and all(k.startswith("decoder.") for k in keys)
    # the optimizer state covers the decoder's parameters alone
    n_decoder = len({id(p) for p in trained["encoder"].parameters()})
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)["optimizer"]
    n_opt = sum(len(g["params"]) for g in opt["param_groups"])
    model, _, _ = ck.load_model(trained["out"], encdec_ok=True)
    assert n_opt == len({id(p) for p in model.decoder.parameters()}) and n_decoder > 0
    assert trained["result"].params == model.num_params()  # trainable parameters only


def test_resume_is_exact(setup, tmp_path):
    """A run stopped after its step-8 checkpoint and resumed logs the uninterrupted run's losses."""
    from lmlab.train.hooks import AfterStep

    settings = {"max_steps": 16, "eval_every": 8, "checkpoint_every": 8}
    full, part = tmp_path / "full", tmp_path / "part"
    run_encdec(config(setup, full, **settings))

    class Stop(Exception):
        pass

    real_ckpt = AfterStep.checkpoint

    def stop_after_step_8(self, step, collective=True):
        real_ckpt(self, step, collective)
        if step == 8:
            raise Stop

    AfterStep.checkpoint = stop_after_step_8
    try:
        with pytest.raises(Stop):
            run_encdec(config(setup, part, **settings))
    finally:
        AfterStep.checkpoint = real_ckpt
    assert max(losses(part)) == 8
    run_encdec(config(setup, part, **settings), resume=True)
    assert losses(part) == losses(full)
    assert losses(part, "val_loss") == losses(full, "val_loss")


def test_cli_trains_and_other_commands_refuse_the_run(setup, tmp_path, capsys):
    from lmlab.config import save_config

    cfg = config(setup, tmp_path / "run", max_steps=4, eval_every=0, checkpoint_every=0)
    cfg.encdec.parse_samples = 2
    save_config(cfg, tmp_path / "encdec.toml")
    assert main(["train", str(tmp_path / "encdec.toml")]) == 0
    assert (tmp_path / "run" / "encdec.json").is_file()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert "encoder-decoder run" in capsys.readouterr().err
    assert (
        main(["train", str(tmp_path / "encdec.toml"), f"--encdec.data={tmp_path / 'nope.jsonl'}"])
        == 2
    )
    assert "nope.jsonl" in capsys.readouterr().err
    assert (
        main(["train", str(tmp_path / "encdec.toml"), f"--model.encoder={tmp_path / 'no-encoder'}"])
        == 2
    )
    err = capsys.readouterr().err
    assert "model.encoder" in err and "no-encoder" in err


def test_bad_pairs_are_skipped_and_named(setup, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    rows = [json.dumps(r) for r in make_pairs(20, 1)]
    rows[3] = "{not json"
    rows[5] = json.dumps({"source": "set x to 1 plus 2"})
    rows[7] = json.dumps({"source": "set x to 1 plus 2", "target": "   "})
    rows[9] = json.dumps(
        {"source": "set x to 1 plus 2", "target": "x = 1 + 2  # \u00e9\n"}
    )  # é: not in the char vocab
    bad.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = config(setup, tmp_path / "run", max_steps=2, eval_every=0, checkpoint_every=0)
    cfg.encdec.data = [str(bad)]
    cfg.encdec.parse_samples = 0
    run_encdec(cfg)
    info = json.loads((tmp_path / "run" / "encdec.json").read_text())
    assert info["skipped"]["counts"] == {
        "malformed_json": 1,
        "missing_field": 1,
        "empty_response": 1,
        "untokenizable": 1,
    }
    assert info["train_pairs"] + info["val_pairs"] == 16
    out = capsys.readouterr().out
    assert all(f"{bad}:{n}" in out for n in (4, 6, 8, 10))


def test_default_encoder_names_agree():
    from lmlab.config import ModelConfig

    assert ModelConfig().encoder == me.DEFAULT_ENCODER
