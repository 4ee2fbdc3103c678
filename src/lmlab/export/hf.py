"""Export a run to a Hugging Face transformers folder (safetensors, config, tokenizer).

Which HF class a run becomes is decided by its norm:

- ``layernorm`` -> ``GPT2LMHeadModel``: pre-norm, learned positions (``none`` is exported as
  an all-zero position table, which is exactly NoPE), an MLP of ``gelu`` (tanh, GPT-2's
  ``gelu_new``), ``gelu_erf`` (HF's ``gelu``), ``relu``, ``relu2`` or ``silu``, no
  grouped-query attention. Without ``model.bias`` the HF biases are written as zeros, which
  computes the same function.
- ``rmsnorm`` -> ``LlamaForCausalLM``: pre-norm, RoPE, SwiGLU, GQA via
  ``num_key_value_heads``; ``model.bias`` maps to ``attention_bias`` + ``mlp_bias``;
- ``rmsnorm`` with ``model.qk_norm`` -> ``Qwen3ForCausalLM``: the same, plus Qwen3's
  ``q_norm``/``k_norm`` (RMSNorm over head_dim before RoPE, eps ``rms_norm_eps``); Qwen3's MLP
  has no biases, so ``model.bias`` must be false.

Anything else (post-norm, no norm, RoPE with LayerNorm, learned positions with RMSNorm, a
non-gated MLP for Llama, a baseline arch) raises :class:`LmlabError` naming the switch.
lmlab's RoPE already uses HF's rotate-half pairing, so q/k weights copy without permutation.
The names come from the table in :mod:`lmlab.export.names`, shared with GGUF export and
with import (:mod:`lmlab.export.hf_import`).

The folder is written with :func:`lmlab.outputs.atomic_dir`: it appears complete or not at all.
Nothing here imports transformers; loading the result needs it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lmlab.errors import LmlabError
from lmlab.export.names import GPT2_ACT, to_format
from lmlab.export.names import family as family_of
from lmlab.io import write_json
from lmlab.model.transformer import resolve_d_ff
from lmlab.outputs import atomic_dir, check_output
from lmlab.runs import load_model_for_inference


def hf_family(mcfg: Any) -> str:
    """``"gpt2"``, ``"llama"`` or ``"qwen3"`` for an exportable config; LmlabError naming the
    switch if not."""
    return family_of(mcfg, "hf")


def hf_config(mcfg: Any, family: str, eot_id: int | None) -> dict[str, Any]:
    """config.json for ``family`` (transformers fills every key not written here)."""
    common = {
        "vocab_size": mcfg.vocab_size,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "tie_word_embeddings": bool(mcfg.tie_embeddings),
        "initializer_range": mcfg.init_std,
        "use_cache": True,
        "dtype": "float32",
    }
    if family == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_positions": mcfg.context_length,
            "n_embd": mcfg.d_model,
            "n_layer": mcfg.n_layer,
            "n_head": mcfg.n_head,
            "n_inner": resolve_d_ff(mcfg),
            "activation_function": GPT2_ACT[mcfg.mlp],
            "layer_norm_epsilon": mcfg.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            **common,
        }
    llama_like = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": mcfg.d_model,
        "intermediate_size": resolve_d_ff(mcfg),
        "num_hidden_layers": mcfg.n_layer,
        "num_attention_heads": mcfg.n_head,
        "num_key_value_heads": mcfg.n_kv_head or mcfg.n_head,
        "head_dim": mcfg.d_model // mcfg.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": mcfg.context_length,
        "rms_norm_eps": mcfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": mcfg.rope_theta},
        "attention_bias": bool(mcfg.bias),
        "mlp_bias": bool(mcfg.bias),
        "attention_dropout": 0.0,
        **common,
    }
    if family == "qwen3":  # Llama's keys plus q/k norms (built in); its MLP has no bias switch
        del llama_like["mlp_bias"]
        return {
            **llama_like,
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "use_sliding_window": False,
        }
    return llama_like


def hf_state_dict(model: torch.nn.Module, family: str) -> dict[str, torch.Tensor]:
    """The model's weights under HF names (:mod:`lmlab.export.names`), fp32, contiguous, unshared."""
    sd = dict(model.state_dict())
    return to_format(sd, model.config, family, "hf")


# --- tokenizer files -------------------------------------------------------------------------


def _tokenizer_json(tokenizer: Any, scratch: Path) -> dict[str, Any]:
    """The tokenizer as HF ``tokenizers`` JSON, taken from what ``tokenizer.save`` writes."""
    kind = getattr(tokenizer, "kind", "?")
    if kind == "char":
        return _char_tokenizer_json(tokenizer)
    tokenizer.save(scratch)
    f = scratch / "tokenizer.json"
    if not f.is_file():
        raise LmlabError(
            f"tokenizer kind {kind!r}: it has no tokenizer.json, so AutoTokenizer could not load it"
        )
    return json.loads(f.read_text(encoding="utf-8"))


def _char_tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    """A char vocabulary as a WordLevel tokenizer that splits every character and joins
    them back without spaces. A character outside the vocabulary (lmlab raises) becomes the
    end-of-text token in HF, which has no way to refuse."""
    vocab = {c: i for i, c in enumerate(tokenizer.chars)}
    vocab.update(tokenizer.special_tokens)
    eot = next((t for t, i in tokenizer.special_tokens.items() if i == tokenizer.eot_id), None)
    if eot is None:
        raise LmlabError(
            "tokenizer kind 'char' without <|endoftext|>: HF needs it as the unknown token"
        )
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=eot))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens(list(tokenizer.special_tokens))
    return json.loads(hf.to_str())


def write_tokenizer_files(tokenizer: Any, out: Path, context_length: int) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json in ``out``."""
    with tempfile.TemporaryDirectory() as scratch:
        tj = _tokenizer_json(tokenizer, Path(scratch))
    specials = dict(getattr(tokenizer, "special_tokens", {}) or {})
    eot_id = getattr(tokenizer, "eot_id", None)
    # Every special token must be an added token so HF never splits it.
    added = {int(a["id"]) for a in tj.get("added_tokens", [])}
    for text, i in sorted(specials.items(), key=lambda kv: kv[1]):
        if int(i) not in added:
            tj.setdefault("added_tokens", []).append(
                {
                    "id": int(i),
                    "content": text,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
            )
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")

    eot_text = (
        next((t for t, i in specials.items() if i == eot_id), None) if eot_id is not None else None
    )
    special_map: dict[str, Any] = {}
    if eot_text is not None:
        special_map = {"bos_token": eot_text, "eos_token": eot_text, "unk_token": eot_text}
    others = [t for t in specials if t != eot_text]
    if others:
        special_map["additional_special_tokens"] = others
    write_json(out / "special_tokens_map.json", special_map)
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": context_length,
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
            **special_map,
        },
    )


# --- the whole folder ------------------------------------------------------------------------


def export_model(model: torch.nn.Module, tokenizer: Any, out: Path, source: str = "") -> Path:
    """Write ``model`` + ``tokenizer`` as an HF folder at ``out`` (atomically); return ``out``."""
    mcfg = model.config
    family = hf_family(mcfg)
    eot_id = getattr(tokenizer, "eot_id", None)
    out = Path(out)
    with atomic_dir(out, "export") as tmp:
        save_file(
            hf_state_dict(model, family), str(tmp / "model.safetensors"), metadata={"format": "pt"}
        )
        write_json(tmp / "config.json", hf_config(mcfg, family, eot_id))
        gen: dict[str, Any] = {"bos_token_id": eot_id, "eos_token_id": eot_id}
        if eot_id is not None:
            gen["pad_token_id"] = eot_id
        write_json(tmp / "generation_config.json", gen)
        write_tokenizer_files(tokenizer, tmp, mcfg.context_length)
        if source:
            write_json(tmp / "lmlab_export.json", {"source": source, "family": family})
    return out


def export_hf(run: str | Path, out: Path) -> Path:
    """`lmlab export RUN --format hf --out DIR`: load the run, check it, write the folder."""
    check_output(out, "export")
    model, _cfg, tokenizer = load_model_for_inference(run, device="cpu")
    hf_family(model.config)  # fail before any work on an inexpressible run
    return export_model(model, tokenizer, Path(out), source=str(Path(run).resolve()))
