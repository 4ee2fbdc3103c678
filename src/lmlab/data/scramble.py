"""Statement shuffling: a Python file with its top-level statements in a random order.

A curriculum can start on *scrambled* code: every statement is real, whole code (imports,
functions, classes, assignments), but the order that ties them together is gone; a later
phase then trains on the same kind of code in its real order.

How a file is cut (:func:`split_top_level`), with :mod:`ast` and the exact source lines:

1. the *head* stays first: any comments/blank lines before the first statement (shebang,
   encoding line, licence), the module docstring and ``from __future__`` imports (which
   must come first for the file to stay valid);
2. each other top-level statement is one *segment*: its lines from its first decorator to
   its last line, plus the comments and blank lines just above it (a comment usually
   describes what follows); statements sharing a line (``a = 1; b = 2``) form one segment;
3. the *tail*, comments and blank lines after the last statement, stays last.

The segments are shuffled with a generator seeded by ``(seed, sha256 of the file)``: the
same file and seed always give the same order, different files different orders. The result
holds exactly the original lines (each segment ends with a newline) and still compiles.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import random
import tokenize
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmlab.errors import DataError
from lmlab.io import atomic_write_text, expand_inputs

_MAX_LISTED = 20  # skipped files named in the report


def _decode(data: bytes) -> str | None:
    """Source bytes to text using the PEP 263 declaration (UTF-8 by default), or None."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError):
        return None


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _is_future(node: ast.stmt) -> bool:
    return isinstance(node, ast.ImportFrom) and node.module == "__future__"


def _first_line(node: ast.stmt) -> int:
    """1-based first line of a statement, its decorators included."""
    decorators = getattr(node, "decorator_list", None) or []
    return min([node.lineno] + [d.lineno for d in decorators])


def split_top_level(source: str) -> tuple[str, list[str], str]:
    """``(head, segments, tail)`` of a module; ``"".join`` of them is ``source`` (plus a final
    newline if it had none). Raises SyntaxError/ValueError when the source does not parse."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old code are not our business
        body = ast.parse(source).body
    lines = io.StringIO(source, newline="").readlines()  # ast's line breaks only (not \f, \u2028)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += "\n"
    # 1) group statements into line spans (0-based, end exclusive); a shared line merges them
    spans: list[list[Any]] = []  # [start, end, nodes]
    for node in body:
        start, end = _first_line(node) - 1, node.end_lineno or node.lineno
        if spans and start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
            spans[-1][2].append(node)
        else:
            spans.append([start, end, [node]])
    if not spans:
        return "".join(lines), [], ""
    # 2) the head: leading lines, then the docstring and __future__ imports
    head_end = spans[0][0]
    fixed = 0
    for i, (_, end, nodes) in enumerate(spans):
        if all(_is_future(n) or (i == 0 and _is_docstring(n)) for n in nodes):
            head_end, fixed = end, i + 1
        else:
            break
    # 3) each remaining span takes the comment/blank lines above it
    segments: list[str] = []
    prev = head_end
    for _start, end, _ in spans[fixed:]:
        segments.append("".join(lines[prev:end]))
        prev = end
    head = "".join(lines[:head_end])
    tail = "".join(lines[prev:]) if segments else "".join(lines[head_end:])
    return head, segments, tail


def scramble_source(source: str, seed: int = 0) -> str:
    """``source`` with its top-level statements shuffled (see the module docstring)."""
    head, segments, tail = split_top_level(source)
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
    rng = random.Random(f"{seed}:{digest}")  # str seeds hash with sha512: stable across runs
    order = list(range(len(segments)))
    rng.shuffle(order)
    return head + "".join(segments[i] for i in order) + tail


def scramble_files(
    inputs: Sequence[str | Path],
    out_jsonl: Path | str,
    seed: int = 0,
    suffixes: tuple[str, ...] = (".py",),
    text_field: str = "text",
) -> dict[str, Any]:
    """Scramble every file under ``inputs`` into ``out_jsonl``, one ``{text_field: code}`` per file.

    Files that are not text in their declared encoding or do not parse are skipped and counted
    (the first few named). The JSONL is written atomically. Returns a report dict.
    """
    files = expand_inputs([str(p) for p in inputs], suffixes=suffixes)
    report: dict[str, Any] = {
        "files": len(files),
        "scrambled": 0,
        "statements": 0,
        "skipped_undecodable": 0,
        "skipped_unparsable": 0,
        "skipped_files": [],
        "out": str(out_jsonl),
    }
    rows: list[str] = []
    for path in files:
        try:
            source = _decode(Path(path).read_bytes())
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror})") from None
        reason = "skipped_undecodable"
        if source is not None:
            try:
                head, segments, tail = split_top_level(source)
                text = scramble_source(source, seed)
                reason = ""
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                reason = "skipped_unparsable"
        if reason:
            report[reason] += 1
            if len(report["skipped_files"]) < _MAX_LISTED:
                report["skipped_files"].append(str(path))
            continue
        report["scrambled"] += 1
        report["statements"] += len(segments)
        rows.append(json.dumps({text_field: text}, ensure_ascii=False))
    if not rows:
        raise DataError(
            f"{', '.join(map(str, inputs))}: no file could be scrambled (none parses as Python)"
        )
    atomic_write_text(Path(out_jsonl), "".join(r + "\n" for r in rows))
    return report
