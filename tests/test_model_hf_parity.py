"""Parity with Hugging Face transformers: same weights, same logits.

The gpt2 preset must compute exactly what ``GPT2LMHeadModel`` computes and the llama preset
what ``LlamaForCausalLM`` computes; the weight mapping here is the one an exporter needs
(GPT-2's Conv1D stores weights transposed; Llama's q/k/v and gate/up are split).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.model import build_model
from lmlab.model.presets import PRESETS
from lmlab.model.transformer import resolve_d_ff

transformers = pytest.importorskip("transformers")

# Both models run in float64 (the f64 fixture), so the comparison does not depend on the CPU's
# float32 summation order. GPT-2: every op is float64, roundoff ~1e-16 per op on O(1) values,
# so 1e-12 has 1e4 margin. LLaMA: HF's LlamaRMSNorm computes in float32 whatever the dtype, so
# the logits carry float32 roundings (U32 relative) of the 2*n_layer+1 norm outputs, passed on
# with O(1) gain: 16 * (2*n_layer+1) * U32 * max|logit| (observed ~50x below that).
U32 = 2.0**-24


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def cfg_for(preset: str, **kw) -> ModelConfig:
    base = dict(vocab_size=96, d_model=32, n_layer=2, n_head=4, context_length=24)
    base.update(kw)
    return dataclasses.replace(ModelConfig(), **PRESETS[preset], **base)


def test_gpt2_preset_matches_gpt2lmheadmodel(f64):
    m = cfg_for("gpt2")
    torch.manual_seed(0)
    ours = build_model(m).eval()
    hf_cfg = transformers.GPT2Config(
        vocab_size=m.vocab_size,
        n_positions=m.context_length,
        n_embd=m.d_model,
        n_layer=m.n_layer,
        n_head=m.n_head,
        n_inner=resolve_d_ff(m),
        activation_function="gelu_new",
        layer_norm_epsilon=m.norm_eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    sd = ours.state_dict()
    new = {
        "transformer.wte.weight": sd["tok_emb.weight"],
        "transformer.wpe.weight": sd["pos_emb.weight"],
        "transformer.ln_f.weight": sd["norm_f.weight"],
        "transformer.ln_f.bias": sd["norm_f.bias"],
    }
    for i in range(m.n_layer):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours_name, hf_name, transpose in [
            ("norm1", "ln_1", False),
            ("norm2", "ln_2", False),
            ("attn.qkv", "attn.c_attn", True),
            ("attn.proj", "attn.c_proj", True),
            ("mlp.fc", "mlp.c_fc", True),
            ("mlp.proj", "mlp.c_proj", True),
        ]:
            w = sd[b + ours_name + ".weight"]
            new[h + hf_name + ".weight"] = w.t() if transpose else w
            new[h + hf_name + ".bias"] = sd[b + ours_name + ".bias"]
    missing, unexpected = hf.load_state_dict(new, strict=False)
    assert not unexpected
    assert all(
        k == "lm_head.weight" or k.endswith("attn.bias") or k.endswith("masked_bias")
        for k in missing
    )
    idx = torch.randint(0, m.vocab_size, (2, 20))
    with torch.no_grad():
        a, b = ours(idx), hf(idx).logits
    assert a.dtype == b.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_llama_preset_matches_llamaforcausallm(n_kv_head, f64):
    m = cfg_for("llama", n_kv_head=n_kv_head)
    torch.manual_seed(0)
    ours = build_model(m).eval()
    d_ff = resolve_d_ff(m)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.d_model,
        intermediate_size=d_ff,
        num_hidden_layers=m.n_layer,
        num_attention_heads=m.n_head,
        num_key_value_heads=n_kv_head,
        max_position_embeddings=m.context_length,
        rms_norm_eps=m.norm_eps,
        rope_theta=m.rope_theta,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    sd = ours.state_dict()
    hd = m.d_model // m.n_head
    new = {
        "model.embed_tokens.weight": sd["tok_emb.weight"],
        "model.norm.weight": sd["norm_f.weight"],
        "lm_head.weight": sd["head.weight"],
    }
    for i in range(m.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = sd[b + "attn.qkv.weight"].split((m.n_head * hd, n_kv_head * hd, n_kv_head * hd))
        gate, up = sd[b + "mlp.fc.weight"].split((d_ff, d_ff))
        new.update(
            {
                h + "input_layernorm.weight": sd[b + "norm1.weight"],
                h + "post_attention_layernorm.weight": sd[b + "norm2.weight"],
                h + "self_attn.q_proj.weight": q,
                h + "self_attn.k_proj.weight": k,
                h + "self_attn.v_proj.weight": v,
                h + "self_attn.o_proj.weight": sd[b + "attn.proj.weight"],
                h + "mlp.gate_proj.weight": gate,
                h + "mlp.up_proj.weight": up,
                h + "mlp.down_proj.weight": sd[b + "mlp.proj.weight"],
            }
        )
    hf.load_state_dict(new, strict=True)
    idx = torch.randint(0, m.vocab_size, (2, 20))
    with torch.no_grad():
        a, b = ours(idx), hf(idx).logits
    assert a.dtype == b.dtype == torch.float64
    torch.testing.assert_close(
        a, b, rtol=0, atol=16 * (2 * m.n_layer + 1) * U32 * float(b.abs().max())
    )
