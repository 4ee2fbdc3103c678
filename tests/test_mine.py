"""Mining instruction pairs from a tiny made-up codebase."""

from __future__ import annotations

import ast
import json

import pytest

from lmlab.data.mine import format_report, mine_pairs, pairs_from_source
from lmlab.errors import DataError

SHAPES = '''\
"""Shapes: a tiny module for the mining test."""
import functools


def area(width: float, height: float = 1.0) -> float:
    """Area of a rectangle."""
    return width * height


def undocumented(x):
    return x


@functools.lru_cache(maxsize=None)
def fib(n):
    """Fibonacci number n.

    Slow without the cache.
    """
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class Circle:
    """A circle (class docstrings are not mined)."""

    def __init__(self, r):
        self.r = r

    def perimeter(self, *, precise=False):
        """Length of the boundary."""
        text = """
keep this string as written
"""
        return 6.28318 * self.r

    async def load(self):
        """Load from nowhere."""
        def helper():
            """Nested helper."""
            return 1
        return helper()
'''


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def make_codebase(root):
    pkg = root / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "shapes.py").write_text(SHAPES, encoding="utf-8")
    (pkg / "sub" / "copy_of_shapes.py").write_text(SHAPES, encoding="utf-8")  # duplicates
    (pkg / "sub" / "latin1.py").write_bytes(
        b'def f():\n    """caf\xe9"""\n'
    )  # not UTF-8, no cookie
    (pkg / "sub" / "declared.py").write_bytes(
        b'# -*- coding: latin-1 -*-\ndef g():\n    """caf\xe9"""\n    return 2\n'
    )
    (pkg / "broken.py").write_text('def broken(:\n    """Nope."""\n', encoding="utf-8")
    (pkg / "notes.txt").write_text('def ignored():\n    """Not a .py file."""\n', encoding="utf-8")
    return pkg


def test_mine_pairs_on_a_tiny_codebase(tmp_path):
    pkg = make_codebase(tmp_path)
    out = tmp_path / "out" / "pairs.jsonl"
    report = mine_pairs([pkg], out)
    rows = read_jsonl(out)
    assert report["files"] == 5 and report["files_used"] == 3
    assert report["skipped_undecodable"] == 1 and report["undecodable_files"][0].endswith(
        "latin1.py"
    )
    assert report["skipped_unparsable"] == 1 and report["unparsable_files"][0].endswith("broken.py")
    # shapes.py: 7 functions, 2 undocumented (undocumented, __init__); the copy adds duplicates.
    assert report["functions"] == 7 + 7 + 1
    assert report["no_docstring"] == 4 and report["duplicates"] == 5
    assert report["pairs"] == len(rows) == 6

    assert all(list(r) == ["instruction", "input", "output"] and r["input"] == "" for r in rows)
    by_name = {ast.parse(r["output"]).body[0].name: r for r in rows}
    assert set(by_name) == {"area", "fib", "perimeter", "load", "helper", "g"}
    assert by_name["area"]["instruction"] == (
        "Area of a rectangle.\n\ndef area(width: float, height: float=1.0) -> float:"
    )
    assert by_name["area"]["output"] == (
        "def area(width: float, height: float = 1.0) -> float:\n"
        '    """Area of a rectangle."""\n'
        "    return width * height\n"
    )
    assert by_name["fib"]["instruction"].startswith(
        "Fibonacci number n.\n\nSlow without the cache."
    )
    assert by_name["fib"]["output"].startswith("@functools.lru_cache(maxsize=None)\ndef fib(n):\n")
    assert by_name["perimeter"]["instruction"].endswith("def perimeter(self, *, precise=False):")
    assert "\nkeep this string as written\n" in by_name["perimeter"]["output"]  # string intact
    assert by_name["load"]["instruction"].endswith("async def load(self):")
    assert by_name["g"]["instruction"] == "café\n\ndef g():"
    for r in rows:
        compile(r["output"], "<mined>", "exec")  # every output is valid code on its own

    # Running again replaces the file (no appending); without dedupe duplicates are kept.
    report2 = mine_pairs([pkg / "shapes.py", pkg / "sub" / "copy_of_shapes.py"], out, dedupe=False)
    assert report2["pairs"] == 10 and len(read_jsonl(out)) == 10
    assert "mined 10 pairs" in format_report(report2)


def test_mine_pairs_errors_leave_old_output(tmp_path):
    out = tmp_path / "pairs.jsonl"
    out.write_text("old\n")
    with pytest.raises(DataError, match="no such file"):
        mine_pairs([tmp_path / "missing"], out)
    assert out.read_text() == "old\n"


def test_pairs_from_source_statuses():
    statuses = [status for _, status in pairs_from_source(SHAPES)]
    assert statuses.count("ok") == 5 and statuses.count("no_docstring") == 2
    with pytest.raises(SyntaxError):
        list(pairs_from_source("def broken(:\n"))
