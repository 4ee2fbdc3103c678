"""Tokenizer benchmark on the Python standard library (~31 MB of .py files).

1. BPE training, vocab 8192: lmlab's ``train_tokenizer`` (reads + validates files, trains,
   writes the folder with meta.json) vs raw HF ``tokenizers`` with the same trainer settings
   (reads files, trains, saves tokenizer.json), alternated in the same run.
2. Encode speed on the same text: lmlab's fast path (``encode_ordinary_batch``) vs tiktoken's
   own ``encode_ordinary_batch`` on the same Encoding, plus HF ``tokenizers`` batch encode
   for reference; the three must give identical ids.

    .venv/bin/python bench/bench_tokenizer.py [--vocab-size 8192] [--repeat 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

from lmlab.tokenizer import BPETokenizer, train_tokenizer
from lmlab.tokenizer.train import train_bpe_hf

EOT = "<|endoftext|>"


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [
        p
        for p in sorted(root.rglob("*.py"))
        if "site-packages" not in p.parts and "dist-packages" not in p.parts
    ]


def raw_train(files: list[Path], vocab_size: int, out: Path) -> None:
    """What a user would write with tokenizers alone (the trainer settings lmlab uses)."""
    texts = []
    for p in files:
        try:
            texts.append(p.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            pass
    out.write_text(train_bpe_hf(texts, vocab_size, [EOT]), encoding="utf-8")


def timed(fn) -> tuple[float, float]:  # noqa: ANN001
    """(wall seconds, process CPU seconds over all threads); CPU time is steadier on a shared box."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=2, help="alternating training runs of each")
    args = ap.parse_args()
    logging.getLogger("lmlab.tokenizer").setLevel(logging.ERROR)  # skipped-file warnings

    files = stdlib_files()
    size = sum(p.stat().st_size for p in files)
    print(f"corpus: {len(files)} stdlib .py files, {size / 1e6:.1f} MB; vocab {args.vocab_size}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_tok_"))
    raw_t, lm_t = [], []
    for r in range(args.repeat):
        raw_t.append(timed(lambda: raw_train(files, args.vocab_size, tmp / "raw.json")))
        lm_t.append(
            timed(
                lambda: train_tokenizer(
                    [str(p) for p in files], args.vocab_size, tmp / "lm", special_tokens=[EOT]
                )
            )
        )
        print(
            f"  run {r + 1}: raw tokenizers {raw_t[-1][0]:.2f} s wall / {raw_t[-1][1]:.2f} s CPU, "
            f"lmlab {lm_t[-1][0]:.2f} s wall / {lm_t[-1][1]:.2f} s CPU"
        )
    same = (tmp / "raw.json").read_bytes() == (tmp / "lm" / "tokenizer.json").read_bytes()
    for k, what in enumerate(("wall", "CPU")):
        raw_m, lm_m = statistics.median(t[k] for t in raw_t), statistics.median(t[k] for t in lm_t)
        print(
            f"train ({what}): raw tokenizers {raw_m:.2f} s, lmlab {lm_m:.2f} s (median of {args.repeat}); "
            f"ratio lmlab/raw {lm_m / raw_m:.3f}"
        )
    print(f"train: identical tokenizer.json from both: {same}")

    tok = BPETokenizer.from_file(tmp / "lm" / "tokenizer.json")
    texts = []
    for p in files:
        try:
            texts.append(p.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            pass
    nbytes = sum(len(t.encode()) for t in texts)
    enc = tok.tiktoken_encoding
    tok.encode_ordinary_batch(["warm up"])
    results: dict[str, list[int]] = {}
    speeds: dict[str, float] = {}
    runs = {
        "tiktoken encode_ordinary_batch": lambda: enc.encode_ordinary_batch(texts),
        "lmlab encode_ordinary_batch": lambda: tok.encode_ordinary_batch(texts),
        "tokenizers encode_batch_fast": lambda: tok.encode_hf_batch(texts),
    }
    for name, fn in runs.items():
        best = float("inf")
        for _ in range(1 if name.startswith("tokenizers") else 2):
            t0 = time.perf_counter()
            results[name] = fn()
            best = min(best, time.perf_counter() - t0)
        speeds[name] = nbytes / 1e6 / best
        print(f"encode: {name:32s} {speeds[name]:6.2f} MB/s ({best:.2f} s, {nbytes / 1e6:.1f} MB)")
    ids = list(results.values())
    print(
        f"encode: lmlab/tiktoken speed ratio {speeds['lmlab encode_ordinary_batch'] / speeds['tiktoken encode_ordinary_batch']:.3f}; "
        f"lmlab/tokenizers {speeds['lmlab encode_ordinary_batch'] / speeds['tokenizers encode_batch_fast']:.2f}x; "
        f"identical ids (all three, whole stdlib): {ids[0] == ids[1] == ids[2]}"
    )
    n_tokens = sum(map(len, ids[1]))
    print(f"bytes/token on stdlib: {nbytes / n_tokens:.3f}")


if __name__ == "__main__":
    main()
