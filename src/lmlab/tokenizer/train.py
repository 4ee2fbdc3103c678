"""``train_tokenizer``: corpus files in, a saved tokenizer folder out."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmlab.data.filters import FILTERS, CodeFilter, code_reject_reason
from lmlab.errors import DataError, LmlabError
from lmlab.io import expand_inputs
from lmlab.outputs import check_output
from lmlab.tokenizer.base import Tokenizer, check_special_tokens
from lmlab.tokenizer.bpe import BPETokenizer, check_bpe_vocab_size
from lmlab.tokenizer.char import CharTokenizer
from lmlab.tokenizer.corpus import Corpus
from lmlab.tokenizer.symbolic import check_symbolic_vocab_size, train_symbolic

KINDS = ("bpe", "char", "symbolic")


def train_bpe_hf(texts: Iterable[str], vocab_size: int, special_tokens: list[str]) -> str:
    """Train byte-level BPE with ``tokenizers`` (GPT-2 split pattern); returns tokenizer.json text.

    Deterministic: the trainer breaks count ties by pair ids, and the ids come from the sorted
    byte alphabet, so the same texts and settings give the same file.
    """
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return hf.to_str(pretty=True)


def train_tokenizer(
    inputs: list[str] | str,
    vocab_size: int,
    out: Path | str,
    kind: str = "bpe",
    special_tokens: Iterable[str] = (),
    exclude: Iterable[str] = (),
    filter: str = "none",
    code_filter: CodeFilter | None = None,
) -> Tokenizer:
    """Train a tokenizer of ``kind`` on the files/folders/globs ``inputs`` and save it to ``out``.

    bpe: ``vocab_size`` counts the 256 byte tokens, the merges and the special tokens (which take
    ids 0..k-1). char: the vocabulary is the corpus's characters plus the special tokens, and
    ``vocab_size`` is an upper bound. Files that are not UTF-8 are skipped with a warning and
    listed in meta.json; files matching an ``exclude`` glob are left out
    (:func:`lmlab.io.excluded`). ``filter="code"`` trains only on the files that `lmlab data
    prepare --filter code` keeps (``code_filter``'s thresholds, the defaults when None), so the
    merges fit the code the model will read; meta.json counts the files it left out by reason.
    The folder is written atomically.
    """
    specials = _checked_settings(kind, vocab_size, special_tokens, filter)
    check_output(out, "tokenizer")  # refuse before training, not after minutes of it
    suffixes = (".py",) if kind == "symbolic" else ()  # a folder gives its Python files only
    files = expand_inputs(
        [inputs] if isinstance(inputs, str | Path) else [str(i) for i in inputs],
        suffixes,
        tuple(exclude),
    )
    if not files:
        raise DataError(f"{' '.join(map(str, inputs))}: no input files found")
    cf = (code_filter or CodeFilter()) if filter == "code" else None
    corpus = _corpus(files, specials, cf)
    t0 = time.perf_counter()
    tok: Tokenizer
    if kind == "bpe":
        text = train_bpe_hf(corpus.segments(), vocab_size, specials)
        _check_nonempty(corpus, inputs)
        tok = BPETokenizer(text, where=str(Path(out) / "tokenizer.json"))
    elif kind == "symbolic":
        tok = train_symbolic(corpus.segments(), vocab_size, specials)
        _check_nonempty(corpus, inputs)
    else:
        chars: set[str] = set()
        for t in corpus.texts():
            chars.update(t)
        _check_nonempty(corpus, inputs)
        if len(chars) + len(specials) > vocab_size:
            raise LmlabError(
                f"vocab_size {vocab_size} is too small: the corpus has {len(chars)} distinct "
                f"characters plus {len(specials)} special tokens"
            )
        tok = CharTokenizer(sorted(chars), specials)
    tok.meta = {
        "inputs": corpus.inputs,
        "skipped": corpus.skipped,
        **({} if cf is None else {"filter": _filter_report(filter, cf, corpus)}),
        "requested_vocab_size": vocab_size,
        "train_seconds": round(time.perf_counter() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tok.save(out)
    return tok


def _checked_settings(
    kind: str, vocab_size: int, special_tokens: Iterable[str], filter: str
) -> list[str]:
    """The special tokens, checked, once kind, vocabulary size and filter are known good."""
    specials = check_special_tokens(special_tokens)
    if kind not in KINDS:
        raise LmlabError(f"tokenizer kind {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "bpe":
        check_bpe_vocab_size(vocab_size, len(specials))
    elif kind == "symbolic":
        check_symbolic_vocab_size(vocab_size, specials)
    elif vocab_size < 1 + len(specials):
        raise LmlabError(
            f"vocab_size {vocab_size} is too small for a char tokenizer with {len(specials)} special tokens"
        )
    if filter not in FILTERS:
        raise LmlabError(f"tokenizer filter {filter!r}: choose one of {', '.join(FILTERS)}")
    return specials


def _corpus(files: list[Path], specials: list[str], cf: CodeFilter | None) -> Corpus:
    """The training files, through the code filter ``cf`` (and its exact-copy check) if given."""
    if cf is None:
        return Corpus(files, specials)
    return Corpus(
        files,
        specials,
        reject=lambda text, data, path: code_reject_reason(text, data, path, cf),
        dedup=cf.dedup,
    )


def _filter_report(name: str, cf: CodeFilter, corpus: Corpus) -> dict[str, Any]:
    """meta.json's account of the filter: its thresholds and the files it left out, by reason."""
    return {"name": name, "thresholds": cf.to_dict(), "dropped": dict(corpus.filtered)}


def filter_summary(tok: Tokenizer) -> str:
    """One line on what the tokenizer's filter left out ("" when it trained unfiltered)."""
    f = getattr(tok, "meta", {}).get("filter")
    if not f:
        return ""
    dropped = ", ".join(f"{r} {n}" for r, n in sorted(f["dropped"].items())) or "nothing"
    return f"{f['name']} filter: kept {len(tok.meta['inputs'])} files, left out {dropped}"


def _check_nonempty(corpus: Corpus, inputs: object) -> None:
    if corpus.total_bytes == 0:
        why = f" ({len(corpus.skipped)} file(s) skipped as not UTF-8)" if corpus.skipped else ""
        if corpus.filtered:
            dropped = ", ".join(f"{n} {r}" for r, n in sorted(corpus.filtered.items()))
            why += f" (the filter left out {dropped})"
        raise DataError(f"empty corpus: {inputs} holds no text{why}")
