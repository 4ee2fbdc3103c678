"""The worker side of `lmlab data prepare`: one piece of input in, its documents filtered and
tokenized out (:class:`PieceResult`), in input order for any number of worker processes.

Workers are ``spawn``ed processes that load the tokenizer once (:func:`init_worker`); with one
worker everything runs in this process. :func:`prefix_length` and :func:`first_documents` cut
a result to the ``max_docs`` / ``max_bytes`` prefix of the input.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmlab.data.filters import REASONS, CodeFilter, code_reject_reason, digest
from lmlab.data.shards import dtype_for_vocab
from lmlab.data.sources import Piece, SourceSettings, entry_documents
from lmlab.errors import DataError, LmlabError
from lmlab.tokenizer import load_tokenizer

MAX_EXAMPLES = 5  # dropped documents named per reason in meta.json


@dataclass
class PieceResult:
    """What a worker sends back for one piece (kept documents only carry tokens)."""

    tokens: np.ndarray  # kept documents, each followed by eot
    lengths: list[int]  # tokens per kept document, eot included
    nbytes: list[int]  # UTF-8 bytes per kept document
    digests: bytes  # 16 bytes per kept document
    documents: int = 0  # documents seen (before filtering)
    dropped: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, detail)
    input_bytes: int = 0
    examples: dict[str, list[tuple[int, str]]] = field(
        default_factory=dict
    )  # reason -> first (doc index, path)
    # per document seen, in order (for prefix limits): UTF-8 bytes, and 0 if kept else 1 + REASONS index
    seen_bytes: list[int] = field(default_factory=list)
    seen_status: bytes = b""
    skipped_at: list[int] = field(default_factory=list)  # documents seen before each skipped file


_STATE: dict[str, Any] = {}
_STATUS = {
    r: i + 1 for i, r in enumerate(REASONS)
}  # a dropped document's code in PieceResult.seen_status


def init_worker(
    tokenizer_path: str, settings: SourceSettings, code_filter: CodeFilter | None, tok: Any = None
) -> None:
    """Load the tokenizer once per process (``tok`` reuses one already loaded in-process)."""
    if tok is None:
        tok = load_tokenizer(tokenizer_path)
    _STATE.update(
        tok=tok,
        settings=settings,
        code_filter=code_filter,
        eot=tok.eot_id,
        dtype=dtype_for_vocab(tok.vocab_size),
    )


def process_piece(piece: Piece) -> PieceResult:
    settings: SourceSettings = _STATE["settings"]
    code_filter: CodeFilter | None = _STATE["code_filter"]
    texts: list[str] = []
    paths: list[str] = []  # each kept document's file, to name it if it cannot be encoded
    nbytes: list[int] = []
    digests: list[bytes] = []
    dropped: Counter = Counter()
    skipped: list[tuple[str, str, str]] = []
    skipped_at: list[int] = []
    examples: dict[str, list[tuple[int, str]]] = {}
    seen_bytes: list[int] = []
    status = bytearray()
    seen = 0
    for entry in piece.entries:
        docs, skip = entry_documents(entry, settings)
        if skip is not None:
            skipped.append((entry[1], "undecodable", skip))
            skipped_at.append(seen)
            continue
        path = entry[1]
        for doc in docs:
            seen += 1
            if not doc or doc.isspace():
                dropped["empty"] += 1
                seen_bytes.append(len(doc.encode("utf-8", "replace")) if doc else 0)
                status.append(_STATUS["empty"])
                continue
            try:
                data = doc.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates from JSON escapes
                doc = doc.encode("utf-8", "replace").decode("utf-8")
                data = doc.encode("utf-8")
            seen_bytes.append(len(data))
            if code_filter is not None:
                reason = code_reject_reason(doc, data, path, code_filter)
                if reason is not None:
                    dropped[reason] += 1
                    status.append(_STATUS[reason])
                    ex = examples.setdefault(reason, [])
                    if len(ex) < MAX_EXAMPLES:
                        ex.append((seen - 1, path))
                    continue
            status.append(0)
            texts.append(doc)
            paths.append(path)
            nbytes.append(len(data))
            digests.append(digest(data))
    # One document at a time: the process is the unit of parallelism, and the batch call's
    # thread pool only adds contention inside a worker (measured: ~35% more CPU per MB).
    encode = _STATE["tok"].encode_ordinary
    ids = [encode_document(encode, t, p, settings.errors) for t, p in zip(texts, paths)]
    lengths = [len(x) + 1 for x in ids]
    tokens = np.empty(sum(lengths), dtype=_STATE["dtype"])
    pos = 0
    eot = _STATE["eot"]
    for x in ids:
        n = len(x)
        tokens[pos : pos + n] = x
        tokens[pos + n] = eot
        pos += n + 1
    return PieceResult(
        tokens,
        lengths,
        nbytes,
        b"".join(digests),
        seen,
        dropped,
        skipped,
        piece.nbytes,
        examples,
        seen_bytes,
        bytes(status),
        skipped_at,
    )


def encode_document(
    encode: Callable[[str], list[int]], text: str, path: str, errors: str
) -> list[int]:
    """``encode(text)``; a character the tokenizer cannot encode (char-level) names the file."""
    try:
        return encode(text)
    except LmlabError as e:
        hint = ""
        if errors == "replace" and "\ufffd" in text:
            hint = " (--errors replace put U+FFFD for its undecodable bytes; use --errors skip)"
        raise DataError(f"{path}: {e}{hint}") from None


def run_pieces(pieces: Iterator[Piece], workers: int, init_args: tuple) -> Iterator[PieceResult]:
    """Results in piece order; with workers > 1 at most 2 * workers pieces are in flight."""
    if workers <= 1:
        init_worker(*init_args)
        try:
            for piece in pieces:
                yield process_piece(piece)
        finally:
            _STATE.clear()
        return
    # spawn: safe whatever the parent has loaded (threads in torch, tokenizers, tiktoken)
    ctx = mp.get_context("spawn")
    ex = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=init_worker, initargs=init_args[:3]
    )
    in_flight: deque = deque()
    try:
        for piece in pieces:
            in_flight.append(ex.submit(process_piece, piece))
            if len(in_flight) >= 2 * workers:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        for f in in_flight:
            f.cancel()
        ex.shutdown(wait=True, cancel_futures=True)


def prefix_length(
    res: PieceResult, docs_left: int | None, bytes_left: int | None
) -> tuple[int, str | None]:
    """How many of the result's documents fit the limits left, and the limit that cut it (None: all fit)."""
    k, why = res.documents, None
    if docs_left is not None and docs_left < k:
        k, why = docs_left, "max_docs"
    if bytes_left is not None and res.seen_bytes:
        fit = int(np.searchsorted(np.cumsum(res.seen_bytes), bytes_left, side="right"))
        if fit < k:
            k, why = fit, "max_bytes"
    return k, why


def first_documents(res: PieceResult, k: int) -> PieceResult:
    """The result cut to its first ``k`` documents seen (kept or dropped), as if the piece ended there."""
    status = res.seen_status[:k]
    kept = k - sum(1 for c in status if c)  # kept documents come first-to-last in seen order
    ntok = sum(res.lengths[:kept])
    reasons = {code: r for r, code in _STATUS.items()}
    return PieceResult(
        res.tokens[:ntok],
        res.lengths[:kept],
        res.nbytes[:kept],
        res.digests[: 16 * kept],
        k,
        Counter(reasons[c] for c in status if c),
        [s for s, at in zip(res.skipped, res.skipped_at) if at < k],
        sum(res.seen_bytes[:k]),
        {r: [x for x in ex if x[0] < k] for r, ex in res.examples.items()},
        res.seen_bytes[:k],
        status,
        [at for at in res.skipped_at if at < k],
    )
