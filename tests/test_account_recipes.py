"""`lmlab account` on every shipped recipe: the model it will train, counted right, before any stage ran."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from lmlab.accounting import account, encoder_width
from lmlab.cli import EXAMPLES, main
from lmlab.config import builtin_recipes, load_config, save_config
from lmlab.model import build_model
from lmlab_train_fixtures import make_text, tiny_config, write_dataset

RECIPES = sorted(builtin_recipes())
GPT2_FILES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpt2"


def needs_shared_data(name: str) -> None:
    """gpt2-small's vocabulary is GPT-2's own tokenizer, from the shared data folder."""
    if name == "gpt2-small" and not GPT2_FILES.is_dir():
        pytest.skip(f"shared data missing: {GPT2_FILES} (expected ../shared/data beside the repo)")


def built_params(res: dict, cfg_model) -> int:
    """Parameters of the model as lmlab builds it (the encoder-decoder: its trained decoder)."""
    m = dataclasses.replace(cfg_model, vocab_size=res["vocab_size"])
    if m.arch == "encdec":
        from lmlab.model.encdec import Decoder

        model = Decoder(m, encoder_width(m.encoder))
    else:
        model = build_model(m)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", RECIPES)
def test_account_works_on_every_recipe(name, monkeypatch, capsys):
    needs_shared_data(name)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # recipes' paths are from the repo root
    assert main(["account", name]) == 0
    table = capsys.readouterr().out
    assert "forward per sequence" in table and "vocabulary from" in table
    assert main(["account", name, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    cfg = load_config(name)
    model_cfg = cfg.model
    if cfg.train.init_from:  # fine-tuning: the base run's model (here the recipe that writes it)
        from lmlab.account_model import base_config

        model_cfg = base_config(cfg.train.init_from)[0].model
    with torch.device("meta"):  # count without allocating (gpt2-small is 124M)
        assert res["params_total"] == built_params(res, model_cfg)
    assert res["forward_flops_per_sequence"] == pytest.approx(
        res["forward_flops_total"] * res["seq_len"], rel=1e-12
    )
    assert res["training_flops_per_sequence"] == pytest.approx(
        3 * res["forward_flops_per_sequence"], rel=1e-12
    )


def test_help_example_runs(monkeypatch, capsys):
    needs_shared_data("gpt2-small")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    argv = EXAMPLES["account"].split()[1:]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["vocab_size"] == 50257 and res["vocab_source"].startswith("tokenizer.path")
    assert res["params_total"] == 124_439_808  # GPT-2 small, tied head


def test_sft_recipe_counts_the_base_model(tmp_path, monkeypatch):
    # where no demo has run yet (after `make demo`, runs/demo/run exists and is counted instead)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("sft-mbpp")
    base = load_config("demo-python")
    res, base_res = account(cfg), account(base)
    # the demo's model (4 x 192 with a 4096 vocabulary: 2.56M), not the config's default
    # 4 x 128 (1.3M at that vocabulary)
    assert res["params_total"] == base_res["params_total"] > 2_000_000
    assert "demo-python" in res["model_source"]


def test_char_vocab_is_the_corpus_characters(tmp_path, monkeypatch):
    # the recipe's relative data folder must not resolve to a real prepared run in the cwd
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabc\nxyz", encoding="utf-8")
    cfg = load_config(
        "shakespeare-char", [f"tokenizer.input={corpus}", f"tokenizer.out={tmp_path / 'tok'}"]
    )
    res = account(cfg)
    assert res["vocab_size"] == 7 + 1  # a b c x y z newline, plus <|endoftext|>


def test_an_existing_base_run_gives_its_model(tmp_path):
    from lmlab.train.loop import train

    data = write_dataset(tmp_path / "ds", make_text(20))
    base = tiny_config(
        data,
        tmp_path / "base",
        train__max_steps=2,
        train__eval_every=0,
        eval__samples=0,
        model__d_model=48,
        model__n_head=3,
    )
    train(base)
    sft = tiny_config(data, tmp_path / "sft", train__init_from=str(tmp_path / "base"))
    cfg_file = tmp_path / "sft.toml"
    save_config(sft, cfg_file)
    res = account(load_config(cfg_file))
    want = build_model(dataclasses.replace(base.model, vocab_size=res["vocab_size"]))
    assert res["params_total"] == sum(p.numel() for p in want.parameters())
    assert res["model_source"] == f"train.init_from: the run {tmp_path / 'base'}"


def test_missing_base_run_is_one_line(tmp_path, capsys):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'[train]\ninit_from = "{tmp_path / "nowhere"}"\n', encoding="utf-8")
    assert main(["account", str(cfg_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmlab: error: train.init_from:") and len(err.splitlines()) == 1


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_an_hf_folder_gives_its_model(tmp_path, family):
    transformers = pytest.importorskip("transformers")
    if family == "gpt2":
        hf = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(vocab_size=96, n_positions=32, n_embd=48, n_layer=2, n_head=3)
        )
    else:
        hf = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=96,
                hidden_size=48,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=32,
            )
        )
    hf.save_pretrained(tmp_path / "hf")
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'[train]\ninit_from = "hf:{tmp_path / "hf"}"\n', encoding="utf-8")
    res = account(load_config(cfg_file))
    # the same parameters as transformers' model (tied head counted once, as both count it)
    assert res["params_total"] == hf.num_parameters()
    assert res["model_source"] == f"train.init_from: the transformers folder {tmp_path / 'hf'}"


def test_an_hf_folder_not_made_yet_is_one_line(tmp_path, capsys):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'[train]\ninit_from = "hf:{tmp_path / "nowhere"}"\n', encoding="utf-8")
    assert main(["account", str(cfg_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmlab: error: train.init_from: hf:") and len(err.splitlines()) == 1
