"""``lmlab tokenizer stats``: compression (bytes per token) and encode speed on given files."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from lmlab.errors import DataError
from lmlab.io import expand_inputs
from lmlab.tokenizer.base import Tokenizer
from lmlab.tokenizer.corpus import Corpus

BATCH_BYTES = 32 << 20  # encode this much text per call, so memory stays bounded


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def tokenizer_stats(tok: Tokenizer, inputs: list[str] | str) -> dict[str, Any]:
    """Encode every UTF-8 file of ``inputs`` with the fast path (special tokens as plain text).

    Returns bytes, tokens, bytes per token, encode seconds and MB/s (1 MB = 1e6 bytes of UTF-8
    text; reading files is not timed), distinct ids used, and the files skipped as not UTF-8.
    """
    files = expand_inputs([inputs] if isinstance(inputs, str) else [str(i) for i in inputs])
    corpus = Corpus(files)
    n_bytes = n_tokens = 0
    used: set[int] = set()
    seconds = 0.0
    tok.encode_ordinary_batch(["warm-up: builds lazy encoders outside the timing"])
    for batch in _batches(corpus.texts()):
        t0 = time.perf_counter()
        ids = tok.encode_ordinary_batch(batch)
        seconds += time.perf_counter() - t0
        n_bytes += sum(len(t.encode("utf-8")) for t in batch)
        for row in ids:
            n_tokens += len(row)
            used.update(row)
    if n_bytes == 0:
        raise DataError(f"{' '.join(map(str, files))}: no text to measure (empty or not UTF-8)")
    return {
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "files": len(corpus.inputs),
        "skipped": corpus.skipped,
        "bytes": n_bytes,
        "tokens": n_tokens,
        "bytes_per_token": n_bytes / max(n_tokens, 1),
        "distinct_ids_used": len(used),
        "encode_seconds": seconds,
        "encode_mb_per_s": n_bytes / 1e6 / seconds if seconds > 0 else float("inf"),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A short human-readable table of :func:`tokenizer_stats`' result."""
    lines = [
        f"tokenizer        {stats['kind']}, vocab {stats['vocab_size']}",
        f"files            {stats['files']}"
        + (f" ({len(stats['skipped'])} skipped: not UTF-8)" if stats["skipped"] else ""),
        f"bytes            {stats['bytes']:,}",
        f"tokens           {stats['tokens']:,}",
        f"bytes/token      {stats['bytes_per_token']:.3f}",
        f"distinct ids     {stats['distinct_ids_used']:,} of {stats['vocab_size']:,}",
        f"encode speed     {stats['encode_mb_per_s']:.2f} MB/s ({stats['encode_seconds']:.3f} s)",
    ]
    for s in stats["skipped"]:
        lines.append(f"skipped          {s['path']}: {s['reason']}")
    return "\n".join(lines)
