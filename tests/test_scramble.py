"""Statement shuffling (lmlab.data.scramble): whole statements, attached comments, determinism."""

from __future__ import annotations

import json

import pytest

from lmlab.data.scramble import scramble_files, scramble_source, split_top_level
from lmlab.errors import DataError
from lmlab.io import stdlib_path

SOURCE = '''#!/usr/bin/env python
"""Module docstring."""
from __future__ import annotations

import os
import sys

# the answer, documented
ANSWER = 42


@decorator(1)
@other
def f(x):
    # inside
    return x + 1


class C:
    """A class."""

    def m(self):
        return f(ANSWER)
a = 1; b = 2
if __name__ == "__main__":
    print(f(1))
# trailing comment
'''


def test_split_keeps_every_line_and_statements_whole():
    head, segments, tail = split_top_level(SOURCE)
    assert head + "".join(segments) + tail == SOURCE
    assert head.startswith("#!/usr/bin/env python\n") and head.endswith(
        "from __future__ import annotations\n"
    )
    assert len(segments) == 7  # os, sys, ANSWER, f, C, "a = 1; b = 2", the __main__ block
    by_start = {seg.strip().splitlines()[0]: seg for seg in segments}
    # the comment above ANSWER travels with it; decorators stay on their function
    assert "# the answer, documented\nANSWER = 42\n" in by_start["# the answer, documented"]
    f_seg = next(s for s in segments if "def f(x):" in s)
    assert "@decorator(1)\n@other\ndef f(x):\n    # inside\n    return x + 1\n" in f_seg
    assert any(s.strip() == "a = 1; b = 2" for s in segments)  # a shared line is one segment
    assert tail == "# trailing comment\n"


def test_scramble_is_a_permutation_that_compiles_and_is_deterministic():
    out = scramble_source(SOURCE, seed=0)
    compile(out, "<scrambled>", "exec")
    head, segments, tail = split_top_level(SOURCE)
    assert out.startswith(head) and out.endswith(tail)
    middle = out[len(head) : len(out) - len(tail)]
    assert sorted(segments) == sorted(split_segments(middle, segments))
    assert scramble_source(SOURCE, seed=0) == out  # same seed, same order
    orders = {scramble_source(SOURCE, seed=s) for s in range(6)}
    assert len(orders) > 1  # the seed matters
    for o in orders:  # every seed's output is a permutation of the same segments
        assert sorted(split_segments(o[len(head) : len(o) - len(tail)], segments)) == sorted(
            segments
        )


def split_segments(text: str, segments: list[str]) -> list[str]:
    """Cut ``text`` back into the known segments (greedy, each used once)."""
    found, rest, pool = [], text, list(segments)
    while rest:
        seg = next(s for s in pool if rest.startswith(s))
        pool.remove(seg)
        found.append(seg)
        rest = rest[len(seg) :]
    return found


def test_no_final_newline_and_edge_files():
    head, segments, tail = split_top_level("x = 1\ny = 2")
    assert segments == ["x = 1\n", "y = 2\n"] and head == "" and tail == ""
    assert split_top_level("") == ("", [], "")
    assert split_top_level('"""only a docstring"""\n') == ('"""only a docstring"""\n', [], "")
    # a form feed is not a line break for Python: lines must still line up with ast
    src = "x = 1\n\x0c\ndef g():\n    return 2\n"
    assert "".join(split_top_level(src)[1]) == src
    with pytest.raises(SyntaxError):
        split_top_level("def (:\n")


def test_scramble_files_writes_jsonl_and_counts_skips(tmp_path):
    (tmp_path / "a.py").write_text(SOURCE)
    (tmp_path / "bad.py").write_text("def (:\n")
    (tmp_path / "latin.py").write_bytes(b"x = '\xff'\n")
    out = tmp_path / "out.jsonl"
    report = scramble_files([str(tmp_path)], out, seed=3)
    assert report["files"] == 3 and report["scrambled"] == 1
    assert report["skipped_unparsable"] == 1 and report["skipped_undecodable"] == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"text": scramble_source(SOURCE, seed=3)}]
    with pytest.raises(DataError, match="no file could be scrambled"):
        scramble_files([str(tmp_path / "bad.py")], tmp_path / "x.jsonl")


def test_stdlib_files_stay_valid():
    files = sorted((stdlib_path() / "json").glob("*.py"))
    if not files:
        pytest.skip("no stdlib json package found")
    for f in files:
        src = f.read_text(encoding="utf-8")
        out = scramble_source(src, seed=1)
        compile(out, str(f), "exec")
        assert sorted(out.splitlines()) == sorted(src.splitlines())
