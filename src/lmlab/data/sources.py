"""Documents from input files (plain text, JSONL, parquet) and datasets, streamed in bounded pieces.

Two halves, so the heavy work can run in worker processes:

* :func:`iter_pieces` (main process) reads the files in input order and yields
  :class:`Piece` objects of roughly ``piece_bytes`` raw bytes each. A small file travels whole;
  a large one is cut at document boundaries (after a separator, or after a newline for
  JSONL), so memory stays flat however large the corpus or a file is (except a single
  document, which is always held whole). Parquet is read in record batches.
* :func:`entry_documents` (worker) decodes one entry of a piece and returns its documents.

Inputs are expanded by :func:`expand_sources`: files, folders and globs become files; a
dataset (``hf:NAME[:CONFIG][#SPLIT]``, a ``save_to_disk`` folder, see :mod:`lmlab.data.streams`)
stays one :class:`~lmlab.data.streams.StreamSource` whose rows are read in batches, like
parquet's, by a generator (nothing is materialised, so a stream may be unbounded).

Formats (``auto`` picks by suffix: ``.jsonl``/``.ndjson`` -> jsonl, ``.parquet`` -> parquet,
anything else -> text; ``.gz`` files are decompressed on the fly):

* text: one document per file, or, with a separator (``"\\n\\n"``, ``"<|endoftext|>"``), one
  per separated part; parts are stripped of surrounding whitespace and empty parts ignored.
* jsonl: one JSON object per line, the document in ``text_field``; blank lines are ignored; a
  malformed line or a missing / non-string field raises DataError naming ``file:line``.
* parquet (needs pyarrow, the ``lmlab[parquet]`` extra): the ``text_field`` string column.

Files that are not valid UTF-8 are skipped and reported (``errors="skip"``), or decoded with
U+FFFD replacement characters (``errors="replace"``); they never crash the run.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lmlab.data.streams import StreamSource, check_available, parse_stream_input, stream_batches
from lmlab.errors import DataError
from lmlab.io import drop_excluded, expand_inputs
from lmlab.notices import utf8_reason  # the tokenizer stage words it the same way

# An entry is one contiguous part of one file:
#   (kind, path, first_line, at_file_start, payload)
# kind: "doc" (whole file is one document), "split" (separated documents), "jsonl",
#       "strings" (parquet values); payload: bytes, or list[str | None] for "strings".
Entry = tuple[str, str, int, bool, Any]


@dataclass
class Piece:
    """A unit of work: entries from one or more files, in input order."""

    entries: list[Entry] = field(default_factory=list)
    nbytes: int = 0  # raw bytes read for these entries (for progress and throughput)


@dataclass(frozen=True)
class SourceSettings:
    """How files become documents; shared by the reader and the workers."""

    format: str = "auto"  # auto | text | jsonl | parquet
    text_field: str = "text"
    separator: str = ""  # already unescaped
    errors: str = "skip"  # skip | replace


SkipFn = Callable[[str, str, str], None]  # (path, reason, detail)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "0": "\0"}


def unescape_separator(sep: str) -> str:
    r"""Turn the command-line spelling ``\n\n`` into two newlines (also ``\t``, ``\r``, ``\\``)."""
    return re.sub(r"\\([ntr0\\])", lambda m: _ESCAPES[m.group(1)], sep)


def file_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def _open(path: Path) -> BinaryIO:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115 - caller closes


def _utf8_error(e: UnicodeDecodeError, base: int = 0) -> str:

    return utf8_reason(e, base)


def _check_utf8_stream(path: Path, block: int) -> str | None:
    """None when the whole file decodes as UTF-8, else the reason (one streaming pass)."""
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    done = 0
    with _open(path) as f:
        while chunk := f.read(block):
            try:
                dec.decode(chunk)
            except UnicodeDecodeError as e:
                # e.object is the decoder's held-back bytes followed by this chunk
                return _utf8_error(e, done - (len(e.object) - len(chunk)))
            done += len(chunk)
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError as e:
            return _utf8_error(e, done - len(e.object))
    return None


def _file_entries(
    path: Path, kind: str, settings: SourceSettings, piece_bytes: int, on_skip: SkipFn
) -> Iterator[tuple[Entry, int]]:
    """(entry, raw bytes) for one text or JSONL file, cut at document boundaries."""
    p = str(path)
    gz = path.name.lower().endswith(".gz")
    size = path.stat().st_size
    if not gz and size <= piece_bytes or kind == "doc":
        data = path.read_bytes() if not gz else gzip.decompress(path.read_bytes())
        yield (kind, p, 1, True, data), len(data)
        return
    # A large file: several entries. With errors=skip, check the whole file first so a
    # file is either used whole or skipped whole.
    if settings.errors == "skip":
        reason = _check_utf8_stream(path, piece_bytes)
        if reason is not None:
            on_skip(p, "undecodable", reason)
            return
    sep = settings.separator.encode("utf-8")
    line = 1
    start = True
    buf = b""
    scan = 0  # split: where the next separator search starts in buf
    with _open(path) as f:
        while True:
            block = f.read(piece_bytes)
            if kind == "jsonl":
                if block and not block.endswith(b"\n"):
                    block += f.readline()  # finish the current line
                if not block:
                    break
                yield (kind, p, line, start, block), len(block)
                line += block.count(b"\n")
                start = False
                continue
            # split: cut after the last separator in the buffer, finding separators left to
            # right without overlap as str.split does, so pieces split exactly like the file
            if not block:
                if buf:
                    yield (kind, p, 1, start, buf), len(buf)
                break
            buf += block
            cut = -1
            j = buf.find(sep, scan)
            while j >= 0:
                cut = j + len(sep)
                j = buf.find(sep, cut)
            if cut >= 0:
                yield (kind, p, 1, start, buf[:cut]), cut
                buf = buf[cut:]
                start = False
            # no separator starts in buf before here: later searches skip that part
            scan = max(0, len(buf) - len(sep) + 1)


def _parquet_entries(
    path: Path, settings: SourceSettings, rows: int
) -> Iterator[tuple[Entry, int]]:
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415 (optional extra: lmlab[parquet])
    except ImportError:
        raise DataError(
            f"{path}: reading parquet needs pyarrow (pip install 'lmlab[parquet]')"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if settings.text_field not in names:
        raise DataError(f"{path}: no column {settings.text_field!r} (columns: {', '.join(names)})")
    row = 1
    for batch in pf.iter_batches(batch_size=rows, columns=[settings.text_field]):
        values = batch.column(0).to_pylist()
        nbytes = sum(len(v) for v in values if isinstance(v, str))  # chars, close to bytes
        yield ("strings", str(path), row, row == 1, values), nbytes
        row += len(values)


Source = Path | StreamSource


def expand_sources(
    inputs: list[str], suffixes: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
) -> tuple[list[Source], list[dict[str, Any]]]:
    """Inputs in order as files and streams, and one meta.json record per input.

    Files, folders and globs expand as :func:`lmlab.io.expand_inputs` does (a file named twice
    is read once), less the files matching an ``exclude`` glob (:func:`lmlab.io.excluded`; the
    record counts them); a dataset input stays one stream.
    """
    if not inputs:
        raise DataError("no input given: pass files, folders, globs or hf:NAME")
    sources: list[Source] = []
    records: list[dict[str, Any]] = []
    seen: set[Path] = set()
    for item in inputs:
        stream = parse_stream_input(item)
        if stream is not None:
            check_available(stream)
            sources.append(stream)
            records.append(stream.record())
            continue
        new = [f for f in expand_inputs([item], suffixes) if f.resolve() not in seen]
        seen.update(f.resolve() for f in new)
        kept = drop_excluded(new, item, exclude)
        sources.extend(kept)
        record = {"input": item, "kind": "paths", "files": len(kept)}
        if exclude:
            record["excluded"] = len(new) - len(kept)
        records.append(record)
    return sources, records


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def _stream_entries(
    src: StreamSource, settings: SourceSettings, rows: int
) -> Iterator[tuple[Entry, int]]:
    row = 1
    for values in stream_batches(src, settings.text_field, rows):
        nbytes = sum(_utf8_len(v) for v in values if isinstance(v, str))
        yield ("strings", src.spec, row, row == 1, values), nbytes
        row += len(values)


def iter_pieces(
    sources: list[Source], settings: SourceSettings, piece_bytes: int, on_skip: SkipFn
) -> Iterator[Piece]:
    """Pieces of about ``piece_bytes`` raw bytes over ``sources``, in order (main process)."""
    piece = Piece()
    for path in sources:
        try:
            if isinstance(path, StreamSource):
                it = _stream_entries(path, settings, rows=max(1, piece_bytes // 2048))
            elif (fmt := file_format(path, settings.format)) == "parquet":
                it = _parquet_entries(path, settings, rows=max(1, piece_bytes // 2048))
            else:
                kind = "jsonl" if fmt == "jsonl" else ("split" if settings.separator else "doc")
                it = _file_entries(path, kind, settings, piece_bytes, on_skip)
            for entry, nbytes in it:
                piece.entries.append(entry)
                piece.nbytes += nbytes
                if piece.nbytes >= piece_bytes:
                    yield piece
                    piece = Piece()
        except OSError as e:
            on_skip(str(path), "unreadable", f"cannot read ({e.strerror or e})")
    if piece.entries:
        yield piece


# ---- worker side -------------------------------------------------------------------------


def _decode(data: bytes, path: str, at_start: bool, errors: str) -> str:
    text = data.decode("utf-8", errors="strict" if errors == "skip" else "replace")
    if at_start and text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark is not part of the document
    return text


def _jsonl_documents(text: str, path: str, first_line: int, field_name: str) -> list[str | None]:
    docs: list[str | None] = []
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        where = f"{path}:{first_line + i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if field_name not in obj:
            raise DataError(
                f"{where}: missing field {field_name!r} (fields: {', '.join(map(str, obj)) or 'none'})"
            )
        value = obj[field_name]
        if value is not None and not isinstance(value, str):
            raise DataError(
                f"{where}: field {field_name!r} is {type(value).__name__}, not a string"
            )
        docs.append(value)
    return docs


def entry_documents(entry: Entry, settings: SourceSettings) -> tuple[list[str | None], str | None]:
    """The documents of one entry and, when the file is skipped, the reason (else None).

    A None document is a null value (JSONL/parquet); callers count it as empty.
    """
    kind, path, first_line, at_start, payload = entry
    if kind == "strings":
        for i, v in enumerate(payload):
            if v is not None and not isinstance(v, str):
                raise DataError(
                    f"{path}: row {first_line + i}: column {settings.text_field!r} is not a string"
                )
        return list(payload), None
    try:
        text = _decode(payload, path, at_start, settings.errors)
    except UnicodeDecodeError as e:
        return [], _utf8_error(e)
    if kind == "doc":
        return [text], None
    if kind == "jsonl":
        return _jsonl_documents(text, path, first_line, settings.text_field), None
    parts = (s.strip() for s in text.split(settings.separator))
    return [s for s in parts if s], None
