"""Encoder-decoder: a frozen pretrained encoder feeds a trainable lmlab decoder by cross-attention.

Architecture:

- encoder: any Hugging Face ``AutoModel`` with ``last_hidden_state`` (ModernBERT by default),
  loaded from a local folder or, when online, a hub name. It reads the source (prompt or
  context) with its own tokenizer. It is frozen: ``requires_grad=False``, always in eval mode
  (``train()`` on the wrapper leaves it alone), run under ``torch.no_grad()``; the optimizer is
  built over the decoder alone, and checkpoints hold only the decoder;
- ``enc_proj``: a linear map from the encoder width to the decoder's ``d_model``;
- decoder: ``n_layer`` blocks of causal self-attention, cross-attention over the projected
  encoder states (padding masked out), and an MLP, each a pre- or post-norm residual sublayer.
  Self-attention, MLP, norms, RoPE and the init are :mod:`lmlab.model.transformer`'s own
  pieces; only :class:`CrossAttention` and :class:`DecoderBlock` are new. The decoder writes
  with lmlab's tokenizer (symbolic or BPE), starting from ``<|endoftext|>``.

Shapes: ``model(idx, enc_ids, enc_mask) -> logits`` with idx (B, T), enc_ids/enc_mask (B, S),
logits (B, T, vocab_size).

Training is :func:`lmlab.train.encdec.run_encdec`, through the shared training loop (the model
never imports the trainer). ``state_dict()`` leaves the encoder out, so checkpoints hold the
decoder alone and the encoder is reloaded from ``model.encoder``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from lmlab.config import ModelConfig
from lmlab.errors import ConfigError, LmlabError
from lmlab.model.transformer import Block, Transformer, init_weights, make_norm

DEFAULT_ENCODER = "answerdotai/ModernBERT-base"


# --- the encoder -------------------------------------------------------------------------------


def _from_pretrained(cls_name: str, name_or_path: str) -> Any:
    """``transformers.<cls_name>.from_pretrained``: local folders only when offline; errors name the source."""
    try:
        import transformers  # noqa: PLC0415 (optional extra: lmlab[hf])
    except ImportError:
        raise LmlabError("model.arch=encdec needs transformers (pip install 'lmlab[hf]')") from None
    local = Path(name_or_path).exists()
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no")
    kw: dict[str, Any] = {"local_files_only": local or offline}
    if cls_name != "AutoTokenizer":  # weights: safetensors only, never unpickle (it can run code)
        kw["use_safetensors"] = True
        if local:
            _check_safetensors(Path(name_or_path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(transformers, cls_name).from_pretrained(name_or_path, **kw)
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        where = (
            "local folder" if local else "hub name (not a local folder; offline, or no such model?)"
        )
        raise LmlabError(
            f"model.encoder: cannot load {name_or_path!r} as a {where}: {str(e).splitlines()[0]}"
        ) from None


def _check_safetensors(folder: Path) -> None:
    """A local encoder folder must hold safetensors weights; a pickle (.bin, .pt) is refused by name."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p for ext in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in folder.glob(ext))
    if pickles:
        raise LmlabError(
            f"model.encoder: {pickles[0]}: pickled weights are not loaded (unpickling can run code); "
            "save the encoder with safetensors (model.save_pretrained(folder) does by default)"
        )


def load_encoder(name_or_path: str = DEFAULT_ENCODER) -> nn.Module:
    """The encoder (``AutoModel``) from a local folder, or a hub name when online."""
    return _from_pretrained("AutoModel", name_or_path)


def load_encoder_tokenizer(name_or_path: str = DEFAULT_ENCODER) -> Any:
    """The encoder's own tokenizer (``AutoTokenizer``), from the same place as the encoder."""
    return _from_pretrained("AutoTokenizer", name_or_path)


def _width(encoder: nn.Module) -> int:
    cfg = getattr(encoder, "config", None)
    width = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
    if not width:
        raise ConfigError("encoder: its config names no hidden_size")
    return int(width)


# --- the decoder -------------------------------------------------------------------------------


class CrossAttention(nn.Module):
    """Decoder queries attend over encoder states (no causal mask; padded positions masked)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.dropout = cfg.dropout
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=cfg.bias)  # rows [k | v]
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.is_residual_out = True
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, mem_mask: torch.Tensor | None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        S = memory.shape[1]
        H, hd = self.n_head, self.head_dim
        q = self.q(x).view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k, v = self.kv(memory).view(B, S, 2, H, hd).unbind(2)  # (B, S, H, hd) each
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, H, S, hd)
        mask = mem_mask[:, None, None, :].bool() if mem_mask is not None else None  # (B, 1, 1, S)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(B, T, H * hd)  # (B, T, d_model)
        return self.resid_drop(self.proj(y))


class DecoderBlock(Block):
    """A decoder-only :class:`~lmlab.model.transformer.Block` (causal self-attention, MLP) with
    cross-attention between the two; each a residual sublayer (pre or post norm)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.norm_x = make_norm(cfg)
        self.cross = CrossAttention(cfg)

    def forward(self, x, memory, mem_mask, rope=None) -> torch.Tensor:
        if self.post_norm:
            x = self.norm1(x + self.attn(x, rope))
            x = self.norm_x(x + self.cross(x, memory, mem_mask))
            return self.norm2(x + self.mlp(x))
        x = x + self.attn(self.norm1(x), rope)
        x = x + self.cross(self.norm_x(x), memory, mem_mask)
        return x + self.mlp(self.norm2(x))


class Decoder(Transformer):
    """The trainable part: the decoder-only model's embeddings, blocks (with cross-attention),
    final norm and head, plus ``enc_proj`` from the encoder's width to ``d_model``."""

    supports_kv_cache = False
    supports_fused_loss = False
    block_cls = DecoderBlock

    def __init__(self, cfg: ModelConfig, enc_dim: int):
        super().__init__(cfg)
        self.enc_proj = nn.Linear(enc_dim, cfg.d_model, bias=cfg.bias)
        init_weights(self.enc_proj, cfg, cfg.n_layer)

    def forward(
        self, idx: torch.Tensor, enc_states: torch.Tensor, enc_mask: torch.Tensor | None
    ) -> torch.Tensor:
        B, T = idx.shape
        if T > self.config.context_length and self.pos_emb is not None:
            raise LmlabError(
                f"decoder input of {T} tokens exceeds model.context_length={self.config.context_length}"
            )
        x = self.tok_emb(idx)  # (B, T, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        x = self.drop(x)
        rope = self.rotary(0, T) if self.rotary is not None else None
        memory = self.enc_proj(enc_states.to(x.dtype))  # (B, S, d)
        for block in self.blocks:
            x = block(x, memory, enc_mask, rope)
        if self.norm_f is not None:
            x = self.norm_f(x)
        return self.head(x)  # (B, T, vocab_size)


class EncoderDecoder(nn.Module):
    """A frozen encoder and a trainable :class:`Decoder`; ``model(idx, enc_ids, enc_mask)``."""

    def __init__(self, cfg: ModelConfig, encoder: nn.Module):
        super().__init__()
        self.config = cfg
        self.encoder = encoder
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.decoder = Decoder(cfg, _width(encoder))

    def train(self, mode: bool = True) -> EncoderDecoder:
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout, whatever the wrapper's mode
        return self

    # Checkpoints hold the decoder alone: the frozen encoder is reloaded from model.encoder.
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        sd = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in [k for k in sd if k.startswith(prefix + "encoder.")]:
            del sd[key]
        return sd

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("encoder.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"EncoderDecoder: missing keys {missing[:5]}, unexpected keys {result.unexpected_keys[:5]}"
            )
        return _IncompatibleKeys(missing, result.unexpected_keys)

    @torch.no_grad()
    def encode(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder states (B, S, enc_dim), float32, never tracked by autograd."""
        out = self.encoder(input_ids=enc_ids, attention_mask=enc_mask)
        return out.last_hidden_state.float()

    def forward(
        self,
        idx: torch.Tensor,
        enc_ids: torch.Tensor,
        enc_mask: torch.Tensor | None = None,
        enc_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if enc_states is None:
            enc_states = self.encode(enc_ids, enc_mask)
        return self.decoder(idx, enc_states, enc_mask)

    def num_params(self, trainable_only: bool = True) -> int:
        params = self.decoder.parameters() if trainable_only else self.parameters()
        return sum(p.numel() for p in {id(p): p for p in params}.values())

    @torch.no_grad()
    def generate(
        self,
        enc_ids: torch.Tensor,
        enc_mask: torch.Tensor | None,
        start_id: int,
        max_new_tokens: int,
        stop_id: int | None = None,
    ) -> list[list[int]]:
        """Greedy decoding (no cache: the decoder is small); each row ends before ``stop_id``."""
        was = self.training
        self.eval()
        states = self.encode(enc_ids, enc_mask)
        B = enc_ids.shape[0]
        idx = torch.full((B, 1), start_id, dtype=torch.long, device=enc_ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=enc_ids.device)
        ctx = self.config.context_length
        for _ in range(max_new_tokens):
            logits = self.decoder(idx[:, -ctx:], states, enc_mask)[:, -1, :]
            nxt = logits.argmax(-1)
            idx = torch.cat([idx, nxt[:, None]], dim=1)
            if stop_id is not None:
                done |= nxt == stop_id
                if bool(done.all()):
                    break
        self.train(was)
        rows = []
        for row in idx[:, 1:].tolist():
            rows.append(
                row[: row.index(stop_id)] if stop_id is not None and stop_id in row else row
            )
        return rows
