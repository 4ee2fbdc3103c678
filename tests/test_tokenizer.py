"""Tokenizer: training, round trips, special tokens, determinism, char-level, streaming, errors."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.errors import DataError, LmlabError
from lmlab.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, train_tokenizer
from lmlab.tokenizer.stats import format_stats, tokenizer_stats

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINYSTORIES = DATA / "tinystories" / "tinystories_val_subset.txt"
TEXTS = DATA / "tokenizer-texts"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"
EOT = "<|endoftext|>"

TRICKY = [
    "",
    "plain ascii",
    "emoji 🙂👍🏽🇩🇪 and family 👨‍👩‍👧",
    "中文字符，日本語のテキスト，한국어",
    "control \x00\x01\x07\x1b[31m\x7f\x1c\x1d\x85\u2028\u2029 chars",
    "tabs\t\tand\r\nCRLF\r\n\r\n   trailing   \n\n\n",
    f"special inside{EOT}text{EOT}{EOT}and at end{EOT}",
    f"<|endoftext|<|endoftext|>>{EOT[:-1]}",
    "don't we'll they're I'm it's 'S 'LL",
    "\ufeffBOM and zero\u200bwidth and combining e\u0301",
]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data missing: {path} (expected ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tok_ts"
    train_tokenizer([str(need(TINYSTORIES))], vocab_size=2000, out=out, special_tokens=[EOT])
    return out


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> BPETokenizer:
    t = load_tokenizer(tok_dir)
    assert isinstance(t, BPETokenizer)
    return t


def text_files() -> list[Path]:
    files = sorted(p for p in need(TEXTS).iterdir() if p.is_file())
    assert len(files) >= 6
    return files


# ---- training output -------------------------------------------------------------------


def test_trained_folder_and_meta(tok_dir: Path, tok: BPETokenizer) -> None:
    meta = json.loads((tok_dir / "meta.json").read_text())
    assert meta["kind"] == "bpe" and meta["vocab_size"] == 2000 == tok.vocab_size
    assert meta["special_tokens"] == {EOT: 0} and meta["eot_id"] == 0 == tok.eot_id
    assert meta["fingerprint"] == tok.fingerprint()
    assert meta["inputs"][0]["path"] == str(TINYSTORIES.resolve())
    assert meta["inputs"][0]["bytes"] == TINYSTORIES.stat().st_size
    assert meta["skipped"] == [] and meta["num_skipped"] == 0
    assert (tok_dir / "tokenizer.json").is_file()
    # vocab is id -> bytes, merges are bytes pairs whose results are in the vocab
    assert len(tok.vocab) == 2000 and all(isinstance(b, bytes) for b in tok.vocab.values())
    assert {bytes([x]) for x in range(256)} <= set(tok.vocab.values())
    assert len(tok.merges) == 2000 - 256 - 1
    values = set(tok.vocab.values())
    assert all(a + b in values for a, b in tok.merges)
    assert tok.vocab[0] == EOT.encode()


def test_roundtrip_every_text_file(tok: BPETokenizer) -> None:
    for path in text_files():
        text = path.read_text(encoding="utf-8")
        assert tok.decode(tok.encode(text)) == text, path.name
        assert tok.decode(tok.encode_ordinary(text)) == text, path.name
        assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8")


def test_roundtrip_tricky_strings(tok: BPETokenizer) -> None:
    for s in TRICKY:
        assert tok.decode(tok.encode(s)) == s, repr(s)
        assert tok.decode(tok.encode_ordinary(s)) == s, repr(s)
    assert [tok.decode(ids) for ids in tok.encode_ordinary_batch(TRICKY)] == TRICKY


def test_lone_surrogates_become_replacement(tok: BPETokenizer) -> None:
    s = "a\ud800b"  # not representable in UTF-8
    assert (
        tok.encode(s)
        == tok.encode("a\ufffdb")
        == tok.encode_hf(s)
        == tok.encode_ordinary_batch([s])[0]
    )
    assert tok.decode(tok.encode(s)) == "a\ufffdb"


def test_special_tokens_atomic(tok: BPETokenizer) -> None:
    ids = tok.encode(f"a{EOT}b{EOT}")
    assert ids.count(0) == 2 and ids[-1] == 0
    assert tok.encode(f"x{EOT}y") == tok.encode("x") + [0] + tok.encode("y")  # never merged across
    ordinary = tok.encode_ordinary(f"x{EOT}y")
    assert 0 not in ordinary and tok.decode(ordinary) == f"x{EOT}y"


def test_decode_invalid_utf8_never_raises(tok: BPETokenizer) -> None:
    byte_id = {b: i for i, b in tok.vocab.items() if len(b) == 1}
    euro = "€".encode()  # 3 bytes
    ids = [byte_id[euro[0:1]], byte_id[euro[1:2]]] + tok.encode("ok")  # truncated char
    assert tok.decode(ids) == "\ufffdok"
    assert tok.decode([byte_id[b"\xff"], byte_id[b"\xfe"]]) == "\ufffd\ufffd"
    assert tok.decode_bytes([byte_id[b"\xff"]]) == b"\xff"
    with pytest.raises(LmlabError, match="token id 99999"):
        tok.decode([1, 99999])
    with pytest.raises(LmlabError, match="token id -1"):
        tok.decode([-1])


def test_training_is_deterministic(tmp_path: Path, tok_dir: Path) -> None:
    again = train_tokenizer(
        [str(TINYSTORIES)], vocab_size=2000, out=tmp_path / "again", special_tokens=[EOT]
    )
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (
        tok_dir / "tokenizer.json"
    ).read_bytes()
    assert again.fingerprint() == load_tokenizer(tok_dir).fingerprint()
    # ... and with one thread in a fresh process (tokenizers' training is parallel)
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    code = (
        "import sys; from lmlab.tokenizer import train_tokenizer; "
        "train_tokenizer([sys.argv[1]], 2000, sys.argv[2], special_tokens=['<|endoftext|>'])"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(TINYSTORIES), str(tmp_path / "one")], env=env, check=True
    )
    assert (tmp_path / "one" / "tokenizer.json").read_bytes() == (
        tok_dir / "tokenizer.json"
    ).read_bytes()


def test_many_special_tokens(tmp_path: Path) -> None:
    specials = [EOT, "<|pad|>", "<|im_start|>", "<|im_end|>", "[MASK]"]
    t = train_tokenizer(
        [str(need(TEXTS / "corpus.en"))],
        vocab_size=400,
        out=tmp_path / "t",
        special_tokens=specials,
    )
    assert t.special_tokens == {s: i for i, s in enumerate(specials)}
    text = "<|im_start|>user\nhi<|im_end|>[MASK]<|pad|><|pad|>" + EOT
    ids = t.encode(text)
    assert [i for i in ids if i < 5] == [2, 3, 4, 1, 1, 0]
    assert t.decode(ids) == text and t.encode_hf(text) == ids


def test_pickle_and_reload(tok: BPETokenizer) -> None:
    clone = pickle.loads(pickle.dumps(tok))
    s = "Once upon a time" + EOT
    assert clone.encode(s) == tok.encode(s) and clone.fingerprint() == tok.fingerprint()


def test_fingerprint_mismatch_detected(tmp_path: Path, tok_dir: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_text((tok_dir / "meta.json").read_text())
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:-1]
    (bad / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="fingerprint"):
        load_tokenizer(bad)


# ---- streaming ---------------------------------------------------------------------------


def test_encode_file_matches_whole_file(tok: BPETokenizer, tmp_path: Path) -> None:
    tricky = "\n".join(TRICKY) + "x  \n\n  y\r\n\r\nz\n\t\n" + "def f():\n    return 1\n" * 40
    f = tmp_path / "mixed.txt"
    f.write_text(
        (TEXTS / "corpus.en").read_text(encoding="utf-8")[:20000] + tricky,
        encoding="utf-8",
        newline="",
    )
    whole = f.read_bytes().decode("utf-8")
    for chunk in (1, 7, 64, 1000, 1 << 20):
        chunks = list(tok.encode_file(f, chunk_bytes=chunk))
        assert [i for c in chunks for i in c] == tok.encode_ordinary(whole), chunk
        if chunk == 64:
            assert len(chunks) > 50  # really streamed
    special = list(tok.encode_file(f, chunk_bytes=16, allow_special=True))
    assert [i for c in special for i in c] == tok.encode(whole)


def test_encode_file_memory_is_bounded(tok: BPETokenizer, tmp_path: Path) -> None:
    import tracemalloc

    f = tmp_path / "big.txt"
    line = "Once upon a time, a little dog ran to the park. 🙂\n"
    f.write_text(line * 40_000, encoding="utf-8")  # ~2.1 MB
    n = 0
    tok.encode_ordinary("warm up")  # build the lazy tiktoken Encoding outside the measurement
    tracemalloc.start()
    try:
        for ids in tok.encode_file(f, chunk_bytes=4096):
            n += len(ids)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 40_000 * len(tok.encode_ordinary(line))
    # Peak grows with chunk_bytes (~60x: text copies + a list of int ids), not with the file:
    # ~0.25 MB here, while encoding the whole 2 MB file at once peaks near 30 MB.
    assert peak < 1_000_000, peak


def test_encode_file_never_cuts_a_special_token(tmp_path: Path) -> None:
    t = train_tokenizer(
        [str(need(TEXTS / "corpus.en"))],
        vocab_size=300,
        out=tmp_path / "t",
        special_tokens=["<|a\nb|>", "z\n"],
    )
    f = tmp_path / "s.txt"
    text = "hello<|a\nb|>world\nok z\nzz\n" * 30
    f.write_text(text, encoding="utf-8")
    got = [i for c in t.encode_file(f, chunk_bytes=5, allow_special=True) for i in c]
    assert got == t.encode(text) and got.count(0) == 30


def test_encode_file_bad_utf8(tok: BPETokenizer, tmp_path: Path) -> None:
    f = tmp_path / "bad.txt"
    f.write_bytes(b"good line\n" * 10 + b"\xff\xfe bad\n")
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8 near byte 100"):
        list(tok.encode_file(f, chunk_bytes=8))
    with pytest.raises(DataError, match="cannot open"):
        list(tok.encode_file(tmp_path / "missing.txt"))


# ---- char-level --------------------------------------------------------------------------


def test_char_tokenizer(tmp_path: Path) -> None:
    text = need(SHAKESPEARE).read_text(encoding="utf-8")
    t = train_tokenizer(
        [str(SHAKESPEARE)], vocab_size=100, out=tmp_path / "c", kind="char", special_tokens=[EOT]
    )
    assert isinstance(t, CharTokenizer) and t.kind == "char"
    chars = sorted(set(text))
    assert len(chars) == 65 and t.vocab_size == 66 and t.eot_id == 65
    assert t.vocab == {**{i: c.encode() for i, c in enumerate(chars)}, 65: EOT.encode()}
    assert t.merges == []
    ids = t.encode(text[:5000])
    assert ids == [chars.index(c) for c in text[:5000]] and t.decode(ids) == text[:5000]
    assert t.encode(f"hi{EOT}you") == t.encode("hi") + [65] + t.encode("you")
    with pytest.raises(LmlabError, match=r"'\\u00e9'|'é' \(U\+00E9\) at character offset 3"):
        t.encode("abcé")
    loaded = load_tokenizer(tmp_path / "c")
    assert isinstance(loaded, CharTokenizer) and loaded.fingerprint() == t.fingerprint()
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["kind"] == "char"
    clone = pickle.loads(pickle.dumps(loaded))
    assert clone.encode("To be") == t.encode("To be")
    f = tmp_path / "part.txt"
    f.write_text(text[:3000], encoding="utf-8")
    assert [i for c in t.encode_file(f, chunk_bytes=50) for i in c] == t.encode(text[:3000])


def test_char_roundtrip_unicode(tmp_path: Path) -> None:
    src = tmp_path / "u.txt"
    src.write_text("".join(TRICKY), encoding="utf-8", newline="")
    t = train_tokenizer([str(src)], vocab_size=500, out=tmp_path / "c", kind="char")
    for s in TRICKY:
        assert t.decode(t.encode(s)) == s
    with pytest.raises(LmlabError, match="too small"):
        train_tokenizer([str(src)], vocab_size=10, out=tmp_path / "c2", kind="char")


# ---- bad inputs --------------------------------------------------------------------------


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.txt"):
        train_tokenizer([str(tmp_path / "nope.txt")], vocab_size=300, out=tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty corpus"):
        train_tokenizer([str(tmp_path / "empty.txt")], vocab_size=300, out=tmp_path / "t")
    with pytest.raises(DataError, match="empty corpus"):
        train_tokenizer(
            [str(tmp_path / "empty.txt")], vocab_size=300, out=tmp_path / "c", kind="char"
        )
    assert not (tmp_path / "t").exists() and not (tmp_path / "c").exists()


def test_vocab_size_too_small(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(
        LmlabError, match="needs at least 256 byte tokens \\+ 2 special tokens = 258"
    ):
        train_tokenizer(
            [str(tmp_path / "a.txt")],
            vocab_size=257,
            out=tmp_path / "t",
            special_tokens=["<a>", "<b>"],
        )
    t = train_tokenizer(
        [str(tmp_path / "a.txt")], vocab_size=258, out=tmp_path / "t", special_tokens=["<a>", "<b>"]
    )
    assert t.merges == [] and t.decode(t.encode("hello<b>")) == "hello<b>"


def test_bad_special_tokens_and_kind(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(LmlabError, match="given twice"):
        train_tokenizer(
            [str(tmp_path / "a.txt")],
            vocab_size=300,
            out=tmp_path / "t",
            special_tokens=["<a>", "<a>"],
        )
    with pytest.raises(LmlabError, match="non-empty"):
        train_tokenizer(
            [str(tmp_path / "a.txt")], vocab_size=300, out=tmp_path / "t", special_tokens=[""]
        )
    with pytest.raises(LmlabError, match="kind 'wordlevel'"):
        train_tokenizer(
            [str(tmp_path / "a.txt")], vocab_size=300, out=tmp_path / "t", kind="wordlevel"
        )


def test_invalid_utf8_files_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("the cat sat on the mat " * 50, encoding="utf-8")
    (corpus / "latin1.txt").write_bytes("café olé".encode("latin-1"))
    t = train_tokenizer([str(corpus)], vocab_size=300, out=tmp_path / "t")
    err = capsys.readouterr().err  # one line, in the wording data prepare uses
    assert (
        "lmlab: warning: " in err
        and "latin1.txt: not valid UTF-8 (byte 0xe9 at byte offset 3)" in err
    )
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert meta["num_skipped"] == 1 and meta["skipped"][0]["path"].endswith("latin1.txt")
    assert [Path(i["path"]).name for i in meta["inputs"]] == ["good.txt"]
    assert t.decode(t.encode("café")) == "café"
    # only invalid files: an empty corpus, named as such
    with pytest.raises(DataError, match="1 file\\(s\\) skipped"):
        train_tokenizer([str(corpus / "latin1.txt")], vocab_size=300, out=tmp_path / "t2")


def test_interrupted_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.txt").write_text("hello world " * 20)
    out = tmp_path / "t"
    train_tokenizer([str(tmp_path / "a.txt")], vocab_size=270, out=out)
    before = (out / "tokenizer.json").read_bytes()

    def boom(self: BPETokenizer, folder: Path) -> None:
        (Path(folder) / "tokenizer.json").write_text("{half")
        raise KeyboardInterrupt

    monkeypatch.setattr(BPETokenizer, "_write_files", boom)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer([str(tmp_path / "a.txt")], vocab_size=300, out=out)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer([str(tmp_path / "a.txt")], vocab_size=300, out=tmp_path / "fresh")
    assert (out / "tokenizer.json").read_bytes() == before  # old folder intact
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "t"]  # no temp leftovers


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(DataError, match="not a tokenizer folder"):
        load_tokenizer(tmp_path)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataError, match="x.json: not valid JSON"):
        load_tokenizer(tmp_path / "x.json")
    (tmp_path / "wp.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(DataError, match="wp.json: not a loadable tokenizer.json"):
        load_tokenizer(tmp_path / "wp.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="list.json: not a tokenizer.json"):
        load_tokenizer(tmp_path / "list.json")


# ---- stats and CLI -----------------------------------------------------------------------


def test_stats(tok: BPETokenizer, tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"\xff\xff")
    st = tokenizer_stats(tok, [str(TEXTS), str(tmp_path / "bad.txt")])
    texts = [p.read_text(encoding="utf-8") for p in text_files()]
    assert st["files"] == len(texts) and len(st["skipped"]) == 1
    assert st["bytes"] == sum(len(t.encode()) for t in texts)
    assert st["tokens"] == sum(len(tok.encode_ordinary(t)) for t in texts)
    assert st["bytes_per_token"] == pytest.approx(st["bytes"] / st["tokens"])
    assert 1.5 < st["bytes_per_token"] < 6 and st["encode_mb_per_s"] > 0
    out = format_stats(st)
    assert "bytes/token" in out and "MB/s" in out and "bad.txt" in out


def test_cli_train_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli_tok"
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--input",
                str(need(TEXTS / "corpus.en")),
                "--vocab-size",
                "300",
                "--special-token",
                EOT,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "vocab 300" in capsys.readouterr().out
    assert (
        main(
            [
                "tokenizer",
                "stats",
                "--tokenizer",
                str(out),
                "--input",
                str(TEXTS / "german.txt"),
                "--json",
            ]
        )
        == 0
    )
    st = json.loads(capsys.readouterr().out)
    assert st["files"] == 1 and st["tokens"] > 0
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--input",
                str(tmp_path / "nope"),
                "--vocab-size",
                "300",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "lmlab: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                "tokenizer",
                "train",
                "--input",
                "x",
                "--vocab-size",
                "300",
                "--out",
                "y",
                "--kind",
                "wordlevel",
            ]
        )


def test_exclude_leaves_files_out_of_the_tokenizer(tmp_path):
    """tokenizer.exclude / --exclude: the excluded files' text is not trained on (a char
    tokenizer has exactly the kept files' characters) and meta.json lists only the kept files."""
    src = tmp_path / "src"
    (src / "tests").mkdir(parents=True)
    (src / "a.py").write_text("abc\n")
    (src / "tests" / "t.py").write_text("xyz\n")
    tok = train_tokenizer(
        [str(src)], vocab_size=50, out=tmp_path / "tok", kind="char", exclude=["*/tests/*"]
    )
    assert set(tok.chars) == {"a", "b", "c", "\n"}
    assert [Path(i["path"]).name for i in tok.meta["inputs"]] == ["a.py"]
    everything = train_tokenizer([str(src)], vocab_size=50, out=tmp_path / "all", kind="char")
    assert {"x", "y", "z"} <= set(everything.chars)


def test_the_code_filter_leaves_data_files_and_duplicates_out_of_the_tokenizer(tmp_path):
    """tokenizer.filter = "code" / --filter code: the tokenizer trains on the files `lmlab data
    prepare --filter code` keeps; meta.json lists the kept files and counts the rest by reason."""
    src = tmp_path / "src"
    src.mkdir()
    code = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
    (src / "a.py").write_text(code)
    (src / "b.py").write_text(code)  # an exact copy of a.py
    table = "MAP = (\n" + "".join(f"    'quux{i}'  # QUUX NUMBER {i}\n" for i in range(30)) + ")\n"
    (src / "table.py").write_text(table)  # data: 30 of its 32 lines one literal
    (src / "broken.py").write_text("def f(:\n    return zzz_value\n")
    tok = train_tokenizer(
        [str(src)], vocab_size=50, out=tmp_path / "tok", kind="char", filter="code"
    )
    assert "q" not in tok.chars and "z" not in tok.chars
    assert [Path(i["path"]).name for i in tok.meta["inputs"]] == ["a.py"]
    assert tok.meta["filter"]["dropped"] == {"literal_data": 1, "syntax": 1, "duplicate": 1}
    unfiltered = train_tokenizer([str(src)], vocab_size=50, out=tmp_path / "all", kind="char")
    assert {"q", "z"} <= set(unfiltered.chars) and "filter" not in unfiltered.meta
    with pytest.raises(LmlabError, match="filter 'stack'"):
        train_tokenizer([str(src)], vocab_size=50, out=tmp_path / "x", kind="char", filter="stack")


def test_a_corpus_the_filter_empties_says_what_it_left_out(tmp_path):
    (tmp_path / "t.py").write_text("MAP = (\n" + "    'quux'  # QUUX\n" * 30 + ")\n")
    with pytest.raises(DataError, match="the filter left out 1 literal_data"):
        train_tokenizer([str(tmp_path)], vocab_size=300, out=tmp_path / "tok", filter="code")


def test_cli_tokenizer_train_takes_the_filter(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("def add(a, b):\n    return a + b\n")
    (src / "t.py").write_text("MAP = (\n" + "    'quux'  # QUUX\n" * 30 + ")\n")
    args = ["tokenizer", "train", "--input", str(src), "--vocab-size", "50", "--kind", "char"]
    assert main([*args, "--filter", "code", "--out", str(tmp_path / "tok")]) == 0
    assert "q" not in load_tokenizer(tmp_path / "tok").chars
    out = capsys.readouterr().out
    assert "tokenizer: code filter: kept 1 files, left out literal_data 1" in out
