"""Training the symbolic tokenizer: its fallback BPE, fitted to what the files make it spell."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from lmlab.errors import ConfigError
from lmlab.tokenizer.bytelevel import token_str_to_bytes
from lmlab.tokenizer.symbolic.abstract import (
    DEFAULT_MAX_SYMBOLS,
    DEFAULT_VOCAB_SIZE,
    MAX_VOCAB_SIZE,
    OVERFLOW,
    RAW,
    default_fixed_tokens,
)
from lmlab.tokenizer.symbolic.tokenizer import SymbolicTokenizer


def check_symbolic_vocab_size(
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    max_symbols: int = DEFAULT_MAX_SYMBOLS,
    keep_builtins: bool = True,
) -> SymbolicTokenizer:
    """The tokenizer without merges; ConfigError if ``vocab_size`` cannot even hold that,
    or is above :data:`MAX_VOCAB_SIZE`."""
    if vocab_size > MAX_VOCAB_SIZE:
        raise ConfigError(
            f"vocab_size: {vocab_size} is above the symbolic tokenizer's maximum of {MAX_VOCAB_SIZE}"
        )
    base = SymbolicTokenizer(
        (),
        max_symbols=max_symbols,
        fixed_tokens=default_fixed_tokens(keep_builtins),
        special_tokens=special_tokens,
    )
    if vocab_size < base.vocab_size:
        raise ConfigError(
            f"vocab_size: {vocab_size} is too small for the symbolic tokenizer: its fixed tokens, "
            f"{max_symbols} symbol indices and 256 bytes already take {base.vocab_size}"
        )
    return base


def train_symbolic(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    special_tokens: Sequence[str] = (),
    max_symbols: int = DEFAULT_MAX_SYMBOLS,
    keep_builtins: bool = True,
) -> SymbolicTokenizer:
    """Fit the fallback BPE so the whole vocabulary is at most ``vocab_size``.

    The BPE learns from what the files make it spell (numbers, overflowing names, raw
    items) plus each file's distinct abstracted names once, so overflow in bigger files
    than the training ones is spelled compactly too.
    """
    base = check_symbolic_vocab_size(vocab_size, special_tokens, max_symbols, keep_builtins)
    n_merges = vocab_size - base.vocab_size
    words: Counter[str] = Counter()
    for code in texts:
        tokens, table = base.abstract(code)
        spelled_next = False
        for tok in tokens:
            if spelled_next or tok not in base._id:
                words[tok] += 1
            spelled_next = tok in (OVERFLOW, RAW)
        words.update(table.names)
    merges = _train_merges(words, n_merges) if n_merges else []
    return SymbolicTokenizer(
        merges,
        max_symbols=max_symbols,
        fixed_tokens=base.fixed_tokens,
        special_tokens=special_tokens,
    )


def _train_merges(words: Counter[str], n_merges: int) -> list[tuple[bytes, bytes]]:
    """Byte-level BPE merges over whole words, trained with Hugging Face ``tokenizers``."""
    if not words:
        return []
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=256 + n_merges,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator((w for w, c in words.items() for _ in range(c)), trainer)
    raw = json.loads(hf.to_str())["model"]["merges"]
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in raw]
    return [(token_str_to_bytes(a), token_str_to_bytes(b)) for a, b in pairs][:n_merges]
