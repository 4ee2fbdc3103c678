"""lmlab.model: the decoder-only transformer and the baselines, built from a ModelConfig.

``build_model(mcfg)`` dispatches on ``mcfg.arch``: ``transformer`` (see
:mod:`lmlab.model.transformer`) or a baseline from :mod:`lmlab.model.baselines`. Every model
is called as ``model(idx) -> logits`` with idx (B, T) int64 and logits (B, T, vocab_size), and
has ``.config`` and ``.num_params()``. Models with ``supports_kv_cache`` also take
``model(idx, kv_cache=model.new_kv_cache(...))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from lmlab.config import ModelConfig


def build_model(mcfg: ModelConfig) -> nn.Module:
    """A freshly initialised model for ``mcfg`` (on the CPU, float32; move it yourself)."""
    from lmlab.errors import ConfigError

    if mcfg.arch == "transformer":
        from lmlab.model.transformer import Transformer

        return Transformer(mcfg)
    from lmlab.model.baselines import BASELINES

    if mcfg.arch not in BASELINES:
        known = "transformer|" + "|".join(BASELINES)
        raise ConfigError(f"model.arch: expected one of {known}, got {mcfg.arch!r}")
    return BASELINES[mcfg.arch](mcfg)


__all__ = ["build_model"]
