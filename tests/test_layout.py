"""Linear weight layouts for CPU decoding: same values and outputs, only strides change."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.model import build_model
from lmlab.model.layout import linear_layout, pick_decode_layout, set_linear_layout
from lmlab.model.presets import PRESETS
from lmlab.sample import generate
from lmlab.tokenizer.char import CharTokenizer


@pytest.fixture
def f64():
    """Compare layouts in float64: in float32 a column-major weight takes another GEMM kernel,
    whose summation order (CPU-dependent) changes outputs by ~1e-7 and can flip a greedy argmax
    between near-tied tokens; float64 roundoff on these O(1) values stays below 1e-13."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def tiny(preset: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = replace(
        ModelConfig(vocab_size=40, n_layer=2, n_head=2, d_model=32, context_length=32),
        **{**PRESETS[preset], **kw},
    )
    return build_model(cfg).eval()


@pytest.mark.parametrize("preset", ["llama", "gpt2"])
def test_col_layout_keeps_values_outputs_and_parameters(preset, f64):
    model = tiny(preset)
    params = list(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        ref = model(x)
    set_linear_layout(model, "col")
    assert linear_layout(model) == "col"
    assert list(model.parameters()) == params  # the same Parameter objects (optimizers keep them)
    qkv = model.blocks[0].attn.qkv.weight
    assert qkv.stride() == (1, qkv.shape[0]) and not qkv.is_contiguous()
    if preset == "gpt2":  # tied: the head is the embedding table, which stays row-major
        assert model.head.weight is model.tok_emb.weight and model.tok_emb.weight.is_contiguous()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-10)
    set_linear_layout(model, "row")
    assert linear_layout(model) == "row" and qkv.is_contiguous()
    with pytest.raises(ValueError, match="layout"):
        set_linear_layout(model, "diagonal")


def test_picked_layout_decodes_the_same_tokens_and_saves_the_same_file(tmp_path, f64):
    from safetensors.torch import load_file, save_model

    model = tiny("llama", tie_embeddings=False)
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz .,\n"), ["<|endoftext|>"])
    greedy = lambda: generate(model, tok, "abc", max_new_tokens=20, temperature=0.0)[0].tokens  # noqa: E731
    ref = greedy()
    save_model(model, str(tmp_path / "row.safetensors"))
    for layout in ("col", "row"):
        set_linear_layout(model, layout)
        assert greedy() == ref
    picked = pick_decode_layout(model, batch_size=2, steps=2)
    assert picked in ("row", "col") and linear_layout(model) == picked
    assert model.training is False and greedy() == ref
    set_linear_layout(model, "col")
    save_model(model, str(tmp_path / "col.safetensors"))
    a, b = (
        load_file(str(tmp_path / "row.safetensors")),
        load_file(str(tmp_path / "col.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and b[k].is_contiguous() for k in a)


def test_models_without_a_kv_cache_are_left_alone():
    model = tiny("llama", arch="bigram")
    assert pick_decode_layout(model) == "row" and linear_layout(model) == "row"
