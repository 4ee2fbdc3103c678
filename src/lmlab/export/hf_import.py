"""Hugging Face models in: ``train.init_from = "hf:PATH_OR_NAME"``.

1. ``PATH_OR_NAME`` is a local folder holding a ``GPT2LMHeadModel`` or ``LlamaForCausalLM``
   (``config.json``, ``model.safetensors`` or its sharded index, a byte-level BPE tokenizer); a
   name that is no local folder is fetched from the hub with ``huggingface_hub`` when online
   (offline: one line saying so).
2. ``config.json`` becomes lmlab's ``[model]`` (:func:`model_fields`); anything lmlab's
   transformer cannot compute exactly (another architecture, rope scaling, exact-erf GELU,
   different attention/MLP bias switches, a non-byte-level tokenizer, ...) is refused with
   one line naming the key.
3. The weights map back through the table export uses (:mod:`lmlab.export.names`), so
   ``export(import(x))`` gives back x's tensors. Only safetensors are read (a
   ``pytorch_model.bin`` would run pickled code).

Nothing here imports transformers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lmlab.config import ModelConfig
from lmlab.errors import CheckpointError, ConfigError, LmlabError
from lmlab.export.names import from_format, known_names
from lmlab.model import build_model
from lmlab.tokenizer import load_tokenizer

PREFIX = "hf:"
GPT2_ACTS = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "gelu": "gelu_erf",  # transformers' "gelu" is the exact erf form
    "relu": "relu",
    "relu2": "relu2",
    "silu": "silu",
    "swish": "silu",
}
_IGNORED = re.compile(
    r"(\.attn\.bias|\.attn\.masked_bias|\.rotary_emb\.inv_freq)$"
)  # buffers, not weights


def is_hf_source(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def _offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_folder(spec: str) -> Path:
    """The local folder ``hf:PATH_OR_NAME`` names (downloading a hub model when online)."""
    name = spec[len(PREFIX) :] if is_hf_source(spec) else spec
    p = Path(name).expanduser()
    if p.is_dir():
        return p.resolve()
    if p.exists():
        raise CheckpointError(f"train.init_from={spec}: {p} is not a folder")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise CheckpointError(f"train.init_from={spec}: no such folder")
    if _offline():
        raise CheckpointError(
            f"train.init_from={spec}: no such local folder, and the hub is offline "
            "(HF_HUB_OFFLINE); name a local model folder"
        )
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415 (optional: comes with lmlab[hf])
    except ImportError:
        raise CheckpointError(
            f"train.init_from={spec}: no such local folder (a hub name needs "
            "huggingface_hub: pip install lmlab[hf])"
        ) from None
    try:
        got = snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except Exception as e:  # offline, unknown repo, gated: the hub raises many kinds
        raise CheckpointError(
            f"train.init_from={spec}: no such local folder, and the hub did not give it "
            f"({type(e).__name__}); offline? name a local model folder"
        ) from None
    return Path(got)


def _gpt2_fields(hf: dict[str, Any], where: str, archs: list[str]) -> dict[str, Any]:
    """GPT2LMHeadModel: learned positions, LayerNorm, a gelu/relu/silu MLP, biases."""
    if archs and archs[0] != "GPT2LMHeadModel":
        raise ConfigError(
            f"{where}: architectures={archs[0]}: lmlab imports GPT2LMHeadModel and LlamaForCausalLM"
        )
    act = hf.get("activation_function", "gelu_new")
    if act not in GPT2_ACTS:
        raise ConfigError(
            f"{where}: activation_function={act}: lmlab's MLPs are gelu (tanh), gelu (erf), relu or silu"
        )
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise ConfigError(
            f"{where}: scale_attn_by_inverse_layer_idx=true: lmlab scales attention by 1/sqrt(head_dim) only"
        )
    if hf.get("scale_attn_weights", True) is False:
        raise ConfigError(
            f"{where}: scale_attn_weights=false: lmlab always scales attention by 1/sqrt(head_dim)"
        )
    if hf.get("add_cross_attention"):
        raise ConfigError(f"{where}: add_cross_attention=true: not a decoder-only model")
    d = int(hf["n_embd"])
    return {
        "arch": "transformer",
        "vocab_size": int(hf["vocab_size"]),
        "n_layer": int(hf["n_layer"]),
        "n_head": int(hf["n_head"]),
        "n_kv_head": 0,
        "d_model": d,
        "d_ff": int(hf.get("n_inner") or 4 * d),
        "context_length": int(hf.get("n_positions") or hf.get("n_ctx")),
        "norm": "layernorm",
        "norm_position": "pre",
        "norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
        "position": "learned",
        "mlp": GPT2_ACTS[act],
        "bias": True,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


_HF_CLASS = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _llama_fields(
    hf: dict[str, Any], where: str, archs: list[str], fam: str = "llama"
) -> dict[str, Any]:
    """LlamaForCausalLM: RoPE (no scaling), RMSNorm, SwiGLU, grouped heads; Qwen3ForCausalLM
    (``fam="qwen3"``): the same with q/k norms and no MLP biases."""
    if archs and archs[0] != _HF_CLASS[fam]:
        raise ConfigError(
            f"{where}: architectures={archs[0]}: lmlab imports GPT2LMHeadModel, "
            "LlamaForCausalLM and Qwen3ForCausalLM"
        )
    if fam == "qwen3" and hf.get("use_sliding_window"):
        raise ConfigError(
            f"{where}: use_sliding_window=true: lmlab's attention sees the whole context"
        )
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act={act}: lmlab's SwiGLU gates with silu")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise ConfigError(f"{where}: rope scaling {rope_type!r}: lmlab's RoPE has no scaling")
    theta = float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    H, d = int(hf["num_attention_heads"]), int(hf["hidden_size"])
    if hf.get("head_dim") not in (None, d // H):
        raise ConfigError(
            f"{where}: head_dim={hf['head_dim']}: lmlab's head size is hidden_size/num_attention_heads = {d // H}"
        )
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if fam == "qwen3" and attn_bias:
        raise ConfigError(
            f"{where}: attention_bias=true: Qwen3's MLP has none, and lmlab's model.bias "
            "switches both"
        )
    if attn_bias != mlp_bias:
        raise ConfigError(
            f"{where}: attention_bias={attn_bias} with mlp_bias={mlp_bias}: lmlab's model.bias "
            "switches both"
        )
    return {
        "arch": "transformer",
        "vocab_size": int(hf["vocab_size"]),
        "n_layer": int(hf["num_hidden_layers"]),
        "n_head": H,
        "n_kv_head": int(hf.get("num_key_value_heads") or H),
        "d_model": d,
        "d_ff": int(hf["intermediate_size"]),
        "context_length": int(hf["max_position_embeddings"]),
        "norm": "rmsnorm",
        "norm_position": "pre",
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "position": "rope",
        "rope_theta": theta,
        "mlp": "swiglu",
        "qk_norm": fam == "qwen3",
        "bias": attn_bias,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }


def model_fields(hf: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """(family, lmlab ModelConfig fields) for a transformers config.json; LmlabError naming the key."""
    mtype = hf.get("model_type")
    archs = hf.get("architectures") or []
    if mtype == "gpt2":
        return "gpt2", _gpt2_fields(hf, where, archs)
    if mtype in ("llama", "qwen3"):
        return mtype, _llama_fields(hf, where, archs, mtype)
    raise ConfigError(
        f"{where}: model_type={mtype}: lmlab imports GPT2LMHeadModel (gpt2), LlamaForCausalLM "
        "(llama) and Qwen3ForCausalLM (qwen3)"
    )


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors`` (or of the shards its index names)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        files = [folder / f for f in sorted(set(weight_map.values()))]
    else:
        bins = [p.name for p in folder.glob("*.bin")]
        raise CheckpointError(
            f"{folder}: no model.safetensors"
            + (
                f" ({bins[0]} is a pickle, which lmlab does not "
                "load: save the model with safe_serialization=True)"
                if bins
                else ""
            )
        )
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except Exception as e:  # safetensors' own error types for truncated or bad headers
            raise CheckpointError(f"{f}: cannot read weights ({type(e).__name__}: {e})") from None
    return out


@dataclass
class HFModel:
    """A transformers folder read for lmlab: its family, [model] fields and tokenizer."""

    folder: Path
    family: str
    fields: dict[str, Any]
    tokenizer: Any
    _state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def state_dict(self, mcfg: Any, wanted: set[str]) -> dict[str, torch.Tensor]:
        """The weights under lmlab's names for ``wanted`` parameters (read on first use)."""
        where = str(self.folder)
        tensors = {k: v for k, v in read_safetensors(self.folder).items() if not _IGNORED.search(k)}
        if (
            self.family == "gpt2"
            and "transformer.wte.weight" not in tensors
            and "wte.weight" in tensors
        ):
            tensors = {
                (k if k.startswith("lm_head.") else "transformer." + k): v
                for k, v in tensors.items()
            }
        if mcfg.tie_embeddings and "lm_head.weight" in tensors:
            emb = "transformer.wte.weight" if self.family == "gpt2" else "model.embed_tokens.weight"
            if emb in tensors and not torch.equal(tensors.pop("lm_head.weight"), tensors[emb]):
                raise CheckpointError(
                    f"{where}: tie_word_embeddings is true but lm_head.weight differs from {emb}"
                )
        unknown = sorted(set(tensors) - known_names(mcfg, self.family, "hf"))
        if unknown:
            raise CheckpointError(
                f"{where}: tensor {unknown[0]} has no place in lmlab's {self.family} model"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            )
        want = set(wanted) - ({"head.weight"} if mcfg.tie_embeddings else set())
        sd = from_format(tensors, mcfg, self.family, "hf", want, where)
        if mcfg.tie_embeddings:
            sd["head.weight"] = sd["tok_emb.weight"]
        return sd


def read_hf_model(spec: str) -> HFModel:
    """Config and tokenizer of ``hf:PATH_OR_NAME`` (weights are read by ``state_dict``)."""
    folder = resolve_folder(spec)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{folder}: no config.json (not a transformers model folder)")
    try:
        hf = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    fam, fields = model_fields(hf, str(cfg_file))
    try:
        tok = load_tokenizer(folder)
    except LmlabError as e:
        raise CheckpointError(f"{folder}: no usable tokenizer ({e})") from None
    if tok.kind != "bpe":
        raise CheckpointError(
            f"{folder}: its tokenizer is not byte-level BPE (lmlab kind {tok.kind!r}); "
            "lmlab starts from byte-level BPE models only"
        )
    if tok.vocab_size > fields["vocab_size"]:
        raise CheckpointError(
            f"{folder}: the tokenizer has {tok.vocab_size} ids, config.json vocab_size "
            f"{fields['vocab_size']}"
        )
    return HFModel(folder, fam, fields, tok)


def apply_model_fields(mcfg: Any, hfm: HFModel) -> list[str]:
    """Set ``mcfg``'s architecture from the HF model (in place; dropout and init_std stay the
    config's); return ``model.key: config X, hf Y`` for each value that changed."""
    changed = []
    for k, v in hfm.fields.items():
        if getattr(mcfg, k) != v:
            changed.append(f"model.{k}: config {getattr(mcfg, k)!r}, hf {v!r}")
            setattr(mcfg, k, v)
    return changed


def load_hf_model(spec: str, mcfg: Any = None) -> tuple[torch.nn.Module, Any, Any]:
    """``(model, ModelConfig, tokenizer)`` for ``hf:PATH_OR_NAME``, eval mode, on the CPU."""
    hfm = read_hf_model(spec)
    mcfg = mcfg if mcfg is not None else ModelConfig()
    apply_model_fields(mcfg, hfm)
    model = build_model(mcfg)
    load_into(model, hfm)
    return model.eval(), mcfg, hfm.tokenizer


def start_from_hf(cfg: Any, meta: dict[str, Any]) -> tuple[HFModel, list[str]]:
    """For the training loop: read ``train.init_from``'s HF model, make its config the run's
    ``[model]`` (dropout kept), check the dataset was tokenized with its tokenizer, and name
    that tokenizer as the run's. Returns the model (weights unread) and what changed."""
    hfm = read_hf_model(cfg.train.init_from)
    cfg.train.init_from = PREFIX + str(hfm.folder)  # the folder actually used, in config.toml
    changed = apply_model_fields(cfg.model, hfm)
    fp = meta.get("tokenizer_fingerprint")
    if fp and fp != hfm.tokenizer.fingerprint():
        raise ConfigError(
            f"data.path: tokenized with another tokenizer than {hfm.folder}'s; prepare it with "
            f"`lmlab data prepare --tokenizer {hfm.folder} ...`"
        )
    if not cfg.data.tokenizer:
        cfg.data.tokenizer = str(hfm.folder)
    return hfm, changed


def load_into(model: torch.nn.Module, hfm: HFModel) -> None:
    """Copy the HF weights into an lmlab model built from ``hfm.fields``."""
    sd = hfm.state_dict(model.config, set(model.state_dict()))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{hfm.folder}: weights do not fit (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
