"""Hugging Face models in (``train.init_from = "hf:FOLDER"``): a tiny random GPT2LMHeadModel and
LlamaForCausalLM built and saved by transformers give lmlab the same logits and greedy tokens,
export(import(x)) gives back x's tensors, training and sft start from them, and what lmlab
cannot express is refused with one line."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.config import from_dict
from lmlab.errors import LmlabError
from lmlab.export import export_model
from lmlab.export.hf_import import load_hf_model, model_fields, read_hf_model
from lmlab.sample import generate

transformers = pytest.importorskip("transformers")

CORPUS = (
    "the cat sat on a mat and the dog ran to a big red hat.\ndef add(x, y):\n    return x + y\n"
) * 40
U32 = 2.0**-24  # float32 unit roundoff


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from lmlab.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    (d / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    return train_tokenizer(
        [str(d / "corpus.txt")],
        vocab_size=300,
        out=d / "tok",
        kind="bpe",
        special_tokens=["<|endoftext|>"],
    )


def hf_config(kind: str, vocab: int, **kw):
    if kind == "gpt2":
        kw.setdefault("activation_function", "gelu_new")
        return transformers.GPT2Config(
            vocab_size=vocab,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
            **kw,
        )
    cls = transformers.Qwen3Config if kind == "qwen3" else transformers.LlamaConfig
    if kind == "qwen3":
        kw.setdefault("head_dim", 8)  # Qwen3Config's default is 128, not hidden/heads
    return cls(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=5000.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
        **kw,
    )


def save_hf(folder, kind: str, tok, **kw):
    """A random transformers model (weights spread so greedy never hinges on float noise) with
    the tokenizer files lmlab's HF export writes; returns (folder, model)."""
    from lmlab.export.hf import write_tokenizer_files

    torch.manual_seed(0)
    cls = {
        "gpt2": transformers.GPT2LMHeadModel,
        "llama": transformers.LlamaForCausalLM,
        "qwen3": transformers.Qwen3ForCausalLM,
    }[kind]
    model = cls(hf_config(kind, tok.vocab_size + 4, **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.15 + (1.0 if "norm" in name or "ln_" in name else 0.0))
    model.save_pretrained(folder)
    write_tokenizer_files(tok, folder, 64)
    return folder, model


def fp32_logit_tolerance(n_layer: int, width: int, logits: torch.Tensor) -> float:
    """Two fp32 evaluations of the same network that add in different orders (fused vs split
    projections, SDPA vs eager attention) differ per dot product of K terms by at most
    2*K*u*sum|terms| (Higham's bound for each); a logit ends a chain of about 4 such products per
    layer plus the head, each scaled to the logits' size."""
    return 2 * (4 * n_layer + 1) * width * U32 * float(logits.abs().max())


CASES = [
    ("gpt2", {}),
    ("llama", {}),
    ("llama", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
    ("gpt2", {"tie_word_embeddings": False, "n_inner": 48}),
    ("gpt2", {"activation_function": "gelu"}),  # the exact erf GELU
    ("gpt2", {"activation_function": "relu2"}),
    ("qwen3", {}),
    ("qwen3", {"tie_word_embeddings": True}),
]
IDS = [
    "gpt2",
    "llama-gqa",
    "llama-bias-tied",
    "gpt2-untied-ff48",
    "gpt2-gelu-erf",
    "gpt2-relu2",
    "qwen3-gqa",
    "qwen3-tied",
]
MLP_OF_ACT = {"gelu_new": "gelu", "gelu": "gelu_erf", "relu2": "relu2"}


@pytest.mark.parametrize("kind,kw", CASES, ids=IDS)
def test_import_matches_transformers(tmp_path, tok, kind, kw):
    folder, hf = save_hf(tmp_path / "hf", kind, tok, **kw)
    model, mcfg, tokenizer = load_hf_model(f"hf:{folder}")
    assert tokenizer.fingerprint() == tok.fingerprint()
    assert (mcfg.norm, mcfg.position) == (
        ("layernorm", "learned") if kind == "gpt2" else ("rmsnorm", "rope")
    )
    assert mcfg.tie_embeddings == hf.config.tie_word_embeddings
    assert mcfg.qk_norm == (kind == "qwen3")
    if kind == "gpt2":
        assert mcfg.mlp == MLP_OF_ACT[hf.config.activation_function]

    # 1. logits agree within fp32's rounding of the same function, and to float64 precision in float64
    idx = torch.randint(0, tok.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
        assert (ours - theirs).abs().max().item() <= fp32_logit_tolerance(mcfg.n_layer, 64, theirs)
        ours64, theirs64 = model.double()(idx), hf.double()(idx).logits
        tol64 = fp32_logit_tolerance(mcfg.n_layer, 64, theirs64)
        if (
            kind == "gpt2"
        ):  # (transformers computes Llama's RoPE angles in float32 even in a float64 model)
            tol64 *= 2.0**-29  # float64's unit roundoff 2^-53 in place of 2^-24
        assert (ours64 - theirs64).abs().max().item() <= tol64
    model.float(), hf.float()

    # 2. the same 30 greedy tokens (KV cache on both sides)
    prompt = tok.encode("def add(x")
    mine = generate(model, tok, prompt, max_new_tokens=30, temperature=0.0, stop_at_eot=False)[
        0
    ].tokens
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([prompt]), max_new_tokens=30, do_sample=False, pad_token_id=tok.eot_id
        )
    assert mine == ref[0, len(prompt) :].tolist()

    # 3. export(import(x)) gives back x's tensors, bit for bit
    from safetensors.torch import load_file

    again = export_model(model, tokenizer, tmp_path / "again")
    original = load_file(str(folder / "model.safetensors"))
    exported = load_file(str(again / "model.safetensors"))
    original = {
        k: v for k, v in original.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))
    }
    assert set(exported) == set(original)
    for k, v in original.items():
        assert torch.equal(exported[k], v), k


def _config_json(tmp_path, tok, kind="llama", **edits):
    folder, _ = save_hf(tmp_path / "hf", kind, tok)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(edits)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    "kind,edits,named",
    [
        ("llama", {"model_type": "mistral"}, "model_type=mistral"),
        (
            "llama",
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
            "rope scaling 'linear'",
        ),
        ("llama", {"hidden_act": "gelu"}, "hidden_act=gelu"),
        ("llama", {"attention_bias": True}, "attention_bias=True with mlp_bias=False"),
        ("llama", {"head_dim": 16}, "head_dim=16"),
        ("qwen3", {"attention_bias": True}, "attention_bias=true: Qwen3's MLP has none"),
        ("qwen3", {"use_sliding_window": True}, "use_sliding_window=true"),
        ("qwen3", {"architectures": ["Qwen3MoeForCausalLM"]}, "architectures=Qwen3MoeForCausalLM"),
        ("gpt2", {"activation_function": "quick_gelu"}, "activation_function=quick_gelu"),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ],
)
def test_inexpressible_configs_are_refused(tmp_path, tok, kind, edits, named):
    folder = _config_json(tmp_path, tok, kind, **edits)
    with pytest.raises(LmlabError, match=named.replace("(", r"\(").replace("[", r"\[")) as e:
        read_hf_model(f"hf:{folder}")
    assert "\n" not in str(e.value)


def test_refusals_tokenizer_weights_offline(tmp_path, tok, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder, _ = save_hf(tmp_path / "hf", "llama", tok)
    # a WordPiece tokenizer is not byte-level BPE
    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    saved = (folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(wp.to_str())
    with pytest.raises(LmlabError, match="not byte-level BPE"):
        read_hf_model(f"hf:{folder}")
    (folder / "tokenizer.json").write_text(saved)
    # pickled weights are never loaded
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(LmlabError, match="no model.safetensors.*pickle"):
        load_hf_model(f"hf:{folder}")
    # a hub name, offline: one line saying so
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LmlabError, match="offline") as e:
        read_hf_model("hf:someone/tiny-model")
    assert "\n" not in str(e.value)
    # a tensor lmlab has no place for
    from safetensors.torch import load_file, save_file

    (folder / "pytorch_model.bin").unlink()
    folder2, _ = save_hf(tmp_path / "hf2", "llama", tok)
    sd = load_file(str(folder2 / "model.safetensors"))
    sd["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)
    save_file(sd, str(folder2 / "model.safetensors"))
    with pytest.raises(LmlabError, match="q_norm.weight has no place"):
        load_hf_model(f"hf:{folder2}")


def _dataset(tmp_path, folder):
    from lmlab.cli import main

    (tmp_path / "docs.txt").write_text(CORPUS, encoding="utf-8")
    data = tmp_path / "data"
    assert (
        main(
            [
                "data",
                "prepare",
                "--input",
                str(tmp_path / "docs.txt"),
                "--tokenizer",
                str(folder),
                "--out",
                str(data),
                "--val-fraction",
                "0.2",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    return data


def test_training_and_sft_start_from_hf(tmp_path, tok):
    from lmlab.train import checkpoint as ck
    from lmlab.train.loop import train
    from lmlab.train.sft import run_sft

    folder, hf = save_hf(tmp_path / "hf", "gpt2", tok)
    data = _dataset(tmp_path, folder)
    base = {
        "train": {
            "init_from": f"hf:{folder}",
            "max_steps": 2,
            "batch_size": 2,
            "lr": 0.0,
            "min_lr": 0.0,
            "warmup_steps": 0,
            "eval_every": 0,
            "checkpoint_every": 0,
            "device": "cpu",
            "out": str(tmp_path / "run"),
        },
        "model": {"n_layer": 7, "d_model": 48},  # replaced by config.json
        "data": {"path": str(data)},
        "eval": {"batches": 1, "samples": 0},
        "log": {"progress": False},
    }
    train(from_dict(base).validate())
    # at lr 0 the run's checkpoint is the HF model: same logits, config from config.json, its tokenizer
    model, cfg, run_tok = ck.load_model_for_inference(tmp_path / "run")
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.norm) == (2, 32, "layernorm")
    assert cfg.train.init_from == f"hf:{folder.resolve()}"
    assert run_tok.fingerprint() == tok.fingerprint()
    idx = torch.tensor([tok.encode("the cat sat on a mat")])
    with torch.no_grad():
        assert (model(idx) - hf(idx).logits).abs().max().item() <= fp32_logit_tolerance(
            2, 64, hf(idx).logits
        )

    # sft from the same folder
    (tmp_path / "pairs.jsonl").write_text(
        "\n".join(
            json.dumps({"instruction": f"add {i} and {i + 1}", "output": f"{2 * i + 1}"})
            for i in range(30)
        )
    )
    sft = {
        **base,
        "train": {**base["train"], "out": str(tmp_path / "sft"), "lr": 1e-3, "max_steps": 3},
        "sft": {
            "data": [str(tmp_path / "pairs.jsonl")],
            "val_fraction": 0.2,
            "template": "Q: {instruction}\nA: ",
        },
    }
    result = run_sft(from_dict(sft).validate())
    info = json.loads((tmp_path / "sft" / "sft.json").read_text())
    assert result.steps == 3 and info["val_loss_before"] is not None
    assert info["val_loss_after"] < info["val_loss_before"]


def test_model_fields_of_a_gpt2_config():
    fam, f = model_fields(
        {
            "model_type": "gpt2",
            "vocab_size": 50,
            "n_positions": 32,
            "n_embd": 16,
            "n_layer": 1,
            "n_head": 2,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5,
        },
        "x",
    )
    assert fam == "gpt2" and f["d_ff"] == 64 and f["tie_embeddings"] and f["bias"]
