"""`lmlab data prepare` end to end on tiny corpora, with a BPE tokenizer trained in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmlab.cli import main as cli_main
from lmlab.config import PrepareConfig
from lmlab.data.filters import CodeFilter
from lmlab.data.prepare import format_report, prepare_dataset
from lmlab.data.shards import dtype_for_vocab, open_shards, read_meta
from lmlab.errors import DataError
from lmlab.tokenizer import load_tokenizer, train_tokenizer

CODE = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\n\n\ndef home():\n    return os.path.expanduser('~')\n",
    "for i in range(10):\n    print(i * i)\n",
    "values = [1, 2, 3]\ntotal = sum(values)\nprint(total)\n",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "with open('x') as f:\n    data = f.read()\n",
    "try:\n    import json\nexcept ImportError:\n    json = None\n",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    corpus = tmp_path_factory.mktemp("tokcorpus")
    for i, src in enumerate(CODE):
        (corpus / f"m{i}.py").write_text(src * 3, encoding="utf-8")
    out = tmp_path_factory.mktemp("tok") / "tok"
    train_tokenizer([str(corpus)], vocab_size=300, out=out, special_tokens=["<|endoftext|>"])
    return out


def write_corpus(folder: Path, docs: list[str], prefix: str = "m") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, src in enumerate(docs):
        p = folder / f"{prefix}{i:03d}.py"
        p.write_text(src, encoding="utf-8")
        paths.append(p)
    return paths


def prep(tok_dir: Path, inputs: list, out: Path, **kw):
    extra = {k: kw.pop(k) for k in ("shard_tokens", "piece_bytes", "code_filter") if k in kw}
    kw.setdefault("workers", 1)
    cfg = PrepareConfig(input=[str(i) for i in inputs], out=str(out), **kw)
    return prepare_dataset(
        cfg, tokenizer_path=str(tok_dir), progress=False, warn=lambda m: None, **extra
    )


def stream(out: Path, split: str) -> np.ndarray:
    shards = open_shards(out, split)
    return np.concatenate(shards) if shards else np.zeros(0, dtype=np.uint16)


def split_docs(tokens: np.ndarray, eot: int, tok) -> list[str]:
    """Decode a split's stream back into documents (every document ends with eot)."""
    assert len(tokens) == 0 or tokens[-1] == eot
    cuts = np.flatnonzero(tokens == eot)
    docs, start = [], 0
    for c in cuts:
        docs.append(tok.decode(tokens[start:c].tolist()))
        start = c + 1
    return docs


def test_packing_meta_and_split(tok_dir, tmp_path):
    write_corpus(tmp_path / "src", CODE)
    out = tmp_path / "ds"
    meta = prep(tok_dir, [tmp_path / "src"], out, val_fraction=0.3, seed=1)
    tok = load_tokenizer(tok_dir)
    assert read_meta(out) == {k: v for k, v in meta.items() if k != "path"}
    assert meta["format"] == "lmlab-tokens-v1" and meta["dtype"] == "uint16"
    assert meta["eot_id"] == tok.eot_id and meta["vocab_size"] == tok.vocab_size
    assert (
        meta["tokenizer"] == str(tok_dir.resolve())
        and meta["tokenizer_fingerprint"] == tok.fingerprint()
    )
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["documents"] >= 1 and val["documents"] >= 1
    assert train["documents"] + val["documents"] == len(CODE)
    got = {}
    for s in ("train", "val"):
        toks = stream(out, s)
        # packed: exactly the documents' tokens plus one eot each, no padding
        docs = split_docs(toks, tok.eot_id, tok)
        assert len(toks) == meta["splits"][s]["tokens"]
        assert len(toks) == sum(len(tok.encode_ordinary(d)) + 1 for d in docs)
        assert meta["splits"][s]["bytes"] == sum(len(d.encode()) for d in docs)
        got[s] = docs
    assert not set(got["train"]) & set(got["val"])  # no document in both splits
    assert sorted(got["train"] + got["val"]) == sorted(CODE)
    # each split keeps input order
    assert got["train"] == [d for d in CODE if d in got["train"]]
    assert (out / "meta.json").is_file() and not list(tmp_path.glob(".ds.tmp-*"))


def test_same_bytes_for_one_and_two_workers(tok_dir, tmp_path):
    docs = [f"{src}\n# variant {i}\n" for i in range(6) for src in CODE]
    write_corpus(tmp_path / "src", docs)
    (tmp_path / "src" / "bad.py").write_bytes(b"x = '\xff'\n\ny = 2\n")
    kw = {"val_fraction": 0.2, "filter": "code", "piece_bytes": 300}
    m1 = prep(tok_dir, [tmp_path / "src"], tmp_path / "w1", workers=1, **kw)
    m2 = prep(tok_dir, [tmp_path / "src"], tmp_path / "w2", workers=2, **kw)
    assert m1["splits"] == m2["splits"] and m1["filter"] == m2["filter"]
    assert m1["filter"]["files_skipped"] == {"undecodable": 1}
    for name in m1["splits"]["train"]["shards"] + m1["splits"]["val"]["shards"]:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_val_guarantee_and_train_never_empty(tok_dir, tmp_path):
    write_corpus(tmp_path / "src", CODE[:2])
    m = prep(tok_dir, [tmp_path / "src"], tmp_path / "a", val_fraction=1e-9)
    assert m["splits"]["val"]["documents"] == 1 and m["splits"]["train"]["documents"] == 1
    m = prep(tok_dir, [tmp_path / "src"], tmp_path / "b", val_fraction=0.999999)
    assert m["splits"]["train"]["documents"] >= 1
    m = prep(tok_dir, [tmp_path / "src"], tmp_path / "c", val_fraction=0.0)
    assert m["splits"]["val"] == {"tokens": 0, "documents": 0, "bytes": 0, "shards": []}
    assert open_shards(tmp_path / "c", "val") == []
    # one distinct document (twice): it cannot be in both splits, so val stays empty
    write_corpus(tmp_path / "dup", [CODE[0], CODE[0]])
    m = prep(tok_dir, [tmp_path / "dup"], tmp_path / "d", val_fraction=0.5)
    assert m["splits"]["train"]["documents"] == 2 and m["splits"]["val"]["documents"] == 0


def test_duplicates_never_straddle_splits(tok_dir, tmp_path):
    docs = [CODE[i % 5] for i in range(40)]  # many copies, no filter, so all are kept
    write_corpus(tmp_path / "src", docs)
    out = tmp_path / "ds"
    prep(tok_dir, [tmp_path / "src"], out, val_fraction=0.4, seed=3)
    tok = load_tokenizer(tok_dir)
    train = set(split_docs(stream(out, "train"), tok.eot_id, tok))
    val = set(split_docs(stream(out, "val"), tok.eot_id, tok))
    assert train and val and not train & val


def test_code_filter_reasons_reported(tok_dir, tmp_path, capsys):
    src = tmp_path / "src"
    write_corpus(src, CODE[:4])
    (src / "dup.py").write_text(CODE[0], encoding="utf-8")
    (src / "syntax.py").write_text("def broken(:\n    pass\n    pass\n", encoding="utf-8")
    (src / "tiny.py").write_text("x=1\n", encoding="utf-8")
    (src / "latin1.py").write_bytes(b"# caf\xe9 au lait\nx = 1\ny = 2\n")
    (src / "notes.txt").write_text("not python, ignored for a folder with --filter code\n")
    meta = prep(tok_dir, [src], tmp_path / "ds", filter="code", val_fraction=0.1)
    f = meta["filter"]
    assert f["files"] == 8  # .txt not taken from the folder
    assert f["dropped"] == {"too_short": 1, "syntax": 1, "duplicate": 1}
    assert f["files_skipped"] == {"undecodable": 1} and "latin1.py" in f["skipped_examples"][0]
    assert f["kept"] == 4 and f["documents"] == 7
    assert f["dropped_examples"] == {
        "too_short": [str(src / "tiny.py")],
        "syntax": [str(src / "syntax.py")],
    }
    assert f["thresholds"]["min_chars"] == CodeFilter().min_chars
    report = format_report(meta)
    assert "syntax 1" in report and "duplicate 1" in report and "undecodable 1" in report
    assert f"syntax: {src / 'syntax.py'}" in report
    # errors=replace keeps the latin-1 file instead
    meta = prep(tok_dir, [src], tmp_path / "ds2", filter="code", errors="replace")
    assert meta["filter"]["kept"] == 5 and not meta["filter"]["files_skipped"]


def test_shard_cap_splits_the_stream(tok_dir, tmp_path):
    write_corpus(tmp_path / "src", CODE)
    one = prep(tok_dir, [tmp_path / "src"], tmp_path / "one", val_fraction=0.0)
    many = prep(tok_dir, [tmp_path / "src"], tmp_path / "many", val_fraction=0.0, shard_tokens=37)
    n = one["splits"]["train"]["tokens"]
    assert len(many["splits"]["train"]["shards"]) == -(-n // 37) > 1
    assert many["splits"]["train"]["shards"][1] == "train_000001.bin"
    assert np.array_equal(stream(tmp_path / "one", "train"), stream(tmp_path / "many", "train"))


def test_text_and_jsonl_inputs(tok_dir, tmp_path):
    tok = load_tokenizer(tok_dir)
    t = tmp_path / "stories.txt"
    t.write_text("one story\n\ntwo story\n\n\n\nthree story\n", encoding="utf-8")
    meta = prep(tok_dir, [t], tmp_path / "a", separator=r"\n\n", val_fraction=0.0)
    assert split_docs(stream(tmp_path / "a", "train"), tok.eot_id, tok) == [
        "one story",
        "two story",
        "three story",
    ]
    assert meta["splits"]["train"]["documents"] == 3
    j = tmp_path / "d.jsonl"
    j.write_text(
        "\n".join(json.dumps({"body": f"doc {i}"}) for i in range(4)) + "\n", encoding="utf-8"
    )
    prep(tok_dir, [j], tmp_path / "b", text_field="body", val_fraction=0.0)
    assert split_docs(stream(tmp_path / "b", "train"), tok.eot_id, tok) == [
        f"doc {i}" for i in range(4)
    ]


def test_bad_inputs_leave_nothing(tok_dir, tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(DataError, match="nope: no such file"):
        prep(tok_dir, [tmp_path / "nope"], out)
    with pytest.raises(DataError, match="no-tok: tokenizer not found"):
        prep(tmp_path / "no-tok", [tmp_path], out)
    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:3: malformed JSON"):
        prep(tok_dir, [j], out)
    assert not out.exists() and not list(tmp_path.glob(".ds*"))
    # an existing dataset survives a failed re-run untouched
    write_corpus(tmp_path / "src", CODE[:3])
    prep(tok_dir, [tmp_path / "src"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match=r"d\.jsonl:3"):
        prep(tok_dir, [j], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # nothing survives the filter -> DataError, nothing written
    write_corpus(tmp_path / "bad", ["def f(:\n  pass\n  pass\n", "x\n"])
    with pytest.raises(DataError, match="no documents left"):
        prep(tok_dir, [tmp_path / "bad"], tmp_path / "empty", filter="code")
    assert not (tmp_path / "empty").exists()
    (tmp_path / "hollow").mkdir()
    (tmp_path / "hollow" / "e.txt").write_text("")
    with pytest.raises(DataError, match="no documents left"):
        prep(tok_dir, [tmp_path / "hollow"], tmp_path / "empty")


def test_tokenizer_without_eot(tmp_path):
    write_corpus(tmp_path / "src", CODE)
    tok = tmp_path / "tok"
    train_tokenizer([str(tmp_path / "src")], vocab_size=280, out=tok)
    with pytest.raises(DataError, match="no <\\|endoftext\\|> token"):
        prep(tok, [tmp_path / "src"], tmp_path / "ds")


def test_reader_checks(tok_dir, tmp_path):
    write_corpus(tmp_path / "src", CODE)
    out = tmp_path / "ds"
    meta = prep(tok_dir, [tmp_path / "src"], out, val_fraction=0.0)
    shard = out / meta["splits"]["train"]["shards"][0]
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(DataError, match="not a positive multiple of 2"):
        open_shards(out, "train")
    shard.unlink()
    with pytest.raises(DataError, match="shard listed in meta.json is missing"):
        open_shards(out, "train")
    with pytest.raises(DataError, match="dataset folder not found"):
        read_meta(tmp_path / "none")
    assert dtype_for_vocab(65536).name == "uint16" and dtype_for_vocab(65537).name == "uint32"


def test_cli(tok_dir, tmp_path, capsys):
    write_corpus(tmp_path / "src", CODE)
    out = tmp_path / "ds"
    rc = cli_main(
        [
            "data",
            "prepare",
            "--input",
            str(tmp_path / "src"),
            "--tokenizer",
            str(tok_dir),
            "--out",
            str(out),
            "--filter",
            "code",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "filter code: kept 8 of 8 documents" in printed
    rc = cli_main(
        [
            "data",
            "prepare",
            "--input",
            str(tmp_path / "missing"),
            "--tokenizer",
            str(tok_dir),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert (
        rc == 2 and err.startswith("lmlab: error: ") and "missing" in err and err.count("\n") == 1
    )


@pytest.mark.parametrize("shard_tokens", [10_000_000, 7])
def test_tail_split_is_the_end_of_the_stream(tok_dir, tmp_path, shard_tokens):
    """split=tail: val is exactly the last val_fraction of what a train-only run writes
    (int(n * 0.9) train tokens, as nanoGPT), the cut falling mid-document and across shards."""
    docs = [c * (i + 1) for i, c in enumerate(CODE)]
    files = write_corpus(tmp_path / "c", docs)
    whole = prep(tok_dir, files, tmp_path / "all", val_fraction=0.0)
    everything = stream(tmp_path / "all", "train")
    meta = prep(
        tok_dir, files, tmp_path / "tail", val_fraction=0.1, split="tail", shard_tokens=shard_tokens
    )
    n = len(everything)
    cut = int(n * 0.9)
    train, val = stream(tmp_path / "tail", "train"), stream(tmp_path / "tail", "val")
    assert np.array_equal(train, everything[:cut]) and np.array_equal(val, everything[cut:])
    sp = meta["splits"]
    assert (sp["train"]["tokens"], sp["val"]["tokens"]) == (cut, n - cut)
    assert sp["train"]["bytes"] + sp["val"]["bytes"] == whole["splits"]["train"]["bytes"]
    tok = load_tokenizer(tok_dir)
    assert sp["val"]["bytes"] == len(tok.decode_bytes([t for t in val.tolist() if t != tok.eot_id]))
    assert (
        read_meta(tmp_path / "tail")["splits"] == sp
    )  # shards on disk match meta (open_shards checks sizes)
    ends_in_val = int((val == tok.eot_id).sum())
    split_doc = int(everything[cut - 1] != tok.eot_id)
    assert sp["val"]["documents"] == ends_in_val >= 1
    assert sp["train"]["documents"] == len(docs) - ends_in_val + split_doc


def test_exclude_leaves_out_matching_files(tok_dir, tmp_path, capsys):
    """`--exclude GLOB ...` (prepare.exclude) drops files by path before reading them: a test
    folder and test_*.py files are left out, meta.json counts them, and a pattern that leaves
    an input empty is a one-line error that writes nothing."""
    src = tmp_path / "src"
    write_corpus(src, CODE[:4])
    (src / "tests").mkdir()
    (src / "tests" / "check.py").write_text("def test_a():\n    assert 1 + 1 == 2\n")
    (src / "test_b.py").write_text("def test_b():\n    assert True\n")
    out = tmp_path / "ds"
    args = ["data", "prepare", "--input", str(src), "--tokenizer", str(tok_dir)]
    rc = cli_main(
        [*args, "--out", str(out), "--filter", "code", "--workers", "1", "--no-progress"]
        + ["--exclude", "*/tests/*", "*/test_*.py"]
    )
    assert rc == 0
    assert "filter code: kept 4 of 4 documents" in capsys.readouterr().out
    meta = read_meta(out)
    assert meta["sources"][0]["files"] == 4 and meta["sources"][0]["excluded"] == 2
    everything = tmp_path / "all"
    assert cli_main([*args, "--out", str(everything), "--workers", "1", "--no-progress"]) == 0
    assert read_meta(everything)["sources"][0]["files"] == 6  # without --exclude: all of them
    capsys.readouterr()
    refused = tmp_path / "refused"
    rc = cli_main([*args, "--out", str(refused), "--no-progress", "--exclude", "*.py"])
    err = capsys.readouterr().err
    assert rc == 2 and "all 6 files match an exclude pattern (*.py)" in err
    assert err.count("\n") == 1 and not refused.exists()
