"""The one table between lmlab's parameters and the tensors of Hugging Face and GGUF files.

lmlab exports three families (:func:`family`): ``gpt2`` (transformers' ``GPT2LMHeadModel``,
llama.cpp's ``gpt2``), ``llama`` (``LlamaForCausalLM``, llama.cpp's ``llama``) and, for the
llama family with ``model.qk_norm``, ``qwen3`` (``Qwen3ForCausalLM``, llama.cpp's ``qwen3``:
Llama's tensors plus an RMSNorm over head_dim on q and k before RoPE, no MLP biases). Each
:class:`Entry` names one tensor in every format: the lmlab parameter (and which block of its
rows: lmlab fuses q/k/v and SwiGLU's gate/up), its Hugging Face name and its GGUF name (the
names of llama.cpp's ``convert_hf_to_gguf.py``). Two layouts differ:

- HF GPT-2's ``Conv1D`` stores weights as (in, out), the transpose of ``nn.Linear``;
- llama.cpp's ``llama`` RoPE rotates adjacent pairs (2j, 2j+1), lmlab and HF Llama rotate
  dim j with j + head_dim/2, so GGUF q/k rows are reordered within each head (the permutation
  ``convert_hf_to_gguf.py`` applies to HF Llama weights; q.k products are unchanged).
  llama.cpp's ``qwen3`` rotates halves (NeoX order), as lmlab does: its rows copy as they are.

Export (:func:`to_format`) and import (:func:`from_format`) both read this table, so a round
trip gives back the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.model.transformer import resolve_d_ff

# lmlab's model.mlp -> GPT2Config.activation_function ("gelu" there is the exact erf form)
GPT2_ACT = {
    "gelu": "gelu_new",
    "gelu_erf": "gelu",
    "relu": "relu",
    "relu2": "relu2",
    "silu": "silu",
}
_WHO = {
    "hf": ("transformers' GPT-2", "transformers' Llama", "transformers' Qwen3"),
    "gguf": ("llama.cpp's gpt2", "llama.cpp's llama", "llama.cpp's qwen3"),
}


@dataclass(frozen=True)
class Entry:
    """One tensor: lmlab ``ours`` (rows ``part`` of it), HF ``hf``, GGUF ``gguf``."""

    ours: str
    hf: str
    gguf: str
    part: str = ""  # "" whole; "q" "k" "v": rows of attn.qkv; "gate" "up": rows of a swiglu mlp.fc
    conv1d: bool = False  # HF stores the transpose (GPT-2 Conv1D)
    rope: bool = False  # q/k rows: GGUF holds them in llama.cpp's adjacent-pair RoPE order
    zeros: bool = False  # the format always has it; when lmlab has none, zeros compute the same


def family(mcfg: Any, target: str = "hf") -> str:
    """``"gpt2"``, ``"llama"`` or ``"qwen3"`` for an exportable config; LmlabError naming the
    switch if not.

    ``target`` ("hf" or "gguf") only changes whose limits the message names, except that
    llama.cpp's gpt2 MLP is GELU alone.
    """
    gpt2, llama, qwen3 = _WHO[target]
    if mcfg.arch != "transformer":
        raise LmlabError(
            f"model.arch={mcfg.arch}: only the decoder-only transformer can be exported "
            f"({gpt2} / {llama})"
        )
    if not getattr(mcfg, "residual", True):
        raise LmlabError(
            f"model.residual=false: a model without residual connections has no {gpt2} / {llama} equivalent"
        )
    if mcfg.norm_position != "pre":
        raise LmlabError(
            f"model.norm_position={mcfg.norm_position}: {gpt2} and {llama} are pre-norm only"
        )
    qk_norm = bool(getattr(mcfg, "qk_norm", False))
    if mcfg.norm == "layernorm":
        if qk_norm:
            raise LmlabError(
                f"model.qk_norm=true with model.norm=layernorm: {gpt2} has no norm on queries "
                f"and keys ({qwen3}, with rmsnorm + swiglu, has)"
            )
        if mcfg.position == "rope":
            raise LmlabError(
                f"model.position=rope with model.norm=layernorm: {gpt2} has learned positions and "
                f"{llama} has RMSNorm; neither expresses this combination"
            )
        allowed = ("gelu",) if target == "gguf" else tuple(GPT2_ACT)
        if mcfg.mlp not in allowed:
            raise LmlabError(
                f"model.mlp={mcfg.mlp} with model.norm=layernorm: {gpt2}'s MLP is "
                + (
                    "GELU (tanh: llama.cpp's GPT-2 graph has no erf form)"
                    if target == "gguf"
                    else "not gated (use gelu, gelu_erf, relu, relu2 or silu)"
                )
                + ", or use rmsnorm + swiglu for the llama family"
            )
        n_kv = mcfg.n_kv_head or mcfg.n_head
        if n_kv != mcfg.n_head:
            raise LmlabError(
                f"model.n_kv_head={mcfg.n_kv_head} with model.norm=layernorm: {gpt2} has no "
                "grouped-query attention"
            )
        return "gpt2"
    if mcfg.norm == "rmsnorm":
        if mcfg.position != "rope":
            raise LmlabError(
                f"model.position={mcfg.position} with model.norm=rmsnorm: {llama} always applies RoPE"
            )
        if mcfg.mlp != "swiglu":
            raise LmlabError(
                f"model.mlp={mcfg.mlp} with model.norm=rmsnorm: {llama}'s MLP is gated (swiglu)"
            )
        if qk_norm and mcfg.bias:
            raise LmlabError(
                f"model.bias=true with model.qk_norm=true: {qwen3}'s MLP has no biases"
            )
        return "qwen3" if qk_norm else "llama"
    raise LmlabError(f"model.norm={mcfg.norm}: {gpt2} and {llama} both need a norm layer")


def entries(mcfg: Any, fam: str) -> list[Entry]:
    """Every tensor of ``fam`` for this config, in file order."""
    E = Entry
    out: list[Entry] = []
    if fam == "gpt2":
        out += [
            E("tok_emb.weight", "transformer.wte.weight", "token_embd.weight"),
            E("pos_emb.weight", "transformer.wpe.weight", "position_embd.weight", zeros=True),
        ]
        for i in range(mcfg.n_layer):
            p, h, g = f"blocks.{i}.", f"transformer.h.{i}.", f"blk.{i}."
            for ours, hf, gg, conv in [
                ("norm1", "ln_1", "attn_norm", False),
                ("attn.qkv", "attn.c_attn", "attn_qkv", True),
                ("attn.proj", "attn.c_proj", "attn_output", True),
                ("norm2", "ln_2", "ffn_norm", False),
                ("mlp.fc", "mlp.c_fc", "ffn_up", True),
                ("mlp.proj", "mlp.c_proj", "ffn_down", True),
            ]:
                out.append(
                    E(p + ours + ".weight", h + hf + ".weight", g + gg + ".weight", conv1d=conv)
                )
                out.append(E(p + ours + ".bias", h + hf + ".bias", g + gg + ".bias", zeros=True))
        out += [
            E("norm_f.weight", "transformer.ln_f.weight", "output_norm.weight"),
            E("norm_f.bias", "transformer.ln_f.bias", "output_norm.bias", zeros=True),
        ]
    elif fam in ("llama", "qwen3"):
        interleave = fam == "llama"  # llama.cpp's llama RoPE pairs adjacent dims, qwen3 halves
        out.append(E("tok_emb.weight", "model.embed_tokens.weight", "token_embd.weight"))
        kinds = ["weight", "bias"] if mcfg.bias else ["weight"]
        for i in range(mcfg.n_layer):
            p, h, g = f"blocks.{i}.", f"model.layers.{i}.", f"blk.{i}."
            out.append(E(p + "norm1.weight", h + "input_layernorm.weight", g + "attn_norm.weight"))
            for n in kinds:
                out += [
                    E(
                        f"{p}attn.qkv.{n}",
                        f"{h}self_attn.q_proj.{n}",
                        f"{g}attn_q.{n}",
                        part="q",
                        rope=interleave,
                    ),
                    E(
                        f"{p}attn.qkv.{n}",
                        f"{h}self_attn.k_proj.{n}",
                        f"{g}attn_k.{n}",
                        part="k",
                        rope=interleave,
                    ),
                    E(f"{p}attn.qkv.{n}", f"{h}self_attn.v_proj.{n}", f"{g}attn_v.{n}", part="v"),
                ]
            if fam == "qwen3":
                out += [
                    E(
                        f"{p}attn.{x}_norm.weight",
                        f"{h}self_attn.{x}_norm.weight",
                        f"{g}attn_{x}_norm.weight",
                    )
                    for x in ("q", "k")
                ]
            for n in kinds:
                out.append(
                    E(f"{p}attn.proj.{n}", f"{h}self_attn.o_proj.{n}", f"{g}attn_output.{n}")
                )
            out.append(
                E(p + "norm2.weight", h + "post_attention_layernorm.weight", g + "ffn_norm.weight")
            )
            for n in kinds:
                out += [
                    E(f"{p}mlp.fc.{n}", f"{h}mlp.gate_proj.{n}", f"{g}ffn_gate.{n}", part="gate"),
                    E(f"{p}mlp.fc.{n}", f"{h}mlp.up_proj.{n}", f"{g}ffn_up.{n}", part="up"),
                    E(f"{p}mlp.proj.{n}", f"{h}mlp.down_proj.{n}", f"{g}ffn_down.{n}"),
                ]
        out.append(E("norm_f.weight", "model.norm.weight", "output_norm.weight"))
    else:
        raise LmlabError(f"unknown export family {fam!r}")
    if not mcfg.tie_embeddings:  # tied: the formats reuse the token embedding as the head
        out.append(E("head.weight", "lm_head.weight", "output.weight"))
    return out


def _heads(mcfg: Any) -> tuple[int, int, int]:
    H = mcfg.n_head
    return H, mcfg.n_kv_head or H, mcfg.d_model // H


def part_rows(mcfg: Any, part: str) -> tuple[int, int]:
    """The rows [start, stop) of ``part`` in lmlab's fused tensor."""
    H, KV, hd = _heads(mcfg)
    d_ff = resolve_d_ff(mcfg)
    return {
        "q": (0, H * hd),
        "k": (H * hd, (H + KV) * hd),
        "v": ((H + KV) * hd, (H + 2 * KV) * hd),
        "gate": (0, d_ff),
        "up": (d_ff, 2 * d_ff),
    }[part]


def rope_interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head from rotate-half order (j, j + hd/2) to adjacent pairs (2j, 2j+1)."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def rope_deinterleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of :func:`rope_interleave`."""
    return (
        w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _rope_heads(mcfg: Any, part: str) -> int:
    H, KV, _ = _heads(mcfg)
    return H if part == "q" else KV


def _zeros_like_missing(e: Entry, sd: dict[str, torch.Tensor], mcfg: Any) -> torch.Tensor:
    if e.ours == "pos_emb.weight":  # NoPE as a learned table: all zero
        return torch.zeros(mcfg.context_length, mcfg.d_model)
    assert e.ours.endswith(".bias"), e.ours
    weight = e.ours[: -len("bias")] + "weight"
    rows = sd[weight].shape[0] if weight in sd else mcfg.d_model  # a bias-free LayerNorm: d_model
    return torch.zeros(rows)


def to_format(
    sd: dict[str, torch.Tensor], mcfg: Any, fam: str, fmt: str
) -> dict[str, torch.Tensor]:
    """lmlab's state dict -> ``fmt`` ("hf" or "gguf") tensors, fp32, contiguous, unshared."""
    out: dict[str, torch.Tensor] = {}
    for e in entries(mcfg, fam):
        t = sd.get(e.ours)
        if t is None:
            if not e.zeros:
                raise LmlabError(f"{e.ours}: missing from the model's weights")
            t = _zeros_like_missing(e, sd, mcfg)
        t = t.detach().to("cpu", torch.float32)
        if e.part:
            a, b = part_rows(mcfg, e.part)
            t = t[a:b]
        if fmt == "hf" and e.conv1d:
            t = t.t()
        if fmt == "gguf" and e.rope:
            t = rope_interleave(t, _rope_heads(mcfg, e.part))
        out[e.hf if fmt == "hf" else e.gguf] = t.contiguous().clone()
    return out


def from_format(
    tensors: dict[str, torch.Tensor],
    mcfg: Any,
    fam: str,
    fmt: str,
    wanted: set[str],
    where: str = "",
) -> dict[str, torch.Tensor]:
    """``fmt`` tensors -> lmlab's state dict for the parameters named in ``wanted``.

    A tensor the table always writes but lmlab's model lacks (a zero bias, a zero position
    table) must be zero; otherwise the model would compute something else, so LmlabError.
    """
    pieces: dict[str, list[torch.Tensor]] = {}
    for e in entries(mcfg, fam):
        name = e.hf if fmt == "hf" else e.gguf
        if name not in tensors:
            if e.zeros and e.ours not in wanted:
                continue
            raise LmlabError(f"{where}: tensor {name} is missing")
        t = tensors[name].to(torch.float32)
        if e.ours not in wanted:
            if not bool((t == 0).all()):
                raise LmlabError(
                    f"{where}: {name} is not zero, and an lmlab model with this config has no "
                    f"{e.ours} (see model.bias / model.position)"
                )
            continue
        if fmt == "hf" and e.conv1d:
            t = t.t()
        if fmt == "gguf" and e.rope:
            t = rope_deinterleave(t, _rope_heads(mcfg, e.part))
        pieces.setdefault(e.ours, []).append(t)
    return {
        k: torch.cat(v, 0).contiguous() if len(v) > 1 else v[0].contiguous()
        for k, v in pieces.items()
    }


def known_names(mcfg: Any, fam: str, fmt: str) -> set[str]:
    """Every tensor name the table has for this config (bias/position entries included)."""
    return {e.hf if fmt == "hf" else e.gguf for e in entries(mcfg, fam)}
