"""Reading documents: text with separators, JSONL with line numbers, parquet, bad bytes."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from lmlab.data.sources import (
    SourceSettings,
    entry_documents,
    file_format,
    iter_pieces,
    unescape_separator,
)
from lmlab.errors import DataError


def read_docs(files: list[Path], piece_bytes: int = 1 << 20, **kw) -> tuple[list, list]:
    """All documents of ``files`` the way prepare sees them, plus skipped-file notes."""
    settings = SourceSettings(**kw)
    skipped: list[tuple[str, str, str]] = []
    docs: list = []
    for piece in iter_pieces(
        files, settings, piece_bytes, lambda p, r, d: skipped.append((p, r, d))
    ):
        for entry in piece.entries:
            got, skip = entry_documents(entry, settings)
            if skip is not None:
                skipped.append((entry[1], "undecodable", skip))
            docs.extend(got)
    return docs, skipped


def test_unescape_separator():
    assert unescape_separator(r"\n\n") == "\n\n"
    assert unescape_separator("<|endoftext|>") == "<|endoftext|>"
    assert unescape_separator(r"a\tb\\n") == "a\tb\\n"


def test_file_format_auto():
    assert file_format(Path("a.jsonl"), "auto") == "jsonl"
    assert file_format(Path("a.JSONL.gz"), "auto") == "jsonl"
    assert file_format(Path("a.parquet"), "auto") == "parquet"
    assert file_format(Path("a.py"), "auto") == "text"
    assert file_format(Path("a.py"), "jsonl") == "jsonl"


def test_one_document_per_file_keeps_bytes_exactly(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("\ufeffx = 1\n\n\ny = 2\n", encoding="utf-8")  # BOM dropped, rest exact
    docs, skipped = read_docs([a])
    assert docs == ["x = 1\n\n\ny = 2\n"] and not skipped


@pytest.mark.parametrize("piece_bytes", [8, 1 << 20])
@pytest.mark.parametrize("sep", ["\n\n", "<|endoftext|>"])
def test_separator_split_same_for_any_piece_size(tmp_path, piece_bytes, sep):
    stories = [f"story {i} é\nline two of {i}" for i in range(30)]
    f = tmp_path / "s.txt"
    f.write_text(sep.join(stories) + sep + "\n", encoding="utf-8")
    docs, _ = read_docs([f], piece_bytes=piece_bytes, separator=sep)
    assert docs == stories


@pytest.mark.parametrize("piece_bytes", [1, 2, 3, 5, 1 << 20])
def test_overlapping_separator_splits_like_str_split(tmp_path, piece_bytes):
    text = "a===b==c====d=====e==" * 3 + "tail"
    f = tmp_path / "s.txt"
    f.write_text(text, encoding="utf-8")
    docs, _ = read_docs([f], piece_bytes=piece_bytes, separator="==")
    assert docs == [s.strip() for s in text.split("==") if s.strip()]


@pytest.mark.parametrize("piece_bytes", [16, 1 << 20])
def test_jsonl_and_malformed_line_number(tmp_path, piece_bytes):
    f = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": f"doc {i}", "id": i}) for i in range(10)]
    f.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    docs, _ = read_docs([f], piece_bytes=piece_bytes)
    assert docs == [f"doc {i}" for i in range(10)]
    lines[6] = '{"text": "unterminated'
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:7: malformed JSON"):
        read_docs([f], piece_bytes=piece_bytes)


def test_jsonl_missing_and_wrong_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n{"body": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing field 'text'"):
        read_docs([f])
    f.write_text('{"text": "a"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'text' is int"):
        read_docs([f])
    f.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:1: expected a JSON object"):
        read_docs([f])
    f.write_text('{"content": "x"}\n', encoding="utf-8")
    docs, _ = read_docs([f], text_field="content")
    assert docs == ["x"]


def test_gzip_jsonl(tmp_path):
    f = tmp_path / "d.jsonl.gz"
    with gzip.open(f, "wt", encoding="utf-8") as g:
        for i in range(5):
            g.write(json.dumps({"text": f"t{i}"}) + "\n")
    assert read_docs([f], piece_bytes=8)[0] == [f"t{i}" for i in range(5)]


@pytest.mark.parametrize("piece_bytes", [4, 1 << 20])  # small file whole / large file streamed
def test_invalid_utf8_skipped_or_replaced(tmp_path, piece_bytes):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait\n\nsecond part\n")
    good = tmp_path / "good.txt"
    good.write_text("fine\n", encoding="utf-8")
    docs, skipped = read_docs([bad, good], piece_bytes=piece_bytes, separator="\n\n")
    assert docs == ["fine"]
    assert len(skipped) == 1 and skipped[0][0] == str(bad) and skipped[0][1] == "undecodable"
    assert "0xe9 at byte offset 3" in skipped[0][2]
    docs, skipped = read_docs(
        [bad, good], piece_bytes=piece_bytes, separator="\n\n", errors="replace"
    )
    assert docs == ["caf\ufffd au lait", "second part", "fine"] and not skipped


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"], "n": [1, 2, 3]}), f)
    docs, _ = read_docs([f])
    assert docs == ["a", None, "c"]  # None is counted as an empty document by prepare
    with pytest.raises(DataError, match=r"d\.parquet: no column 'body'"):
        read_docs([f], text_field="body")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable parquet file"):
        read_docs([tmp_path / "junk.parquet"])


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    f = tmp_path / "d.parquet"
    f.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"d\.parquet: reading parquet needs pyarrow"):
        read_docs([f])


def test_exclude_patterns_match_below_the_input_folder_only(tmp_path):
    """A folder above the input (here one named test_x) never matches: patterns see the path
    below the input's folder, or below a glob's part before its first wildcard."""
    from lmlab.data.sources import expand_sources
    from lmlab.io import STDLIB_ALIAS, excluded, input_root, stdlib_path

    root = tmp_path / "test_x" / "src"
    (root / "tests").mkdir(parents=True)
    for rel in ("a.py", "tests/t.py", "test_b.py", "pkg/tests/u.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    pats = ("*/tests/*", "*/test_*.py")
    assert input_root(str(root)) == root and input_root(str(root / "a.py")) == root
    assert input_root(str(root / "**" / "*.py")) == root
    assert input_root(STDLIB_ALIAS) == stdlib_path()
    assert not excluded(root / "a.py", root, pats)
    assert excluded(root / "tests" / "t.py", root, pats)
    for item in (str(root), str(root / "**" / "*.py")):
        files, records = expand_sources([item], (".py",), pats)
        assert [f.name for f in files] == ["a.py"] and records[0]["excluded"] == 3
