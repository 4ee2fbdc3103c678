"""Hugging Face export: parity of logits, greedy tokens and tokenization with transformers."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from lmlab.config import Config, ModelConfig
from lmlab.errors import LmlabError
from lmlab.export import export_hf, export_model, hf_family
from lmlab.model import build_model
from lmlab.model.presets import PRESETS
from lmlab.sample import generate

transformers = pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

CORPUS = (
    "Hello world! The quick brown fox jumps over the lazy dog.\n"
    "def add(x, y):\n    return x + y  # ünïcödé 😀 日本語\n"
) * 30
TEXTS = [
    "Hello world!",
    "def f(x):\n    return x",
    "ünïcödé 😀 日本語",
    "a<|endoftext|>b",
    "  spaces   and\n\nnewlines",
    "The lazy dog<|endoftext|>",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from lmlab.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    (d / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    return train_tokenizer(
        [str(d / "corpus.txt")],
        vocab_size=320,
        out=d / "tok",
        kind="bpe",
        special_tokens=["<|endoftext|>"],
    )


def tiny_model(preset: str, tok, **kw) -> torch.nn.Module:
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=64, context_length=96)
    cfg = dataclasses.replace(cfg, **{**PRESETS[preset], **kw})
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # spread the logits so greedy never hinges on float noise
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.15)
    return model.eval()


def hf_load(folder):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tok


PARITY_CASES = [
    ("gpt2", {}),
    ("llama", {}),
    ("llama", {"n_kv_head": 2, "bias": True, "tie_embeddings": True}),
    ("gpt2", {"bias": False, "tie_embeddings": False, "mlp": "relu", "position": "none"}),
    ("gpt2", {"mlp": "gelu_erf"}),  # HF's activation_function "gelu"
    ("gpt2", {"mlp": "relu2"}),  # HF's "relu2"
    ("llama", {"qk_norm": True, "n_kv_head": 2}),  # Qwen3ForCausalLM
    ("llama", {"qk_norm": True, "tie_embeddings": True}),
]


@pytest.mark.parametrize(
    "preset,kw",
    PARITY_CASES,
    ids=[
        "gpt2",
        "llama",
        "llama-gqa-bias-tied",
        "gpt2-nobias-untied-relu-nope",
        "gpt2-gelu-erf",
        "gpt2-relu2",
        "qwen3-gqa",
        "qwen3-tied",
    ],
)
def test_export_parity(tmp_path, tok, preset, kw):
    model = tiny_model(preset, tok, **kw)
    out = export_model(model, tok, tmp_path / "hf")
    files = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    } <= files
    hf, hf_tok = hf_load(out)
    expected = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
    assert type(hf).__name__ == expected[hf_family(model.config)]
    assert hf_family(model.config) == ("qwen3" if kw.get("qk_norm") else preset)

    # 1. logits agree in fp32
    idx = torch.randint(0, tok.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
    # two float32 implementations (HF's LLaMA norms are float32 whatever the dtype): each of
    # the 2 * n_layer + 1 block/norm outputs may differ by reordering, up to sqrt(K) = 16 ulps
    # for inner sizes K <= 256, with O(1) gain to the logits; 4x margin on that (observed ~1 ulp)
    n_layer = model.config.n_layer
    assert (ours - theirs).abs().max().item() <= 64 * (
        2 * n_layer + 1
    ) * 2.0**-24 * theirs.abs().max().item()

    # 2. 50 greedy tokens identical (KV cache on both sides)
    prompt = tok.encode("def add(x")
    mine = generate(model, tok, prompt, max_new_tokens=50, temperature=0.0, stop_at_eot=False)[0]
    hf.generation_config.eos_token_id = None  # compare all 50, even past an end-of-text
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=50,
            do_sample=False,
            use_cache=True,
            pad_token_id=tok.eot_id,
        )
    assert mine.tokens == ref[0, len(prompt) :].tolist()
    assert len(mine.tokens) == 50

    # 3. the exported tokenizer encodes like ours, and knows end-of-text
    for text in TEXTS:
        assert hf_tok.encode(text, add_special_tokens=True) == tok.encode(text), text
        assert hf_tok.decode(tok.encode(text)) == text
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == tok.eot_id
    assert hf_tok.bos_token_id == tok.eot_id
    gen_cfg = json.loads((out / "generation_config.json").read_text())
    assert gen_cfg["eos_token_id"] == tok.eot_id


def test_char_tokenizer_exports(tmp_path):
    from lmlab.tokenizer import train_tokenizer

    (tmp_path / "c.txt").write_text("hello there\nfirst citizen: speak!\n", encoding="utf-8")
    tok = train_tokenizer(
        [str(tmp_path / "c.txt")],
        vocab_size=100,
        out=tmp_path / "tok",
        kind="char",
        special_tokens=["<|endoftext|>"],
    )
    model = tiny_model("llama", tok)
    hf, hf_tok = hf_load(export_model(model, tok, tmp_path / "hf"))
    for text in ["hello there", "first citizen:\nspeak!", "to<|endoftext|>the"]:
        assert hf_tok.encode(text) == tok.encode(text)
        assert hf_tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize(
    "preset,kw,switch",
    [
        ("gpt2", {"norm_position": "post"}, "model.norm_position=post"),
        ("llama", {"norm": "none"}, "model.norm=none"),
        ("gpt2", {"position": "rope"}, "model.position=rope"),
        ("gpt2", {"mlp": "swiglu"}, "model.mlp=swiglu"),
        ("gpt2", {"n_kv_head": 2}, "model.n_kv_head=2"),
        ("llama", {"position": "learned"}, "model.position=learned"),
        ("llama", {"mlp": "gelu"}, "model.mlp=gelu"),
        ("llama", {"arch": "bigram"}, "model.arch=bigram"),
        ("llama", {"qk_norm": True, "bias": True}, "model.bias=true with model.qk_norm=true"),
        ("gpt2", {"qk_norm": True}, "model.qk_norm=true"),
    ],
)
def test_inexpressible_switches_are_named(tmp_path, preset, kw, switch):
    cfg = dataclasses.replace(ModelConfig(vocab_size=50), **{**PRESETS[preset], **kw})
    with pytest.raises(LmlabError, match=switch.replace(".", r"\.")):
        hf_family(cfg)


def _make_run(tmp_path, model, tok):
    from lmlab.train.checkpoint import save_checkpoint

    run = tmp_path / "run"
    cfg = Config(model=model.config)
    tok.save(run / "tokenizer")
    save_checkpoint(run / "checkpoints", 7, model, None, None, {"tokens": 0}, cfg)
    return run


def test_export_run_via_cli_and_atomic_failure(tmp_path, tok, capsys):
    from lmlab.cli import main

    model = tiny_model("llama", tok)
    run = _make_run(tmp_path, model, tok)
    out = tmp_path / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    hf, _ = hf_load(out)
    idx = torch.tensor([tok.encode("Hello world")])
    with torch.no_grad():
        assert (model(idx) - hf(idx).logits).abs().max().item() < 1e-4
    # the export's meta.json is lmlab's output marker, not a tokenizer's: its tokenizer files load
    # (train.init_from = "hf:" an lmlab export reads them)
    from lmlab.tokenizer import load_tokenizer

    assert load_tokenizer(out).encode("Hello world") == tok.encode("Hello world")

    # an inexpressible run fails with one line and leaves the previous export untouched
    before = sorted(p.name for p in out.iterdir())
    post = tiny_model("gpt2", tok, norm_position="post")
    bad_run = _make_run(tmp_path / "bad", post, tok)
    capsys.readouterr()
    assert main(["export", str(bad_run), "--format", "hf", "--out", str(out)]) == 2
    assert "model.norm_position=post" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    with pytest.raises(LmlabError, match="no such run"):
        export_hf(tmp_path / "missing", tmp_path / "x")
    assert not any(p.name.startswith(".hf") for p in tmp_path.iterdir())
