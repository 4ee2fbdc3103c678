"""Mine instruction pairs from a codebase: each documented function becomes one example.

For every function or method with a docstring (found with :mod:`ast`) the pair is, in the Alpaca
layout used by the SFT data::

    {"instruction": "<docstring>\\n\\n<signature>", "input": "", "output": "<function source>"}

The output is the function's own source (decorators included, dedented to column 0), so a
model fine-tuned on the pairs learns to write a function from its description and signature.
Files that are not valid text in their declared encoding, or that do not parse, are skipped
and counted.
"""

from __future__ import annotations

import ast
import io
import json
import tokenize
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lmlab.errors import DataError
from lmlab.io import atomic_write_text, expand_inputs

_MAX_LISTED = 20  # skipped files named in the report


def _decode(data: bytes) -> str | None:
    """Source bytes to text using the PEP 263 encoding declaration (UTF-8 by default)."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError):
        return None


def signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """``def name(args) -> ret:`` as written (normalised by ``ast.unparse``)."""
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    ret = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{prefix} {node.name}({ast.unparse(node.args)}){ret}:"


def _function_source(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    assert node.end_lineno is not None
    indent = node.col_offset
    # Strip the function's own indentation; lines that have less (inside a string) stay as is.
    out = [
        ln[indent:] if ln[:indent].strip() == "" else ln
        for ln in lines[start - 1 : node.end_lineno]
    ]
    text = "".join(out)
    return text if text.endswith("\n") else text + "\n"


def pairs_from_source(source: str) -> Iterator[tuple[dict[str, str] | None, str]]:
    """Yield ``(pair, status)`` per function; pair is None when it was skipped.

    ``status`` is ``"ok"``, ``"no_docstring"`` or ``"unparsable"`` (the dedented source of that
    one function did not parse on its own). The source must already parse.
    """
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for node in sorted(funcs, key=lambda n: (n.lineno, n.col_offset)):  # source order
        doc = ast.get_docstring(node, clean=True)
        if not doc or not doc.strip():
            yield None, "no_docstring"
            continue
        output = _function_source(lines, node)
        try:
            ast.parse(output)
        except (SyntaxError, ValueError):
            yield None, "unparsable"
            continue
        pair = {"instruction": f"{doc.strip()}\n\n{signature(node)}", "input": "", "output": output}
        yield pair, "ok"


def mine_pairs(
    inputs: Sequence[str | Path],
    out_jsonl: Path | str,
    suffixes: tuple[str, ...] = (".py",),
    dedupe: bool = True,
) -> dict[str, Any]:
    """Mine every documented function under ``inputs`` into ``out_jsonl``; return a report.

    ``inputs`` are files, folders (searched for ``suffixes``) and globs. The JSONL file is
    written atomically: on any error the previous file, if any, is left untouched. The report
    counts files read and skipped (undecodable, unparsable; the first few are named), functions
    seen, those without a docstring, duplicates dropped and pairs written.
    """
    files = expand_inputs([str(p) for p in inputs], suffixes=suffixes)
    report: dict[str, Any] = {
        "files": len(files),
        "files_used": 0,
        "skipped_undecodable": 0,
        "skipped_unparsable": 0,
        "undecodable_files": [],
        "unparsable_files": [],
        "functions": 0,
        "no_docstring": 0,
        "function_unparsable": 0,
        "duplicates": 0,
        "pairs": 0,
        "out": str(out_jsonl),
    }
    seen: set[str] = set()
    rows: list[str] = []
    for path in files:
        try:
            source = _decode(Path(path).read_bytes())
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror})") from None
        if source is None:
            report["skipped_undecodable"] += 1
            if len(report["undecodable_files"]) < _MAX_LISTED:
                report["undecodable_files"].append(str(path))
            continue
        try:
            mined = list(pairs_from_source(source))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            report["skipped_unparsable"] += 1
            if len(report["unparsable_files"]) < _MAX_LISTED:
                report["unparsable_files"].append(str(path))
            continue
        report["files_used"] += 1
        for pair, status in mined:
            report["functions"] += 1
            if pair is None:
                report["no_docstring" if status == "no_docstring" else "function_unparsable"] += 1
                continue
            key = pair["instruction"] + "\0" + pair["output"]
            if dedupe and key in seen:
                report["duplicates"] += 1
                continue
            seen.add(key)
            rows.append(json.dumps(pair, ensure_ascii=False))
    report["pairs"] = len(rows)
    atomic_write_text(Path(out_jsonl), "".join(r + "\n" for r in rows))
    return report


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable summary of :func:`mine_pairs`'s report."""
    return (
        f"mined {report['pairs']} pairs from {report['functions']} functions in "
        f"{report['files_used']}/{report['files']} files -> {report['out']}\n"
        f"skipped: {report['skipped_undecodable']} undecodable files, "
        f"{report['skipped_unparsable']} unparsable files, {report['no_docstring']} functions "
        f"without docstring, {report['duplicates']} duplicates"
    )
