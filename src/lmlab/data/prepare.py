"""`lmlab data prepare`: filter, tokenize and pack documents into train/val token shards.

Procedure:
1. Expand the inputs (files, folders, globs; with ``--filter code`` a folder gives its
   ``.py`` files; datasets, ``hf:NAME[:CONFIG][#SPLIT]`` or a ``save_to_disk`` folder, stay
   streams: :mod:`lmlab.data.streams`) and load the tokenizer, which must have an end-of-text
   token.
2. The main process reads the inputs in order and cuts them into pieces of ~512 KiB
   (:mod:`lmlab.data.sources`); at most ``2 * workers`` pieces are in flight, so memory stays
   flat in corpus size, and a stream is never held whole.
3. Each worker process (``spawn``; it loads the tokenizer once) decodes its piece, applies
   the filter (:mod:`lmlab.data.filters`) and tokenizes the surviving documents, each
   followed by the eot token.
4. The main process takes results back in input order, drops exact duplicates (code
   filter), assigns each document to train or val by a hash of (seed, content) and appends
   its tokens to that split's shards (:mod:`lmlab.data.shards`): ``doc eot doc eot ...``, no
   padding. Input order in, input order out: the shards are byte-identical for any number
   of workers.
   With ``max_docs`` / ``max_bytes`` only a prefix of the input is used: the first
   ``max_docs`` documents, and the longest run of them whose UTF-8 bytes add up to at most
   ``max_bytes`` (documents are never cut), counted before filtering and whatever the input
   kind; reading stops there, so an unbounded stream ends. Workers report each document's size
   and fate, so the cut falls at the same document for any piece size or number of workers.
5. Everything is written into a temporary folder renamed to ``out`` at the end, with
   ``meta.json`` (counts, tokenizer fingerprint, filter report, sources, limits, config).

Memory does not grow with corpus size except for the duplicate check of the code filter,
which keeps a 16-byte digest per kept document (about 100 bytes each with set overhead).

With ``split = "tail"`` every document goes to train first and, at the end, the last
``val_fraction`` of the train token stream moves to val (cut mid-document if need be): the
standard split of nanoGPT and char-rnn, where val is the end of the text.

Splitting by content means identical documents always land in the same split. When
``val_fraction > 0`` and at least two distinct documents survive, val gets at least one
document (the last distinct train document moves there if the hash gave val none); train
is never left empty while there are documents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.config import PrepareConfig, check_section
from lmlab.data.filters import REASONS, CodeFilter, code_reject_reason, digest
from lmlab.data.shards import DEFAULT_SHARD_TOKENS, FORMAT, SPLITS, ShardWriter, dtype_for_vocab
from lmlab.data.sources import (
    Piece,
    SourceSettings,
    entry_documents,
    expand_sources,
    iter_pieces,
    unescape_separator,
)
from lmlab.errors import ConfigError, DataError, LmlabError
from lmlab.io import read_json, write_json
from lmlab.notices import file_key, first_time, progress_on_terminal
from lmlab.outputs import atomic_dir

PIECE_BYTES = 512 * 1024
MAX_WARNINGS = 20  # skipped files named on stderr (all are counted; the first few kept in meta)
MAX_EXAMPLES = 5  # dropped documents named per reason in meta.json

# ---- worker side -------------------------------------------------------------------------


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


def _init_worker(
    tokenizer_path: str, settings: SourceSettings, code_filter: CodeFilter | None, tok: Any = None
) -> None:
    """Load the tokenizer once per process (``tok`` reuses one already loaded in-process)."""
    if tok is None:
        from lmlab.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_path)
    _STATE.update(
        tok=tok,
        settings=settings,
        code_filter=code_filter,
        eot=tok.eot_id,
        dtype=dtype_for_vocab(tok.vocab_size),
    )


def _process_piece(piece: Piece) -> PieceResult:
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
    ids = [_encode_document(encode, t, p, settings.errors) for t, p in zip(texts, paths)]
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


def _encode_document(
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


def _run_pieces(pieces: Iterator[Piece], workers: int, init_args: tuple) -> Iterator[PieceResult]:
    """Results in piece order; with workers > 1 at most 2 * workers pieces are in flight."""
    if workers <= 1:
        _init_worker(*init_args)
        try:
            for piece in pieces:
                yield _process_piece(piece)
        finally:
            _STATE.clear()
        return
    # spawn: safe whatever the parent has loaded (threads in torch, tokenizers, tiktoken)
    ctx = mp.get_context("spawn")
    ex = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=init_args[:3]
    )
    in_flight: deque = deque()
    try:
        for piece in pieces:
            in_flight.append(ex.submit(_process_piece, piece))
            if len(in_flight) >= 2 * workers:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        for f in in_flight:
            f.cancel()
        ex.shutdown(wait=True, cancel_futures=True)


# ---- main side ---------------------------------------------------------------------------


def _prefix_length(
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


def _first_documents(res: PieceResult, k: int) -> PieceResult:
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


Pending = list[tuple[bytes, np.ndarray, int]]  # (digest, tokens, nbytes)


class _SplitRouter:
    """Appends documents to the train/val writers, keeping the 'one val document' promise.

    While one split is still empty, the latest first-occurrence document of each split (and
    any later copies of earlier content, to keep order) is held back instead of written; at
    the end it can move to the empty split. Once both splits have a document, nothing is
    held back any more.
    """

    def __init__(self, writers: dict[str, ShardWriter], track: bool):
        self.writers = writers
        self.docs = dict.fromkeys(SPLITS, 0)
        self.bytes = dict.fromkeys(SPLITS, 0)
        self.tracking = track
        self.seen: set[bytes] = set()
        self.pending: dict[str, Pending] = {s: [] for s in SPLITS}

    def add(self, split: str, d: bytes, tokens: np.ndarray, nbytes: int) -> None:
        self.docs[split] += 1
        self.bytes[split] += nbytes
        if not self.tracking:
            self.writers[split].write(tokens)
            return
        first = d not in self.seen
        self.seen.add(d)
        pend = self.pending[split]
        if first:
            self._flush(split)
            pend.append((d, tokens.copy(), nbytes))
        elif pend:
            pend.append((d, tokens.copy(), nbytes))
        else:
            self.writers[split].write(tokens)
        if self.docs["train"] and self.docs["val"]:
            self._flush("train")
            self._flush("val")
            self.tracking = False
            self.seen = set()

    def _flush(self, split: str) -> None:
        pend = self.pending[split]
        for _, tokens, _ in pend:
            self.writers[split].write(tokens)
        pend.clear()  # in place: add() holds a reference to this list

    def _move_head(self, src: str, dst: str) -> None:
        pend = self.pending[src]
        head = pend[0][0]
        for d, tokens, nbytes in pend:
            if d == head:
                self.writers[dst].write(tokens)
                for s, sign in ((src, -1), (dst, 1)):
                    self.docs[s] += sign
                    self.bytes[s] += sign * nbytes
        self.pending[src] = [x for x in pend if x[0] != head]

    def finish(self, want_val: bool) -> None:
        if self.tracking:
            if self.docs["train"] == 0 and self.pending["val"]:
                self._move_head("val", "train")
            elif (
                want_val and self.docs["val"] == 0 and len(self.seen) >= 2 and self.pending["train"]
            ):
                self._move_head("train", "val")
        self._flush("train")
        self._flush("val")
        for w in self.writers.values():
            w.close()


def _val_threshold(fraction: float) -> int:
    return int(fraction * (1 << 64))


def _split_key(seed_bytes: bytes, d: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(seed_bytes + d, digest_size=8).digest(), "little")


def _move_tail(
    folder: Path, writers: dict[str, ShardWriter], router: _SplitRouter, fraction: float, tok: Any
) -> None:
    """Move the last ``fraction`` of the train stream (at least one token when train has
    two) into val; the train shards past the cut are truncated or deleted."""
    train, val = writers["train"], writers["val"]
    n = train.tokens
    n_val = min(n - 1, n - int(n * (1.0 - fraction))) if n >= 2 else 0
    if n_val <= 0:
        return
    # bytes per id (end-of-text counts 0, as the per-document byte counts exclude it)
    lengths = np.zeros(tok.vocab_size, dtype=np.int64)
    for i, b in tok.vocab.items():
        lengths[i] = len(b)
    lengths[tok.eot_id] = 0
    cut = n - n_val  # stream position of the first val token
    start = 0  # stream position of the current shard's first token
    keep: list[str] = []
    moved_bytes = moved_docs = 0
    before_cut = tok.eot_id  # the token just before the cut: not eot when the cut splits a document
    for name in train.shards:
        path = folder / name
        size = path.stat().st_size // train.dtype.itemsize
        if start + size <= cut:
            keep.append(name)
            if start + size == cut:
                before_cut = int(np.memmap(path, dtype=train.dtype, mode="r")[-1])
        else:
            lo = max(cut - start, 0)
            mm = np.memmap(path, dtype=train.dtype, mode="r")
            if lo:
                before_cut = int(mm[lo - 1])
            for a in range(lo, size, 1 << 22):  # bounded memory: 4M tokens at a time
                chunk = np.array(mm[a : min(a + (1 << 22), size)])
                val.write(chunk)
                moved_bytes += int(lengths[chunk].sum())
                moved_docs += int((chunk == tok.eot_id).sum())
            del mm
            if lo:
                os.truncate(path, lo * train.dtype.itemsize)
                keep.append(name)
            else:
                path.unlink()
        start += size
    val.close()
    train.shards, train.tokens = keep, cut
    # documents that start in train count there, those that end in val count there (a
    # document cut in two counts in both)
    split_doc = int(before_cut != tok.eot_id)
    router.docs["val"], router.docs["train"] = (
        moved_docs,
        router.docs["train"] - moved_docs + split_doc,
    )
    router.bytes["val"], router.bytes["train"] = moved_bytes, router.bytes["train"] - moved_bytes


def _stderr(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def prepare_dataset(
    pcfg: PrepareConfig,
    tokenizer_path: str,
    progress: bool = True,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    piece_bytes: int = PIECE_BYTES,
    code_filter: CodeFilter | None = None,
    warn: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Write the dataset folder ``pcfg.out``; return its meta.json content.

    ``code_filter`` overrides the code filter's thresholds (used with ``pcfg.filter == "code"``).
    Raises DataError for missing inputs, malformed JSONL, or when no document survives.
    """
    t0 = time.perf_counter()
    if not pcfg.out:
        raise ConfigError("prepare.out: no output folder given")
    check_section(pcfg, "prepare")  # e.g. workers >= 0, as load_config checks a recipe's
    if not 0.0 <= pcfg.val_fraction < 1.0:
        raise ConfigError(f"prepare.val_fraction: must be in [0, 1), got {pcfg.val_fraction}")
    from lmlab.outputs import check_output

    check_output(pcfg.out, "dataset")  # refuse before reading anything (atomic_dir checks again)
    tok_path = Path(tokenizer_path)
    if not tok_path.exists():
        raise DataError(f"{tokenizer_path}: tokenizer not found")
    from lmlab.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_path)
    if tok.eot_id is None:
        raise DataError(
            f"{tokenizer_path}: tokenizer has no <|endoftext|> token to separate documents "
            "(train it with --special-token '<|endoftext|>')"
        )
    dtype = dtype_for_vocab(tok.vocab_size)
    suffixes = tuple(pcfg.suffixes) or ((".py",) if pcfg.filter == "code" else ())
    if pcfg.max_docs < 0 or pcfg.max_bytes < 0:
        raise ConfigError("prepare.max_docs / prepare.max_bytes: must be >= 0 (0: no limit)")
    sources, source_records = expand_sources(list(pcfg.input), suffixes)
    files = [s for s in sources if isinstance(s, Path)]
    streams = len(sources) - len(files)
    cf = (code_filter or CodeFilter()) if pcfg.filter == "code" else None
    settings = SourceSettings(
        pcfg.format, pcfg.text_field, unescape_separator(pcfg.separator), pcfg.errors
    )
    # bytes to read: known for files, not for a stream (unless the prefix bounds it)
    total_bytes: int | None = None if streams else sum(f.stat().st_size for f in files)
    if pcfg.max_bytes:
        total_bytes = min(
            total_bytes if total_bytes is not None else pcfg.max_bytes, pcfg.max_bytes
        )
    # no more processes than pieces of work (a tiny corpus need not start 64 workers)
    workers = pcfg.workers or os.cpu_count() or 1
    if total_bytes is not None:
        workers = max(1, min(workers, -(-total_bytes // piece_bytes)))
    docs_limit = pcfg.max_docs or None
    bytes_limit = pcfg.max_bytes or None
    read_bytes = 0
    stopped_by: str | None = None

    skipped: Counter = Counter()
    examples: list[str] = []

    def on_skip(path: str, reason: str, detail: str) -> None:
        skipped[reason] += 1
        msg = f"{path}: {detail}, skipped"
        if len(examples) < MAX_WARNINGS:
            examples.append(msg)
            if first_time(file_key(reason, path)):  # not again if the tokenizer stage said it
                warn(f"lmlab: warning: {msg}")

    dropped: Counter = Counter()
    drop_examples: dict[str, list[str]] = {}
    documents = 0
    input_bytes = 0
    seen: set[bytes] = set()
    seed_bytes = str(pcfg.seed).encode()
    threshold = _val_threshold(pcfg.val_fraction)
    from tqdm import tqdm

    with atomic_dir(Path(pcfg.out), "dataset") as tmp:
        writers = {s: ShardWriter(tmp, s, dtype, shard_tokens) for s in SPLITS}
        tail = pcfg.split == "tail"
        router = _SplitRouter(writers, track=pcfg.val_fraction > 0 and not tail)
        pieces = iter_pieces(sources, settings, piece_bytes, on_skip)
        bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            desc="data prepare",
            file=sys.stderr,
            disable=not progress or not progress_on_terminal(),
            smoothing=0.1,
            dynamic_ncols=True,
        )
        results = _run_pieces(pieces, workers, (str(tok_path), settings, cf, tok))
        try:
            for res in results:
                if docs_limit is not None or bytes_limit is not None:
                    k, stopped_by = _prefix_length(
                        res,
                        None if docs_limit is None else docs_limit - documents,
                        None if bytes_limit is None else bytes_limit - read_bytes,
                    )
                    if stopped_by is not None:
                        res = _first_documents(res, k)
                    elif docs_limit is not None and documents + res.documents == docs_limit:
                        stopped_by = "max_docs"  # exactly full: nothing more is read
                read_bytes += sum(res.seen_bytes)
                for path, reason, detail in res.skipped:
                    on_skip(path, reason, detail)
                documents += res.documents
                dropped.update(res.dropped)
                for reason, found in res.examples.items():
                    ex = drop_examples.setdefault(reason, [])
                    ex.extend(path for _, path in found[: MAX_EXAMPLES - len(ex)])
                input_bytes += res.input_bytes
                pos = 0
                for i, n in enumerate(res.lengths):
                    d = res.digests[16 * i : 16 * i + 16]
                    tokens = res.tokens[pos : pos + n]
                    pos += n
                    if cf is not None and cf.dedup:
                        if d in seen:
                            dropped["duplicate"] += 1
                            continue
                        seen.add(d)
                    split = "val" if not tail and _split_key(seed_bytes, d) < threshold else "train"
                    router.add(split, d, tokens, res.nbytes[i])
                bar.update(res.input_bytes)
                if stopped_by is not None:
                    break  # closing the generators below stops the readers and the workers
            router.finish(want_val=pcfg.val_fraction > 0 and not tail)
            if tail and pcfg.val_fraction > 0:
                _move_tail(tmp, writers, router, pcfg.val_fraction, tok)
        finally:
            results.close()
            pieces.close()
            bar.close()
        kept = router.docs["train"] + router.docs["val"]
        if kept == 0:
            why = (
                ", ".join(f"{k} {v}" for k, v in {**dropped, **skipped}.items())
                or "no documents found"
            )
            read = f"{len(files)} files" + (f", {streams} streams" if streams else "")
            if stopped_by is not None:
                why += f"; stopped at {stopped_by} after {documents} documents"
            raise DataError(f"{', '.join(pcfg.input)}: no documents left to write ({read}; {why})")
        seconds = time.perf_counter() - t0
        meta = {
            "format": FORMAT,
            "dtype": dtype.name,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "tokenizer": str(tok_path.resolve()),
            "tokenizer_fingerprint": tok.fingerprint(),
            "splits": {
                s: {
                    "tokens": writers[s].tokens,
                    "documents": router.docs[s],
                    "bytes": router.bytes[s],
                    "shards": list(writers[s].shards),
                }
                for s in SPLITS
            },
            "filter": {
                "name": pcfg.filter,
                "thresholds": cf.to_dict() if cf is not None else {},
                "files": len(files),
                "streams": streams,
                "files_skipped": dict(skipped),
                "skipped_examples": examples,
                "documents": documents,
                "kept": kept,
                "dropped": {r: dropped[r] for r in REASONS if dropped[r]},
                "dropped_examples": {r: drop_examples[r] for r in REASONS if r in drop_examples},
            },
            "inputs": list(pcfg.input),
            "sources": source_records,
            "limits": {
                "max_docs": pcfg.max_docs,
                "max_bytes": pcfg.max_bytes,
                "stopped_by": stopped_by,
                "documents_read": documents,
                "bytes_read": read_bytes,
            },
            "config": dataclasses.asdict(pcfg),
            "stats": {
                "input_bytes": input_bytes,
                "seconds": round(seconds, 3),
                "mb_per_s": round(input_bytes / 1e6 / max(seconds, 1e-9), 3),
                "workers": workers,
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_json(tmp / "meta.json", meta)
    meta = read_json(
        Path(pcfg.out) / "meta.json"
    )  # as on disk: with the output marker atomic_dir adds
    meta["path"] = str(Path(pcfg.out).resolve())
    return meta


def _streams_note(n: int) -> str:
    return f" and {n} stream{'s' if n != 1 else ''}" if n else ""


def format_report(meta: dict[str, Any]) -> str:
    """A short human-readable summary of a prepare run (what the CLI prints)."""
    f = meta["filter"]
    st = meta.get("stats", {})
    lines = [
        f"dataset {meta.get('path', '')}: {meta['dtype']}, vocab {meta['vocab_size']}, eot {meta['eot_id']}",
        f"  read {f['files']:,} files{_streams_note(f.get('streams', 0))}, {st.get('input_bytes', 0) / 1e6:.1f} MB "
        f"in {st.get('seconds', 0):.1f} s ({st.get('mb_per_s', 0):.2f} MB/s, {st.get('workers', '?')} workers)",
    ]
    lim = meta.get("limits", {})
    if lim.get("stopped_by"):
        by = lim["stopped_by"]
        lines.append(
            f"  stopped at {by} = {lim[by]:,}: read {lim['documents_read']:,} documents, "
            f"{lim['bytes_read']:,} bytes of text"
        )
    for s in SPLITS:
        sp = meta["splits"][s]
        lines.append(
            f"  {s:5s} {sp['documents']:>9,} documents {sp['tokens']:>13,} tokens "
            f"{sp['bytes'] / 1e6:>9.1f} MB text  {len(sp['shards'])} shard(s)"
        )
    lines.append(f"  filter {f['name']}: kept {f['kept']:,} of {f['documents']:,} documents")
    if f["dropped"]:
        lines.append("  dropped: " + ", ".join(f"{k} {v:,}" for k, v in f["dropped"].items()))
    for path in f.get("dropped_examples", {}).get("syntax", [])[:3]:
        lines.append(f"    syntax: {path}")
    if f["files_skipped"]:
        lines.append(
            "  files skipped: " + ", ".join(f"{k} {v:,}" for k, v in f["files_skipped"].items())
        )
    return "\n".join(lines)
