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
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmlab.config import PrepareConfig, check_section
from lmlab.data.encode import MAX_EXAMPLES, PieceResult, first_documents, prefix_length, run_pieces
from lmlab.data.filters import REASONS, CodeFilter
from lmlab.data.shards import DEFAULT_SHARD_TOKENS, FORMAT, SPLITS, ShardWriter, dtype_for_vocab
from lmlab.data.sources import SourceSettings, expand_sources, iter_pieces, unescape_separator
from lmlab.data.splits import SplitRouter, move_tail, split_chooser
from lmlab.errors import ConfigError, DataError
from lmlab.io import read_json, write_json
from lmlab.notices import file_key, first_time, progress_on_terminal
from lmlab.outputs import atomic_dir, check_output
from lmlab.tokenizer import Tokenizer, load_tokenizer

PIECE_BYTES = 512 * 1024
MAX_WARNINGS = 20  # skipped files named on stderr (all are counted; the first few kept in meta)


def _stderr(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def _checked_tokenizer(pcfg: PrepareConfig, tokenizer_path: str) -> Tokenizer:
    """Step 1: check the settings and the output folder, then load the tokenizer (it must have eot)."""
    if not pcfg.out:
        raise ConfigError("prepare.out: no output folder given")
    check_section(pcfg, "prepare")  # e.g. workers >= 0, as load_config checks a recipe's
    if not 0.0 <= pcfg.val_fraction < 1.0:
        raise ConfigError(f"prepare.val_fraction: must be in [0, 1), got {pcfg.val_fraction}")
    check_output(pcfg.out, "dataset")  # refuse before reading anything (atomic_dir checks again)
    if not Path(tokenizer_path).exists():
        raise DataError(f"{tokenizer_path}: tokenizer not found")
    tok = load_tokenizer(Path(tokenizer_path))
    if tok.eot_id is None:
        raise DataError(
            f"{tokenizer_path}: tokenizer has no <|endoftext|> token to separate documents "
            "(train it with --special-token '<|endoftext|>')"
        )
    return tok


@dataclass
class _Inputs:
    """Step 1 too: the inputs expanded, in order, and how much work they are."""

    sources: list[Any]  # Paths and streams
    records: list[Any]  # what meta.json says about each source
    files: int
    streams: int
    total_bytes: int | None  # known for files, not for a stream (unless the prefix bounds it)
    workers: int


def _expand_inputs(pcfg: PrepareConfig, piece_bytes: int) -> _Inputs:
    suffixes = tuple(pcfg.suffixes) or ((".py",) if pcfg.filter == "code" else ())
    if pcfg.max_docs < 0 or pcfg.max_bytes < 0:
        raise ConfigError("prepare.max_docs / prepare.max_bytes: must be >= 0 (0: no limit)")
    sources, records = expand_sources(list(pcfg.input), suffixes, tuple(pcfg.exclude))
    files = [s for s in sources if isinstance(s, Path)]
    streams = len(sources) - len(files)
    total_bytes: int | None = None if streams else sum(f.stat().st_size for f in files)
    if pcfg.max_bytes:
        total_bytes = min(
            total_bytes if total_bytes is not None else pcfg.max_bytes, pcfg.max_bytes
        )
    # no more processes than pieces of work (a tiny corpus need not start 64 workers)
    workers = pcfg.workers or os.cpu_count() or 1
    if total_bytes is not None:
        workers = max(1, min(workers, -(-total_bytes // piece_bytes)))
    return _Inputs(sources, records, len(files), streams, total_bytes, workers)


@dataclass
class _Tally:
    """Step 4's counts: documents read, dropped and skipped (with examples), and why reading stopped."""

    warn: Callable[[str], None]
    max_docs: int | None
    max_bytes: int | None
    documents: int = 0
    input_bytes: int = 0
    read_bytes: int = 0
    stopped_by: str | None = None
    skipped: Counter = field(default_factory=Counter)
    skip_messages: list[str] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    drop_examples: dict[str, list[str]] = field(default_factory=dict)

    def on_skip(self, path: str, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        msg = f"{path}: {detail}, skipped"
        if len(self.skip_messages) < MAX_WARNINGS:
            self.skip_messages.append(msg)
            if first_time(file_key(reason, path)):  # not again if the tokenizer stage said it
                self.warn(f"lmlab: warning: {msg}")

    def within_limits(self, res: PieceResult) -> PieceResult:
        """``res`` cut where max_docs / max_bytes end the input's prefix (``stopped_by`` says which)."""
        if self.max_docs is None and self.max_bytes is None:
            return res
        k, self.stopped_by = prefix_length(
            res,
            None if self.max_docs is None else self.max_docs - self.documents,
            None if self.max_bytes is None else self.max_bytes - self.read_bytes,
        )
        if self.stopped_by is not None:
            return first_documents(res, k)
        if self.max_docs is not None and self.documents + res.documents == self.max_docs:
            self.stopped_by = "max_docs"  # exactly full: nothing more is read
        return res

    def count(self, res: PieceResult) -> None:
        self.read_bytes += sum(res.seen_bytes)
        for path, reason, detail in res.skipped:
            self.on_skip(path, reason, detail)
        self.documents += res.documents
        self.dropped.update(res.dropped)
        for reason, found in res.examples.items():
            ex = self.drop_examples.setdefault(reason, [])
            ex.extend(path for _, path in found[: MAX_EXAMPLES - len(ex)])
        self.input_bytes += res.input_bytes


def _route_documents(
    res: PieceResult,
    router: SplitRouter,
    split_of: Callable[[bytes], str],
    seen: set[bytes] | None,
    dropped: Counter,
) -> None:
    """Send each kept document of ``res`` to its split; with ``seen`` (dedup) drop exact repeats."""
    pos = 0
    for i, n in enumerate(res.lengths):
        d = res.digests[16 * i : 16 * i + 16]
        tokens = res.tokens[pos : pos + n]
        pos += n
        if seen is not None:
            if d in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(d)
        router.add(split_of(d), d, tokens, res.nbytes[i])


def _progress_bar(total_bytes: int | None, progress: bool) -> tqdm:
    return tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        desc="data prepare",
        file=sys.stderr,
        disable=not progress or not progress_on_terminal(),
        smoothing=0.1,
        dynamic_ncols=True,
    )


def _nothing_kept(pcfg: PrepareConfig, inputs: _Inputs, tally: _Tally) -> DataError:
    why = (
        ", ".join(f"{k} {v}" for k, v in {**tally.dropped, **tally.skipped}.items())
        or "no documents found"
    )
    read = f"{inputs.files} files" + (f", {inputs.streams} streams" if inputs.streams else "")
    if tally.stopped_by is not None:
        why += f"; stopped at {tally.stopped_by} after {tally.documents} documents"
    return DataError(f"{', '.join(pcfg.input)}: no documents left to write ({read}; {why})")


def _dataset_meta(
    pcfg: PrepareConfig,
    tok: Tokenizer,
    tok_path: Path,
    cf: CodeFilter | None,
    inputs: _Inputs,
    tally: _Tally,
    writers: dict[str, ShardWriter],
    router: SplitRouter,
    seconds: float,
) -> dict[str, Any]:
    """Step 5: meta.json's content (counts, tokenizer fingerprint, filter report, sources, limits)."""
    dropped = tally.dropped
    return {
        "format": FORMAT,
        "dtype": dtype_for_vocab(tok.vocab_size).name,
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
            "files": inputs.files,
            "streams": inputs.streams,
            "files_skipped": dict(tally.skipped),
            "skipped_examples": tally.skip_messages,
            "documents": tally.documents,
            "kept": router.docs["train"] + router.docs["val"],
            "dropped": {r: dropped[r] for r in REASONS if dropped[r]},
            "dropped_examples": {
                r: tally.drop_examples[r] for r in REASONS if r in tally.drop_examples
            },
        },
        "inputs": list(pcfg.input),
        "sources": inputs.records,
        "limits": {
            "max_docs": pcfg.max_docs,
            "max_bytes": pcfg.max_bytes,
            "stopped_by": tally.stopped_by,
            "documents_read": tally.documents,
            "bytes_read": tally.read_bytes,
        },
        "config": dataclasses.asdict(pcfg),
        "stats": {
            "input_bytes": tally.input_bytes,
            "seconds": round(seconds, 3),
            "mb_per_s": round(tally.input_bytes / 1e6 / max(seconds, 1e-9), 3),
            "workers": inputs.workers,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


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
    The steps are those of the module docstring.
    """
    t0 = time.perf_counter()
    tok = _checked_tokenizer(pcfg, tokenizer_path)
    tok_path = Path(tokenizer_path)
    inputs = _expand_inputs(pcfg, piece_bytes)
    cf = (code_filter or CodeFilter()) if pcfg.filter == "code" else None
    settings = SourceSettings(
        pcfg.format, pcfg.text_field, unescape_separator(pcfg.separator), pcfg.errors
    )
    tally = _Tally(warn, pcfg.max_docs or None, pcfg.max_bytes or None)
    tail = pcfg.split == "tail"
    want_val = pcfg.val_fraction > 0 and not tail
    split_of = split_chooser(pcfg.seed, pcfg.val_fraction, tail)
    seen: set[bytes] | None = set() if cf is not None and cf.dedup else None
    dtype = dtype_for_vocab(tok.vocab_size)
    with atomic_dir(Path(pcfg.out), "dataset") as tmp:
        writers = {s: ShardWriter(tmp, s, dtype, shard_tokens) for s in SPLITS}
        router = SplitRouter(writers, track=want_val)
        # steps 2-4: pieces read here, encoded by the workers, routed here in input order
        pieces = iter_pieces(inputs.sources, settings, piece_bytes, tally.on_skip)
        bar = _progress_bar(inputs.total_bytes, progress)
        results = run_pieces(pieces, inputs.workers, (str(tok_path), settings, cf, tok))
        try:
            for res in results:
                res = tally.within_limits(res)
                tally.count(res)
                _route_documents(res, router, split_of, seen, tally.dropped)
                bar.update(res.input_bytes)
                if tally.stopped_by is not None:
                    break  # closing the generators below stops the readers and the workers
            router.finish(want_val=want_val)
            if tail and pcfg.val_fraction > 0:
                move_tail(tmp, writers, router, pcfg.val_fraction, tok)
        finally:
            results.close()
            pieces.close()
            bar.close()
        if router.docs["train"] + router.docs["val"] == 0:
            raise _nothing_kept(pcfg, inputs, tally)
        seconds = time.perf_counter() - t0
        meta = _dataset_meta(pcfg, tok, tok_path, cf, inputs, tally, writers, router, seconds)
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
