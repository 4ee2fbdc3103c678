"""lmlab.model: the decoder-only transformer and the baselines, built from a ModelConfig.

``build_model(mcfg)`` dispatches on ``mcfg.arch``: ``transformer`` (see
:mod:`lmlab.model.transformer`), a baseline from :mod:`lmlab.model.baselines`, or ``encdec``
(:mod:`lmlab.model.encdec`: a frozen pretrained encoder loaded from ``mcfg.encoder`` and a
trainable decoder). Every decoder-only model is called as ``model(idx) -> logits`` with idx
(B, T) int64 and logits (B, T, vocab_size), and has ``.config`` and ``.num_params()``. Models
with ``supports_kv_cache`` also take ``model(idx, kv_cache=model.new_kv_cache(...))`` and
``last_only=True`` (the last position's logits alone). The encoder-decoder is called as
``model(idx, enc_ids, enc_mask)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmlab.config import check_model
from lmlab.errors import ConfigError
from lmlab.model.baselines import BASELINES
from lmlab.model.encdec import EncoderDecoder, load_encoder
from lmlab.model.transformer import Transformer

if TYPE_CHECKING:
    import torch
    from torch import nn

    from lmlab.config import ModelConfig


def build_model(mcfg: ModelConfig) -> nn.Module:
    """A freshly initialised model for ``mcfg`` (on the CPU, float32; move it yourself).

    The one gate for a config that did not pass :meth:`lmlab.config.Config.validate` (tests, imports):
    the architecture rules are checked here, and the vocabulary must be known by now."""
    if mcfg.vocab_size <= 0:
        raise ConfigError(f"model.vocab_size: must be > 0 to build a model, got {mcfg.vocab_size}")
    check_model(mcfg)

    if mcfg.arch == "transformer":
        return Transformer(mcfg)
    if mcfg.arch == "encdec":
        return EncoderDecoder(mcfg, load_encoder(mcfg.encoder))

    if mcfg.arch not in BASELINES:
        known = "transformer|encdec|" + "|".join(BASELINES)
        raise ConfigError(f"model.arch: expected one of {known}, got {mcfg.arch!r}")
    return BASELINES[mcfg.arch](mcfg)


def forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Logits for a batch's inputs: token ids (B, T), or a dict of keyword inputs (encoder-decoder)."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


__all__ = ["build_model", "forward"]
