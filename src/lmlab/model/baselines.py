"""Baselines for the ladder from bigram to transformer, selected by ``model.arch``.

All are called like the transformer, ``model(idx) -> logits`` (B, T, vocab_size), trained
by the same loop, and share its pieces (attention, MLP, norms, init) so that the only thing
that changes between rungs is the architecture named here:

- ``bigram``: logits from the current token alone. A factorised bigram table
  ``tok_emb`` (V, d_model) -> ``head`` (V, d_model); with d_model >= V it can express any
  bigram table. ``tok_emb`` starts at normal(0, 1) (nothing rescales it before the head;
  at init_std both factors start near zero and the product learns very slowly). The head
  is never tied (``tie_embeddings`` is ignored): a tied one would
  force a symmetric table, logit(j | i) = e_i . e_j. Positions, norms and layers are ignored.
- ``bow``: causal bag of words. ``h = x + cummean(x)`` (the current token plus the mean of
  every token so far, itself included), then one pre-norm residual MLP and a final norm,
  then the head. No positions; ``n_layer``/``n_head``/``norm_position`` are ignored.
- ``one_head``: one single-head causal self-attention layer of width d_model (head size
  d_model; ``n_head``/``n_kv_head`` ignored) in a pre-norm residual, final norm, head. No MLP.
  Positions as configured.
- ``no_residual``: ``n_layer`` blocks of attention then MLP with no residual connections
  and no norms at all (``norm`` is ignored): ``x = mlp(attn(x))``. Positions as configured.
  With no norm to rescale activations its linear layers are initialised not to shrink
  them (:func:`lmlab.model.transformer.init_without_residuals`: embeddings normal(0, 1),
  linear layers normal(0, 1/sqrt(fan_in)), no residual scaling); attention's averaging
  still shrinks them block by block. An untied head keeps init_std. The same model is
  ``arch = "transformer"`` with ``residual = false`` and ``norm = "none"``.

Parameter names follow the transformer's (``tok_emb``, ``pos_emb``, ``attn.qkv``, ``mlp.fc``,
``norm1``, ``norm_f``, ``head``). Baselines have no KV cache (``supports_kv_cache = False``):
a sampler recomputes the whole window each step.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.model.transformer import (
    MLP,
    CausalSelfAttention,
    Rotary,
    init_weights,
    init_without_residuals,
    make_norm,
)


class _Baseline(nn.Module):
    """Shared plumbing: config, embeddings, optional positions, head, tying, init."""

    supports_kv_cache = False
    uses_positions = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = None
        self.rotary = None
        if self.uses_positions and cfg.position == "learned":
            self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def _finish(self, n_layer: int, tie: bool = True) -> None:
        if tie and self.config.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        init_weights(self, self.config, n_layer)

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)  # (B, T, d_model)
        if self.pos_emb is not None:
            T = idx.shape[1]
            if T > self.config.context_length:
                raise LmlabError(
                    f"sequence of {T} tokens > model.context_length={self.config.context_length} "
                    "(learned positions end there; crop the input)"
                )
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        return x

    def _rope(self, T: int):
        return self.rotary(0, T) if self.rotary is not None else None

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, kv_cache=None) -> torch.Tensor:
        if kv_cache is not None:
            raise LmlabError(
                f"model.arch={self.config.arch} has no KV cache; call model(idx) on the window"
            )
        return self._logits(idx)

    def _logits(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Bigram(_Baseline):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self._finish(1, tie=False)
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=1.0)

    def _logits(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.tok_emb(idx))  # (B, T, V)


class BagOfWords(_Baseline):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.norm1 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.norm_f = make_norm(cfg) if cfg.norm != "none" else None
        self._finish(1)

    def _logits(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)  # (B, T, d)
        counts = torch.arange(1, idx.shape[1] + 1, device=idx.device, dtype=x.dtype)[None, :, None]
        h = x + x.cumsum(dim=1) / counts  # (B, T, d): current token + mean of tokens 0..t
        h = h + self.mlp(self.norm1(h))
        if self.norm_f is not None:
            h = self.norm_f(h)
        return self.head(h)


class OneHead(_Baseline):
    uses_positions = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        if cfg.position == "rope":
            self.rotary = Rotary(cfg.d_model, cfg.context_length, cfg.rope_theta)
        self.norm1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, n_head=1, n_kv_head=1)
        self.norm_f = make_norm(cfg) if cfg.norm != "none" else None
        self._finish(1)

    def _logits(self, idx: torch.Tensor) -> torch.Tensor:
        x = self._embed(idx)
        x = x + self.attn(self.norm1(x), self._rope(idx.shape[1]))
        if self.norm_f is not None:
            x = self.norm_f(x)
        return self.head(x)


class _PlainBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        return self.mlp(self.attn(x, rope))


class NoResidual(_Baseline):
    uses_positions = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        if cfg.position == "rope":
            self.rotary = Rotary(cfg.d_model // cfg.n_head, cfg.context_length, cfg.rope_theta)
        self.blocks = nn.ModuleList(_PlainBlock(cfg) for _ in range(cfg.n_layer))
        self._finish(cfg.n_layer)
        init_without_residuals(self.blocks, [self.tok_emb, self.pos_emb])

    def _logits(self, idx: torch.Tensor) -> torch.Tensor:
        x = self._embed(idx)
        rope = self._rope(idx.shape[1])
        for block in self.blocks:
            x = block(x, rope)
        return self.head(x)


BASELINES: dict[str, type[_Baseline]] = {
    "bigram": Bigram,
    "bow": BagOfWords,
    "one_head": OneHead,
    "no_residual": NoResidual,
}

__all__ = ["BASELINES", "Bigram", "BagOfWords", "OneHead", "NoResidual"]
