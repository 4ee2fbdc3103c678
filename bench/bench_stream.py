"""Benchmark `lmlab data prepare` on streamed datasets against the same documents in local files.

Corpus: the TinyStories validation subset in ``../shared/data`` (stories separated by blank
lines), repeated with a copy number in front of each story until it reaches ``--mb`` MB.
Tokenizer: lmlab BPE (``--vocab-size``) trained on the subset. Every prepare run uses
``--workers`` workers, no filter, and ``val_fraction`` 0.01.

1. Throughput (MB of document text per second, best of ``--rounds``, runs alternating), same
   documents each time:
   - ``jsonl files``: a local JSONL file through lmlab's own file reader (the peer);
   - ``hf:jsonl`` / ``hf:parquet``: the same documents as JSONL / parquet through
     ``datasets.load_dataset(..., streaming=True)``, the reader a hub dataset goes through;
   - ``save_to_disk``: a ``Dataset.save_to_disk`` folder (Arrow record batches, plain reads);
   - ``hub stand-in``: ``hf:bench/stories`` with ``datasets.load_dataset`` replaced by an
     unbounded generator-backed ``IterableDataset`` of the stories, cut by ``--max-docs`` (the
     hub's network is not part of this measurement: there is none here).
2. Peak memory (PSS and RSS of the process tree, psutil every 20 ms, each run a fresh process) at 1x
   and 4x the stream length, for the hub stand-in (``--max-docs`` N and 4N of the same unbounded
   stream), ``hf:parquet`` (one file 4x as large, and 4 files), ``save_to_disk`` and the JSONL
   file (data 1x and 4x as large).

    .venv/bin/python bench/bench_stream.py [--mb 16] [--rounds 2] [--workers 2] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

DATA = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "tinystories"
    / "tinystories_val_subset.txt"
)


def peak_memory_of(cmd: list[str]) -> tuple[float, float, float]:
    """Run ``cmd``; return (peak RSS, peak PSS of its process tree in MiB, wall seconds).

    RSS summed over processes counts shared pages once per process, and a worker caught
    between fork and exec shows the whole parent as its own; PSS splits shared pages among
    the processes that map them, so its sum is the memory the tree really holds.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_rss, peak_pss
        while not stop.is_set():
            rss = pss = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    m = p.memory_full_info()  # /proc/PID/smaps_rollup: ~0.2 ms
                    rss, pss = rss + m.rss, pss + m.pss
                except psutil.Error:
                    pass
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            stop.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}...: exit status {rc}")
    return peak_rss / 2**20, peak_pss / 2**20, time.perf_counter() - t0


def stories() -> list[str]:
    if not DATA.is_file():
        raise SystemExit(
            f"{DATA}: not found (the shared TinyStories subset; see shared/data/MANIFEST.md)"
        )
    text = DATA.read_text(encoding="utf-8")
    return [s.strip() for s in text.split("\n\n") if s.strip()]


def corpus(base: list[str], mb: float) -> list[str]:
    """Copies of the stories, each story prefixed by its copy number, until ``mb`` MB of text."""
    docs: list[str] = []
    size = 0
    for copy in itertools.count():
        for s in base:
            d = f"{copy}. {s}"
            docs.append(d)
            size += len(d.encode())
            if size >= mb * 1e6:
                return docs
    raise AssertionError("unreachable")


def write_inputs(docs: list[str], folder: Path) -> dict[str, str]:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    pq.write_table(pa.table({"text": docs}), folder / "docs.parquet", row_group_size=10_000)
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(folder / "saved"), num_shards=4)
    return {
        "jsonl files": str(folder / "docs.jsonl"),
        "hf:jsonl": f"hf:{folder / 'docs.jsonl'}",
        "hf:parquet": f"hf:{folder / 'docs.parquet'}",
        "save_to_disk": str(folder / "saved"),
    }


@contextlib.contextmanager
def hub_stand_in(hub_docs: str) -> Iterator[None]:
    """``datasets.load_dataset`` answers with an unbounded stream cycling the stories in ``hub_docs``."""
    import datasets

    from lmlab.data import streams

    base = json.loads(Path(hub_docs).read_text(encoding="utf-8"))

    def rows():
        for copy in itertools.count():  # unbounded, like a stream nobody can hold
            for s in base:
                yield {"text": f"{copy}. {s}", "id": copy}

    saved = datasets.load_dataset, streams._offline_reason
    datasets.load_dataset = lambda *a, **k: datasets.IterableDataset.from_generator(rows)
    streams._offline_reason = lambda: None
    try:
        yield
    finally:  # the other runs in this process must see the real datasets again
        datasets.load_dataset, streams._offline_reason = saved


def prepare(
    spec: str, out: str, tok: str, workers: int, max_docs: int = 0, hub_docs: str = ""
) -> dict:
    """One prepare run (in this process); ``hub_docs`` names a JSON list the hub stand-in cycles."""
    from lmlab.config import PrepareConfig
    from lmlab.data.prepare import prepare_dataset

    cfg = PrepareConfig(
        input=[spec], out=out, workers=workers, val_fraction=0.01, max_docs=max_docs
    )
    with hub_stand_in(hub_docs) if hub_docs else contextlib.nullcontext():
        return prepare_dataset(cfg, tokenizer_path=tok, progress=False, warn=lambda m: None)


def child(args: argparse.Namespace) -> None:
    job = json.loads(args.child)
    meta = prepare(**job)
    Path(job["out"] + ".json").write_text(
        json.dumps(
            {
                "bytes": meta["limits"]["bytes_read"],
                "docs": meta["limits"]["documents_read"],
                "tokens": meta["splits"]["train"]["tokens"],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mb", type=float, default=16.0, help="1x corpus size in MB of text")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    from lmlab.tokenizer import train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="lmlab-bench-stream-"))
    try:
        base = stories()
        tok = str(work / "tok")
        train_tokenizer(
            [str(DATA)], vocab_size=args.vocab_size, out=Path(tok), special_tokens=["<|endoftext|>"]
        )
        (work / "stories.json").write_text(json.dumps(base), encoding="utf-8")
        docs = corpus(base, args.mb)
        mb = sum(len(d.encode()) for d in docs) / 1e6
        inputs = write_inputs(docs, work / "x1")
        print(
            f"corpus: {len(docs):,} documents, {mb:.1f} MB of text ({len(base)} TinyStories, repeated); "
            f"vocab {args.vocab_size}; {args.workers} workers"
        )
        hub = dict(spec="hf:bench/stories", max_docs=len(docs), hub_docs=str(work / "stories.json"))

        best: dict[str, float] = {}
        ref_tokens = None
        for r in range(0 if args.skip_throughput else args.rounds):
            for name, spec in [*inputs.items(), ("hub stand-in", "")]:
                job = hub if not spec else {"spec": spec}
                t0 = time.perf_counter()
                meta = prepare(out=str(work / "ds"), tok=tok, workers=args.workers, **job)
                best[name] = max(best.get(name, 0.0), mb / (time.perf_counter() - t0))
                tokens = (meta["splits"]["train"]["tokens"], meta["splits"]["val"]["tokens"])
                assert ref_tokens is None or tokens == ref_tokens, (name, tokens, ref_tokens)
                ref_tokens = tokens
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} MB/s" for k, v in best.items()))
        if best:
            print()
            peer = best["jsonl files"]
            for name, v in best.items():
                print(f"{name:14s} {v:6.2f} MB/s  {v / peer:.2f}x jsonl files")
            print(
                f"(every run wrote the same {ref_tokens[0]:,} train / {ref_tokens[1]:,} val tokens)"
            )

        if not args.skip_memory:
            x4 = write_inputs(docs * 4, work / "x4")
            (work / "x4" / "shards").mkdir()
            for i in range(
                4
            ):  # the 1x parquet file four times: a dataset of more shards, as on the hub
                shutil.copy(
                    work / "x1" / "docs.parquet", work / "x4" / "shards" / f"docs{i}.parquet"
                )
            print()
            cases = [
                ("hub stand-in", hub, {**hub, "max_docs": 4 * len(docs)}),
                ("hf:parquet", {"spec": inputs["hf:parquet"]}, {"spec": x4["hf:parquet"]}),
                (
                    "hf:parquet, 4x as 4 files",
                    {"spec": inputs["hf:parquet"]},
                    {"spec": f"hf:{work / 'x4' / 'shards'}/*.parquet"},
                ),
                ("save_to_disk", {"spec": inputs["save_to_disk"]}, {"spec": x4["save_to_disk"]}),
                ("jsonl files", {"spec": inputs["jsonl files"]}, {"spec": x4["jsonl files"]}),
            ]
            for name, one, four in cases:
                for label, job in (("1x", one), ("4x", four)):
                    out = str(work / "mem")
                    job = {**job, "out": out, "tok": tok, "workers": args.workers}
                    rss, pss, wall = peak_memory_of(
                        [sys.executable, __file__, "--child", json.dumps(job)]
                    )
                    st = json.loads(Path(out + ".json").read_text())
                    print(
                        f"peak {name}, {label}: PSS {pss:.0f} MiB, RSS {rss:.0f} MiB  ({st['docs']:,} documents, "
                        f"{st['bytes'] / 1e6:.0f} MB in, {st['tokens']:,} train tokens out, {wall:.0f} s)"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
