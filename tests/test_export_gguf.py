"""GGUF export: every tensor read back with gguf.GGUFReader against the checkpoint, metadata,
the embedded tokenizer, and the runs GGUF cannot express (each refused naming the setting).

Whether llama.cpp runs the file is tests/test_gguf_llama_cpp.py (needs llama-cpp-python).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lmlab.config import Config, ModelConfig
from lmlab.errors import LmlabError
from lmlab.model import build_model
from lmlab.model.presets import PRESETS
from lmlab.model.transformer import resolve_d_ff

gguf = pytest.importorskip("gguf")

CORPUS = (
    "Hello world! The quick brown fox jumps over the lazy dog.\n"
    "def add(x, y):\n    return x + y  # ünïcödé 😀\n"
) * 30


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


def tiny_model(preset: str, vocab_size: int, **kw) -> torch.nn.Module:
    cfg = ModelConfig(vocab_size=vocab_size, n_layer=2, n_head=4, d_model=64, context_length=96)
    cfg = dataclasses.replace(cfg, **{**PRESETS[preset], **kw})
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)  # norms and biases too: every tensor is distinct from its init
        if model.pos_emb is not None:
            model.pos_emb.weight[:3] *= 1e-5  # tiny values: f16 subnormals, tiny q8_0 blocks
    return model.eval()


def make_run(root, model, tok):
    from lmlab.train.checkpoint import save_checkpoint

    run = root / "run"
    tok.save(run / "tokenizer")
    save_checkpoint(
        run / "checkpoints", 5, model, None, None, {"tokens": 0}, Config(model=model.config)
    )
    return run


def interleave_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's RoPE row order, written out index by index: GGUF row h*hd + 2j + r holds
    lmlab row h*hd + r*hd/2 + j (lmlab pairs dim j with j + hd/2, llama.cpp 2j with 2j+1)."""
    hd = w.shape[0] // n_heads
    order = [
        h * hd + r * (hd // 2) + j for h in range(n_heads) for j in range(hd // 2) for r in range(2)
    ]
    return w[order]


def expected_tensors(model) -> dict[str, np.ndarray]:
    """What the GGUF must hold, built from the state dict without lmlab.export."""
    c = model.config
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    H, KV, hd, d, ff = (
        c.n_head,
        c.n_kv_head or c.n_head,
        c.d_model // c.n_head,
        c.d_model,
        resolve_d_ff(c),
    )
    out = {"token_embd.weight": sd["tok_emb.weight"]}
    if not c.tie_embeddings:
        out["output.weight"] = sd["head.weight"]
    if c.norm == "rmsnorm":
        out["output_norm.weight"] = sd["norm_f.weight"]
        for i in range(c.n_layer):
            b, g = f"blocks.{i}.", f"blk.{i}."
            out[g + "attn_norm.weight"] = sd[b + "norm1.weight"]
            out[g + "ffn_norm.weight"] = sd[b + "norm2.weight"]
            if c.qk_norm:  # qwen3: the norms, and q/k rows as they are (NeoX-order RoPE)
                out[g + "attn_q_norm.weight"] = sd[b + "attn.q_norm.weight"]
                out[g + "attn_k_norm.weight"] = sd[b + "attn.k_norm.weight"]
            reorder = (lambda w, n: w) if c.qk_norm else interleave_rows
            for n in ["weight", "bias"] if c.bias else ["weight"]:
                qkv = sd[f"{b}attn.qkv.{n}"]
                out[f"{g}attn_q.{n}"] = reorder(qkv[: H * hd], H)
                out[f"{g}attn_k.{n}"] = reorder(qkv[H * hd : (H + KV) * hd], KV)
                out[f"{g}attn_v.{n}"] = qkv[(H + KV) * hd :]
                out[f"{g}attn_output.{n}"] = sd[f"{b}attn.proj.{n}"]
                out[f"{g}ffn_gate.{n}"] = sd[f"{b}mlp.fc.{n}"][:ff]
                out[f"{g}ffn_up.{n}"] = sd[f"{b}mlp.fc.{n}"][ff:]
                out[f"{g}ffn_down.{n}"] = sd[f"{b}mlp.proj.{n}"]
        return out
    z = np.zeros
    out["position_embd.weight"] = sd.get("pos_emb.weight", z((c.context_length, d), np.float32))
    out["output_norm.weight"], out["output_norm.bias"] = (
        sd["norm_f.weight"],
        sd.get("norm_f.bias", z(d, np.float32)),
    )
    for i in range(c.n_layer):
        b, g = f"blocks.{i}.", f"blk.{i}."
        for ours, theirs in [
            ("norm1", "attn_norm"),
            ("attn.qkv", "attn_qkv"),
            ("attn.proj", "attn_output"),
            ("norm2", "ffn_norm"),
            ("mlp.fc", "ffn_up"),
            ("mlp.proj", "ffn_down"),
        ]:
            w = sd[b + ours + ".weight"]
            out[g + theirs + ".weight"] = w
            out[g + theirs + ".bias"] = sd.get(b + ours + ".bias", z(w.shape[0], np.float32))
    return out


def read_gguf(path):
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return reader, fields


F16 = gguf.GGMLQuantizationType.F16
F32 = gguf.GGMLQuantizationType.F32
Q8 = gguf.GGMLQuantizationType.Q8_0


def f16_bound(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest float16: half an ulp, 2^-11 relative for normals, 2^-25 absolute below 2^-14."""
    return np.maximum(np.abs(x) * 2.0**-11, 2.0**-25)


def q8_0_bound(x: np.ndarray) -> np.ndarray:
    """Q8_0 over blocks of 32: d = max|x|/127, q = round(x/d) in int8, d stored as float16.
    |x - q*d16| <= |x - q*d| + |q|*|d - d16| <= d/2 + 127 * max(2^-11 d, 2^-25), plus float32
    rounding of x/d and q*d16 (well under d * 2^-16)."""
    blocks = np.abs(x.astype(np.float64)).reshape(-1, 32)
    d = blocks.max(axis=1, keepdims=True) / 127
    b = d * (0.5 + 2.0**-16) + 127 * np.maximum(d * 2.0**-11, 2.0**-25)
    return np.broadcast_to(b, blocks.shape).reshape(x.shape)


CASES = [
    ("llama", {"n_kv_head": 2}),
    ("llama", {"bias": True, "tie_embeddings": True}),
    ("gpt2", {}),
    ("gpt2", {"bias": False, "position": "none", "tie_embeddings": False, "d_ff": 80}),
    ("llama", {"qk_norm": True, "n_kv_head": 2}),
]
IDS = ["llama-gqa", "llama-bias-tied", "gpt2", "gpt2-nobias-nope-untied-ff80", "qwen3-gqa"]


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("preset,kw", CASES, ids=IDS)
def test_every_tensor_reads_back(tmp_path, tok, preset, kw, dtype):
    from lmlab.cli import main

    model = tiny_model(preset, tok.vocab_size + 20, **kw)  # 20 ids the tokenizer never emits
    run = make_run(tmp_path, model, tok)
    out = tmp_path / "m.gguf"
    assert main(["export", str(run), "--format", "gguf", "--dtype", dtype, "--out", str(out)]) == 0
    reader, fields = read_gguf(out)
    want = expected_tensors(model)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(want)
    for name, x in want.items():
        t = got[name]
        assert tuple(int(n) for n in reversed(t.shape)) == x.shape, (
            name
        )  # ggml lists dims innermost first
        matrix = x.ndim == 2 and name != "position_embd.weight"
        if dtype == "f32" or not matrix:
            assert t.tensor_type == F32, name
            assert np.array_equal(np.asarray(t.data).reshape(x.shape), x), name  # exact
            continue
        qtype = F16 if dtype == "f16" or x.shape[1] % 32 else Q8
        assert t.tensor_type == qtype, name
        y = gguf.quants.dequantize(np.asarray(t.data), qtype).reshape(x.shape).astype(np.float64)
        bound = f16_bound(x) if qtype == F16 else q8_0_bound(x)
        err = np.abs(y - x.astype(np.float64))
        assert (err <= bound).all(), (name, float((err - bound).max()))
        assert err.max() > 0, name  # the format really rounded (this is not an f32 copy)

    c = model.config
    arch = ("qwen3" if c.qk_norm else "llama") if preset == "llama" else "gpt2"
    assert fields["general.architecture"] == arch
    assert fields[f"{arch}.context_length"] == c.context_length
    assert fields[f"{arch}.embedding_length"] == c.d_model
    assert fields[f"{arch}.block_count"] == c.n_layer
    assert fields[f"{arch}.feed_forward_length"] == resolve_d_ff(c)
    assert fields[f"{arch}.attention.head_count"] == c.n_head
    assert fields[f"{arch}.attention.head_count_kv"] == (c.n_kv_head or c.n_head)
    if arch != "gpt2":
        assert fields[f"{arch}.rope.freq_base"] == pytest.approx(c.rope_theta, rel=2**-24)
        assert fields[f"{arch}.rope.dimension_count"] == c.d_model // c.n_head
        assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(
            c.norm_eps, rel=2**-24
        )
    else:
        assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(c.norm_eps, rel=2**-24)
    assert fields["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[dtype]


def test_embedded_tokenizer(tmp_path, tok):
    from lmlab.export.gguf import export_gguf_model
    from lmlab.tokenizer.bytelevel import token_str_to_bytes

    model = tiny_model("llama", tok.vocab_size + 3)
    _, f = read_gguf(export_gguf_model(model, tok, tmp_path / "m.gguf"))
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == model.config.vocab_size
    eot = tok.eot_id
    assert tokens[eot] == "<|endoftext|>" and types[eot] == 3  # CONTROL
    assert f["tokenizer.ggml.eos_token_id"] == f["tokenizer.ggml.bos_token_id"] == eot
    assert f["tokenizer.ggml.add_bos_token"] is False
    for i, b in tok.vocab.items():
        if i != eot:
            assert token_str_to_bytes(tokens[i]) == b and types[i] == 1
    assert tokens[-3:] == [f"[PAD{i}]" for i in range(tok.vocab_size, tok.vocab_size + 3)]
    assert types[-3:] == [5, 5, 5]  # UNUSED
    merges = [
        tuple(token_str_to_bytes(p) for p in m.split(" ")) for m in f["tokenizer.ggml.merges"]
    ]
    assert merges == tok.merges


@pytest.mark.parametrize(
    "preset,kw,switch",
    [
        ("gpt2", {"norm_position": "post"}, "model.norm_position=post"),
        ("llama", {"norm": "none"}, "model.norm=none"),
        ("llama", {"position": "learned"}, "model.position=learned"),
        ("llama", {"position": "none"}, "model.position=none"),
        ("gpt2", {"position": "rope"}, "model.position=rope"),
        ("gpt2", {"mlp": "relu"}, "model.mlp=relu"),
        ("gpt2", {"mlp": "gelu_erf"}, "model.mlp=gelu_erf"),  # llama.cpp's GPT-2 GELU is tanh
        ("gpt2", {"n_kv_head": 2}, "model.n_kv_head=2"),
        ("llama", {"mlp": "gelu"}, "model.mlp=gelu"),
        ("llama", {"arch": "bigram"}, "model.arch=bigram"),
        ("llama", {"arch": "encdec"}, "model.arch=encdec"),
        ("llama", {"qk_norm": True, "bias": True}, "model.bias=true with model.qk_norm=true"),
        ("gpt2", {"qk_norm": True}, "model.qk_norm=true"),
        ("gpt2", {"mlp": "relu2"}, "model.mlp=relu2"),
    ],
)
def test_inexpressible_settings_are_named(tok, preset, kw, switch):
    from lmlab.export.gguf import check_exportable

    cfg = dataclasses.replace(ModelConfig(vocab_size=tok.vocab_size), **{**PRESETS[preset], **kw})
    with pytest.raises(LmlabError, match=switch.replace(".", r"\.")) as e:
        check_exportable(cfg, tok)
    assert "\n" not in str(e.value)


def test_tokenizers_gguf_cannot_hold_are_refused(tmp_path):
    from lmlab.export.gguf import check_exportable
    from lmlab.tokenizer import train_tokenizer

    (tmp_path / "a.py").write_text("def add(x, y):\n    return x + y\n" * 20, encoding="utf-8")
    cfg = dataclasses.replace(ModelConfig(vocab_size=1024), **PRESETS["llama"])
    for kind, size in (("char", 100), ("symbolic", 1024)):
        t = train_tokenizer(
            [str(tmp_path / "a.py")],
            vocab_size=size,
            out=tmp_path / kind,
            kind=kind,
            special_tokens=["<|endoftext|>"],
        )
        with pytest.raises(LmlabError, match=f"tokenizer kind '{kind}'"):
            check_exportable(cfg, t)


def test_refusal_and_overwrite_rules_via_cli(tmp_path, tok, capsys):
    from lmlab.cli import main

    good = make_run(tmp_path / "good", tiny_model("gpt2", tok.vocab_size), tok)
    bad = make_run(tmp_path / "bad", tiny_model("gpt2", tok.vocab_size, norm_position="post"), tok)
    out = tmp_path / "m.gguf"
    assert main(["export", str(good), "--format", "gguf", "--out", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    # 1. an inexpressible run: one line naming the setting, the earlier export untouched
    assert main(["export", str(bad), "--format", "gguf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.norm_position=post" in err and err.count("\n") == 1
    assert out.read_bytes() == before
    # 2. a bad dtype, named
    assert main(["export", str(good), "--format", "gguf", "--dtype", "q4", "--out", str(out)]) == 2
    assert "--dtype" in capsys.readouterr().err
    # 3. a file lmlab did not write is never replaced; its own export is
    other = tmp_path / "notes.gguf"
    other.write_text("mine")
    assert main(["export", str(good), "--format", "gguf", "--out", str(other)]) == 2
    assert "not an lmlab GGUF export" in capsys.readouterr().err
    assert other.read_text() == "mine"
    assert main(["export", str(good), "--format", "gguf", "--dtype", "f16", "--out", str(out)]) == 0
    assert out.read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
