"""Benchmark `lmlab data prepare` on the Python standard library.

1. Throughput (MB of source text per second): ``prepare_dataset`` with 2 workers and the code
   filter, against tiktoken's ``encode_ordinary_batch(num_threads=2)`` on the same text with
   the same merges (the tokenizer's own tiktoken encoding), measured in the same run,
   alternating, best of ``--rounds``. Also shown: prepare without a filter, and the cost of the
   syntax check alone (``compile``), which bounds what a filtered run can reach.
2. Peak memory (RSS of the whole process tree, sampled with psutil every 20 ms) of prepare
   run as a separate process over the stdlib once and over three copies of it.

The corpus is the stdlib's ``.py`` files without ``site-packages`` (third-party code).

    .venv/bin/python bench/bench_prepare.py [--rounds 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import psutil

from lmlab.config import PrepareConfig
from lmlab.data.prepare import prepare_dataset
from lmlab.io import stdlib_path
from lmlab.tokenizer import load_tokenizer, train_tokenizer


def stdlib_inputs() -> list[str]:
    return [str(p) for p in sorted(stdlib_path().iterdir()) if p.name != "site-packages"]


def read_corpus(inputs: list[str]) -> tuple[list[str], int]:
    """Decodable .py files as text, and their total size in bytes (what prepare reads)."""
    from lmlab.io import expand_inputs

    texts, nbytes = [], 0
    for f in expand_inputs(inputs, (".py",)):
        data = f.read_bytes()
        nbytes += len(data)
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return texts, nbytes


def peak_rss_of(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (peak RSS of its process tree in MiB, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
            except psutil.Error:
                pass
            stop.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}...: exit status {rc}")
    return peak / 2**20, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmlab-bench-prepare-"))
    try:
        inputs = stdlib_inputs()
        std = stdlib_path()
        tok_dir = work / "tok"
        train_inputs = [str(std / d) for d in ("asyncio", "email", "json", "unittest")] + [
            str(std / "*.py")
        ]
        train_tokenizer(
            train_inputs, vocab_size=args.vocab_size, out=tok_dir, special_tokens=["<|endoftext|>"]
        )
        tok = load_tokenizer(tok_dir)
        enc = tok.tiktoken_encoding  # same merges, tiktoken engine
        assert enc is not None
        texts, nbytes = read_corpus(inputs)
        mb = nbytes / 1e6
        print(
            f"corpus: {len(texts)} decodable .py files, {mb:.1f} MB (stdlib without site-packages); "
            f"tokenizer vocab {tok.vocab_size}"
        )

        # compile alone (one process): the ceiling of a syntax-checked run is ~ 2 cores x this
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, s in enumerate(texts):
                try:
                    compile(s, f"f{i}.py", "exec", dont_inherit=True)
                except (SyntaxError, ValueError, RecursionError, MemoryError):
                    pass
        compile_mbs = mb / (time.perf_counter() - t0)

        best = {"tiktoken": 0.0, "code": 0.0, "none": 0.0}
        metas = {}
        for r in range(args.rounds):
            t0 = time.perf_counter()
            enc.encode_ordinary_batch(texts, num_threads=2)
            best["tiktoken"] = max(best["tiktoken"], mb / (time.perf_counter() - t0))
            for filt in ("code", "none"):
                cfg = PrepareConfig(
                    input=inputs,
                    out=str(work / f"ds_{filt}"),
                    filter=filt,
                    workers=args.workers,
                    val_fraction=0.01,
                    suffixes=[".py"],
                )
                t0 = time.perf_counter()
                metas[filt] = prepare_dataset(
                    cfg, tokenizer_path=str(tok_dir), progress=False, warn=lambda m: None
                )
                best[filt] = max(best[filt], mb / (time.perf_counter() - t0))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} MB/s" for k, v in best.items()))
        del texts
        print()
        print(f"tiktoken encode_ordinary_batch(num_threads=2): {best['tiktoken']:.2f} MB/s")
        print(
            f"data prepare --filter code --workers {args.workers}: {best['code']:.2f} MB/s "
            f"= {best['code'] / best['tiktoken']:.2f}x tiktoken"
        )
        print(
            f"data prepare --filter none --workers {args.workers}: {best['none']:.2f} MB/s "
            f"= {best['none'] / best['tiktoken']:.2f}x tiktoken"
        )
        print(
            f"compile() alone, 1 process: {compile_mbs:.2f} MB/s "
            f"(2-core ceiling for the filtered run ~{2 * compile_mbs:.1f} MB/s before tokenizing)"
        )
        f = metas["code"]["filter"]
        print(
            f"code filter: kept {f['kept']} of {f['documents']}, dropped {f['dropped']}, skipped {f['files_skipped']}"
        )

        if not args.skip_memory:
            x3 = work / "x3"
            for i in range(3):  # real copies: symlinks would resolve to the same files
                shutil.copytree(
                    std,
                    x3 / f"copy{i}",
                    ignore=shutil.ignore_patterns("site-packages", "__pycache__"),
                    symlinks=True,
                )
            print()
            for filt in ("code", "none"):
                for name, inp in (("stdlib x1", inputs), ("stdlib x3", [str(x3)])):
                    code = (
                        "import sys, json; from lmlab.config import PrepareConfig; "
                        "from lmlab.data.prepare import prepare_dataset; "
                        f"m = prepare_dataset(PrepareConfig(input={inp!r}, out={str(work / 'mem')!r}, filter={filt!r}, "
                        f"workers={args.workers}, val_fraction=0.01, suffixes=['.py']), tokenizer_path={str(tok_dir)!r}, "
                        "progress=False, warn=lambda m: None); "
                        f"json.dump(m['stats'] | {{'tokens': m['splits']['train']['tokens']}}, open({str(work / 'mem.json')!r}, 'w'))"
                    )
                    peak, wall = peak_rss_of([sys.executable, "-c", code])
                    st = json.loads((work / "mem.json").read_text())
                    print(
                        f"peak RSS, filter {filt}, {name}: {peak:.0f} MiB  ({st['input_bytes'] / 1e6:.0f} MB in, "
                        f"{st['tokens']:,} train tokens out, {wall:.0f} s)"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
