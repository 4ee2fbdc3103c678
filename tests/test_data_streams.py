"""Datasets streamed into shards: hf: names, save_to_disk folders, hf: file globs, prefix limits.

Everything runs offline on datasets the tests build; the hub itself is stood in for by a
patched ``datasets.load_dataset`` returning a real (unbounded) ``IterableDataset``.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from lmlab.cli import main as cli_main
from lmlab.config import PrepareConfig
from lmlab.data import streams
from lmlab.data.filters import CodeFilter
from lmlab.data.prepare import format_report, prepare_dataset
from lmlab.data.shards import open_shards
from lmlab.data.sources import SourceSettings, iter_pieces
from lmlab.data.streams import StreamSource, parse_stream_input, stream_batches
from lmlab.errors import ConfigError, DataError
from lmlab.pipeline import stage_key
from lmlab.tokenizer import load_tokenizer, train_tokenizer

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

# documents of different lengths, some non-ASCII (bytes != characters), one empty
DOCS = [
    f"story {i}: the cat sat on mat {i} \u00e9" + " and then it slept" * (i % 4) for i in range(59)
]
DOCS.insert(30, "")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    corpus = tmp_path_factory.mktemp("tokcorpus") / "c.txt"
    corpus.write_text("\n".join(DOCS), encoding="utf-8")
    out = tmp_path_factory.mktemp("tok") / "tok"
    train_tokenizer([str(corpus)], vocab_size=300, out=out, special_tokens=["<|endoftext|>"])
    return out


def prep(tok_dir: Path, inputs: list, out: Path, piece_bytes: int = 1 << 20, **kw) -> dict:
    kw.setdefault("workers", 1)
    kw.setdefault("val_fraction", 0.0)
    cfg = PrepareConfig(input=[str(i) for i in inputs], out=str(out), **kw)
    return prepare_dataset(
        cfg,
        tokenizer_path=str(tok_dir),
        progress=False,
        warn=lambda m: None,
        piece_bytes=piece_bytes,
    )


def train_docs(out: Path, tok) -> list[str]:
    """The train split decoded back into documents (each ends with eot)."""
    tokens = np.concatenate(open_shards(out, "train"))
    cuts = np.flatnonzero(tokens == tok.eot_id)
    return [
        tok.decode(tokens[a + 1 if i else 0 : b].tolist())
        for i, (a, b) in enumerate(zip([0, *cuts], cuts))
    ]


def shard_bytes(out: Path) -> bytes:
    return b"".join(
        (out / s).read_bytes()
        for s in json.loads((out / "meta.json").read_text())["splits"]["train"]["shards"]
    )


def save(tmp_path: Path, name: str, docs: list[str], num_shards: int = 1) -> Path:
    folder = tmp_path / name
    datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))}).save_to_disk(
        str(folder), num_shards=num_shards
    )
    return folder


NONEMPTY = [d for d in DOCS if d]


# ---- spellings ---------------------------------------------------------------------------------


def test_parse_stream_inputs(tmp_path):
    assert parse_stream_input("hf:roneneldan/TinyStories") == StreamSource(
        "hf:roneneldan/TinyStories", "hub", "roneneldan/TinyStories"
    )
    src = parse_stream_input("hf:allenai/c4:en#validation")
    assert (src.kind, src.name, src.config, src.split) == ("hub", "allenai/c4", "en", "validation")
    with pytest.raises(ConfigError, match="no dataset name"):
        parse_stream_input("hf:#train")
    saved = save(tmp_path, "saved", DOCS[:3])
    for spec in (str(saved), f"hf:{saved}"):
        assert parse_stream_input(spec).kind == "disk"
    assert parse_stream_input(f"{saved}#test") == StreamSource(
        f"{saved}#test", "disk", str(saved), split="test"
    )
    pq.write_table(pa.table({"text": DOCS[:3]}), tmp_path / "a.parquet")
    assert parse_stream_input(f"hf:{tmp_path}/*.parquet").kind == "files"
    with pytest.raises(ConfigError, match="one split and no config"):
        parse_stream_input(f"hf:{tmp_path}/*.parquet#test")
    (tmp_path / "plain").mkdir()
    assert parse_stream_input(f"hf:{tmp_path / 'plain'}").kind == "folder"
    # plain inputs that are not save_to_disk folders stay files, folders and globs
    (tmp_path / "plain" / "state.json").write_text('{"step": 3}')  # someone else's state.json
    assert parse_stream_input(str(tmp_path / "plain")) is None
    assert parse_stream_input(str(tmp_path / "a.parquet")) is None
    assert parse_stream_input(f"{tmp_path}/*.parquet") is None


# ---- local datasets through the streaming path -----------------------------------------------


@pytest.mark.parametrize("piece_bytes", [64, 1 << 20])
def test_saved_dataset_gives_the_shards_its_documents_give_as_files(tok_dir, tmp_path, piece_bytes):
    saved = save(tmp_path, "saved", DOCS, num_shards=3)  # three Arrow files, read in order
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    ref = prep(tok_dir, [jsonl], tmp_path / "ref", piece_bytes)
    tok = load_tokenizer(tok_dir)
    for i, spec in enumerate([str(saved), f"hf:{saved}"]):
        out = tmp_path / f"ds{i}"
        meta = prep(tok_dir, [spec], out, piece_bytes)
        assert train_docs(out, tok) == NONEMPTY
        assert shard_bytes(out) == shard_bytes(tmp_path / "ref")
        assert meta["splits"] == ref["splits"] | {"train": meta["splits"]["train"]}
        assert meta["filter"]["documents"] == len(DOCS) and meta["filter"]["dropped"] == {
            "empty": 1
        }
        assert meta["filter"]["files"] == 0 and meta["filter"]["streams"] == 1
        assert meta["sources"] == [
            {"input": spec, "kind": "disk", "path": str(saved.resolve()), "split": None}
        ]


def test_dataset_dict_splits(tok_dir, tmp_path):
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": DOCS[:10]}),
            "test": datasets.Dataset.from_dict({"text": DOCS[10:14]}),
        }
    ).save_to_disk(str(folder))
    tok = load_tokenizer(tok_dir)
    meta = prep(tok_dir, [f"hf:{folder}#test"], tmp_path / "t")
    assert train_docs(tmp_path / "t", tok) == DOCS[10:14]
    assert meta["sources"][0]["split"] == "test"
    meta = prep(tok_dir, [str(folder)], tmp_path / "d")  # no #SPLIT: train
    assert train_docs(tmp_path / "d", tok) == DOCS[:10] and meta["sources"][0]["split"] == "train"
    with pytest.raises(DataError, match=r"#nope: no split 'nope' \(splits: train, test\)"):
        prep(tok_dir, [f"hf:{folder}#nope"], tmp_path / "x")
    single = save(tmp_path, "single", DOCS[:3])
    with pytest.raises(DataError, match="single saved Dataset.*drop '#test'"):
        prep(tok_dir, [f"{single}#test"], tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_hf_file_globs_stream_like_the_file_reader(tok_dir, tmp_path, suffix):
    shards = tmp_path / "shards"
    shards.mkdir()
    for n, part in enumerate((DOCS[:25], DOCS[25:])):
        if suffix == "parquet":
            pq.write_table(
                pa.table({"text": part, "id": list(range(len(part)))}), shards / f"p{n}.parquet"
            )
        else:
            (shards / f"p{n}.jsonl").write_text(
                "".join(json.dumps({"text": d, "id": 1}) + "\n" for d in part), encoding="utf-8"
            )
    glob = f"{shards}/*.{suffix}"
    meta = prep(tok_dir, [f"hf:{glob}"], tmp_path / "stream", piece_bytes=128)
    prep(tok_dir, [glob], tmp_path / "files", piece_bytes=128)  # lmlab's own file reader
    assert shard_bytes(tmp_path / "stream") == shard_bytes(tmp_path / "files")
    assert train_docs(tmp_path / "stream", load_tokenizer(tok_dir)) == NONEMPTY
    assert meta["sources"] == [
        {
            "input": f"hf:{glob}",
            "kind": "files",
            "files": [str((shards / f"p{n}.{suffix}").resolve()) for n in range(2)],
        }
    ]


def test_mixed_data_files_and_missing_column(tok_dir, tmp_path):
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text('{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="all be parquet or all JSONL"):
        prep(tok_dir, [f"hf:{tmp_path}/*.*"], tmp_path / "x")
    saved = save(tmp_path, "saved", DOCS[:3])
    for spec in (str(saved), f"hf:{tmp_path}/a.parquet"):
        with pytest.raises(DataError, match=r"no column 'body' \(columns: .*text"):
            prep(tok_dir, [spec], tmp_path / "x", text_field="body")
    assert not (tmp_path / "x").exists()


# ---- prefixes --------------------------------------------------------------------------------


def _write_input(tmp_path: Path, kind: str) -> str:
    if kind == "text":
        (tmp_path / "s.txt").write_text(
            "<sep>".join(DOCS), encoding="utf-8"
        )  # the empty part is skipped
        return str(tmp_path / "s.txt")
    if kind == "jsonl":
        (tmp_path / "d.jsonl").write_text(
            "".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8"
        )
        return str(tmp_path / "d.jsonl")
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "d.parquet")
    if kind == "parquet":
        return str(tmp_path / "d.parquet")
    if kind == "hf-parquet":
        return f"hf:{tmp_path / 'd.parquet'}"
    return str(save(tmp_path, "saved", DOCS, num_shards=2))


@pytest.mark.parametrize("piece_bytes", [48, 1 << 20])
@pytest.mark.parametrize("kind", ["text", "jsonl", "parquet", "hf-parquet", "disk"])
def test_prefix_limits_cut_at_the_same_document_for_any_input(tok_dir, tmp_path, kind, piece_bytes):
    spec = _write_input(tmp_path, kind)
    extra = {"separator": "<sep>"} if kind == "text" else {}
    docs = NONEMPTY if kind == "text" else DOCS  # a text file's empty part is not a document
    tok = load_tokenizer(tok_dir)
    meta = prep(tok_dir, [spec], tmp_path / "n", piece_bytes, max_docs=17, **extra)
    assert train_docs(tmp_path / "n", tok) == docs[:17]
    assert meta["limits"] | {"bytes_read": 0} == {
        "max_docs": 17,
        "max_bytes": 0,
        "stopped_by": "max_docs",
        "documents_read": 17,
        "bytes_read": 0,
    }
    assert meta["limits"]["bytes_read"] == sum(len(d.encode()) for d in docs[:17])
    # the longest prefix whose UTF-8 bytes add up to at most max_bytes (the 24th would pass it)
    budget = sum(len(d.encode()) for d in docs[:24]) - 1
    meta = prep(tok_dir, [spec], tmp_path / "b", piece_bytes, max_bytes=budget, **extra)
    assert train_docs(tmp_path / "b", tok) == docs[:23]
    assert meta["limits"]["stopped_by"] == "max_bytes" and meta["limits"]["documents_read"] == 23
    assert meta["filter"]["documents"] == 23
    # both: whichever comes first; a limit the input never reaches changes nothing
    meta = prep(
        tok_dir, [spec], tmp_path / "both", piece_bytes, max_docs=5, max_bytes=budget, **extra
    )
    assert (
        train_docs(tmp_path / "both", tok) == docs[:5]
        and meta["limits"]["stopped_by"] == "max_docs"
    )
    meta = prep(tok_dir, [spec], tmp_path / "all", piece_bytes, max_docs=10_000, **extra)
    assert meta["limits"]["stopped_by"] is None and meta["filter"]["documents"] == len(docs)


def test_prefix_same_bytes_for_one_and_two_workers(tok_dir, tmp_path):
    spec = _write_input(tmp_path, "jsonl")
    prep(tok_dir, [spec], tmp_path / "w1", piece_bytes=64, max_docs=41, workers=1, val_fraction=0.2)
    prep(tok_dir, [spec], tmp_path / "w2", piece_bytes=64, max_docs=41, workers=2, val_fraction=0.2)
    for name in ("train_000000.bin", "val_000000.bin"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_prefix_limits_across_inputs_and_with_the_code_filter(tok_dir, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    for i, src in enumerate(["def f(:\n", "x = 1\ny = 2\nz = 3\n", "def g():\n    return 1\n"]):
        (code / f"m{i}.py").write_text(src, encoding="utf-8")
    saved = save(tmp_path, "saved", ["a = 1\nb = 2\nc = 3\n", "def h(:\n", "q = 4\nr = 5\ns = 6\n"])
    # 5 documents read in input order: 3 files, then 2 rows; the filter then drops the syntax errors
    cfg = PrepareConfig(
        input=[str(code), str(saved)],
        out=str(tmp_path / "ds"),
        workers=1,
        val_fraction=0.0,
        filter="code",
        max_docs=5,
    )
    meta = prepare_dataset(
        cfg,
        tokenizer_path=str(tok_dir),
        progress=False,
        warn=lambda m: None,
        code_filter=CodeFilter(min_chars=1, min_lines=1),
    )
    assert meta["filter"]["documents"] == 5 and meta["filter"]["dropped"] == {"syntax": 2}
    assert train_docs(tmp_path / "ds", load_tokenizer(tok_dir)) == [
        "x = 1\ny = 2\nz = 3\n",
        "def g():\n    return 1\n",
        "a = 1\nb = 2\nc = 3\n",
    ]
    assert [s["kind"] for s in meta["sources"]] == ["paths", "disk"]
    assert "stopped at max_docs = 5" in format_report(meta)


# ---- the hub, stood in for -------------------------------------------------------------------


class _Hub:
    """A fake ``datasets.load_dataset``: an unbounded generator-backed stream, rows counted as pulled."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.pulled = 0

    def rows(self):
        i = 0
        while True:
            self.pulled += 1
            if self.pulled > 100_000:  # a reader that materialised the stream would get here
                raise AssertionError("the stream was read far past the prefix")
            yield {"text": f"row {i} " + "x" * (i % 7), "label": i}
            i += 1

    def load_dataset(self, path, name=None, split=None, streaming=False, **kw):
        self.calls.append((path, name, split, streaming))
        return datasets.IterableDataset.from_generator(self.rows)


@pytest.fixture
def hub(monkeypatch) -> _Hub:
    fake = _Hub()
    monkeypatch.setattr(datasets, "load_dataset", fake.load_dataset)
    monkeypatch.setattr(streams, "_offline_reason", lambda: None)
    return fake


def test_unbounded_hub_stream_is_read_only_as_far_as_the_prefix(tok_dir, tmp_path, hub):
    piece_bytes = 256
    meta = prep(
        tok_dir, ["hf:someone/stories:en#validation"], tmp_path / "ds", piece_bytes, max_docs=300
    )
    assert hub.calls == [("someone/stories", "en", "validation", True)]
    expected = [f"row {i} " + "x" * (i % 7) for i in range(300)]
    assert train_docs(tmp_path / "ds", load_tokenizer(tok_dir)) == expected
    # read-ahead is one piece (~piece_bytes of rows of >= 6 bytes) plus one batch, not the stream
    rows_per_batch = max(1, piece_bytes // 2048)
    assert 300 <= hub.pulled <= 300 + piece_bytes // 6 + 2 * rows_per_batch + 1
    assert meta["sources"] == [
        {
            "input": "hf:someone/stories:en#validation",
            "kind": "hub",
            "name": "someone/stories",
            "config": "en",
            "split": "validation",
        }
    ]
    assert meta["limits"]["stopped_by"] == "max_docs" and meta["filter"]["streams"] == 1


def test_reader_is_lazy_all_the_way_down(hub):
    """Structural memory check: every stage of the stream reader is a generator, and the first
    piece of an unbounded stream comes back (a reader that built a list would never return)."""
    src = parse_stream_input("hf:someone/stories")
    batches = stream_batches(src, "text", rows=4)
    assert inspect.isgenerator(batches)
    assert next(batches) == ["row 0 ", "row 1 x", "row 2 xx", "row 3 xxx"]
    batches.close()
    pieces = iter_pieces([src], SourceSettings(), piece_bytes=100, on_skip=lambda *a: None)
    assert inspect.isgenerator(pieces)
    first = next(pieces)
    assert first.nbytes >= 100 and all(e[0] == "strings" for e in first.entries)
    pieces.close()
    assert hub.pulled < 100  # a few pieces' worth, from a stream with no end


def test_hub_names_and_errors_in_one_line(tok_dir, tmp_path, monkeypatch, capsys):
    def run(spec: str) -> tuple[int, str]:
        rc = cli_main(
            [
                "data",
                "prepare",
                "--input",
                spec,
                "--tokenizer",
                str(tok_dir),
                "--out",
                str(tmp_path / "ds"),
                "--no-progress",
            ]
        )
        return rc, capsys.readouterr().err

    def must_not_load(*a, **k):
        raise AssertionError("load_dataset called although offline")

    monkeypatch.setattr(datasets, "load_dataset", must_not_load)
    # 1. offline by environment: fails before datasets is asked (it would retry ~30 s)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, err = run("hf:someone/stories")
    assert rc == 2 and err == (
        "lmlab: error: hf:someone/stories: offline, HF_HUB_OFFLINE is set; give a local "
        "copy instead (a save_to_disk folder, or parquet/JSONL files)\n"
    )
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    # 2. the hub does not answer the one probe request

    class NoNetwork:
        def head(self, url, timeout):
            assert timeout <= streams.PROBE_SECONDS
            raise ConnectionError("[Errno -2] Name or service not known")

    hf_utils = pytest.importorskip("huggingface_hub.utils")
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_utils, "get_session", lambda: NoNetwork())
    rc, err = run("hf:someone/stories")
    assert (
        rc == 2
        and err.count("\n") == 1
        and "offline, the hub did not answer (ConnectionError" in err
    )

    # 3. the hub answers, but the name, config or split is wrong
    class Answers:
        def head(self, url, timeout):
            return None

    def unknown(*a, **k):
        raise FileNotFoundError("Dataset 'someone/nothing' doesn't exist on the Hub\nmore detail")

    monkeypatch.setattr(hf_utils, "get_session", lambda: Answers())
    monkeypatch.setattr(datasets, "load_dataset", unknown)
    rc, err = run("hf:someone/nothing")
    assert rc == 2 and err == (
        "lmlab: error: hf:someone/nothing: cannot stream it (FileNotFoundError: Dataset "
        "'someone/nothing' doesn't exist on the Hub); offline? give a local copy instead\n"
    )
    assert not (tmp_path / "ds").exists()


def test_without_datasets_hub_fails_clearly_and_saved_folders_still_work(
    tok_dir, tmp_path, monkeypatch
):
    saved = save(tmp_path, "saved", DOCS[:5])
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(
        DataError, match="hf:a/b: streaming a dataset needs the optional package 'datasets'"
    ):
        prep(tok_dir, ["hf:a/b"], tmp_path / "x")
    prep(tok_dir, [saved], tmp_path / "ds")  # read with pyarrow alone
    assert train_docs(tmp_path / "ds", load_tokenizer(tok_dir)) == DOCS[:5]


def test_stage_key_of_stream_inputs(tmp_path):
    assert stage_key({}, ["hf:a/b"]) == stage_key({}, ["hf:a/b"]) != stage_key({}, ["hf:a/c"])
    saved = save(tmp_path, "saved", DOCS[:3])
    before = stage_key({}, [str(saved)])
    assert stage_key({}, [f"hf:{saved}"]) == before  # the same files behind both spellings
    save(tmp_path, "saved", DOCS[3:9])  # new content: the data stage is no longer up to date
    assert stage_key({}, [str(saved)]) != before


def test_cli_limits(tok_dir, tmp_path, capsys):
    saved = save(tmp_path, "saved", DOCS)
    rc = cli_main(
        [
            "data",
            "prepare",
            "--input",
            f"hf:{saved}",
            "--tokenizer",
            str(tok_dir),
            "--out",
            str(tmp_path / "ds"),
            "--max-bytes",
            "0.2K",
            "--max-docs",
            "100",
            "--no-progress",
            "--json",
        ]
    )
    meta = json.loads(capsys.readouterr().out)
    assert (
        rc == 0
        and meta["limits"]["max_bytes"] == 200
        and meta["limits"]["stopped_by"] == "max_bytes"
    )
    assert meta["config"]["max_bytes"] == 200 and meta["config"]["max_docs"] == 100
    assert (
        meta["limits"]["bytes_read"]
        <= 200
        < meta["limits"]["bytes_read"] + len(DOCS[meta["limits"]["documents_read"]].encode())
    )
    with pytest.raises(SystemExit) as e:  # argparse's usage error, like any bad flag value
        cli_main(
            [
                "data",
                "prepare",
                "--input",
                str(saved),
                "--tokenizer",
                str(tok_dir),
                "--out",
                str(tmp_path / "ds"),
                "--max-bytes",
                "lots",
            ]
        )
    assert e.value.code == 2 and "not a byte count: 'lots'" in capsys.readouterr().err
