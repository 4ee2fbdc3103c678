"""Symbolic tokenizer on the whole standard library: AST round trip and tokens per file.

    .venv/bin/python bench/bench_symbolic.py [--workers 2] [--limit N]
    PYTHONPATH=src python3.12 bench/bench_symbolic.py --round-trip-only   # another stdlib

1. Every stdlib ``.py`` file (site-packages excluded) that ``compile()`` accepts is encoded
   with the symbolic tokenizer (trained on the stdlib, vocab 1024) and decoded with its
   symbol table; the result must parse to the same AST. Without the table it must compile.
2. Tokens per file on held-out stdlib files (every 10th file; the tokenizers train on the
   other nine tenths): symbolic (1024) against byte-level BPE at 8192 and 1024, trained with
   lmlab's ``train_tokenizer`` (HF ``tokenizers``) on the same files.

``--round-trip-only`` skips 2 and uses the tokenizer without merges (every spelled item
byte by byte), so it runs on any interpreter that can import ``lmlab``, no dependencies.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import sysconfig
import tempfile
import time
import tokenize
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lmlab.tokenizer import train_tokenizer
from lmlab.tokenizer.symbolic import SymbolicTokenizer, same_ast, train_symbolic
from lmlab.tokenizer.symbolic.abstract import (
    COMMENT,
    DEDENT,
    INDENT,
    NEWLINE,
    NL,
    OVERFLOW,
    SYMBOL,
    TEXT,
)


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)


def read_compilable(path: Path) -> str | None:
    """The file's text (PEP 263 encoding) if ``compile()`` accepts it, else None."""
    data = path.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(data, str(path), "exec", dont_inherit=True)
        encoding, _ = tokenize.detect_encoding(iter(data.splitlines(True)).__next__)
        return data.decode(encoding)
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None


_TOK: SymbolicTokenizer | None = None


def _init(tok: SymbolicTokenizer) -> None:
    global _TOK
    _TOK = tok


def round_trip(path: Path) -> tuple[str, str, float]:
    """(path, outcome, seconds): outcome is skip | ok | ast-differs | no-compile | error: ..."""
    code = read_compilable(path)
    if code is None:
        return str(path), "skip", 0.0
    assert _TOK is not None
    t0 = time.perf_counter()
    try:
        ids, table = _TOK.encode_with_table(code)
        restored = _TOK.decode(ids, table)
        seconds = time.perf_counter() - t0
        if not same_ast(code, restored):
            return str(path), "ast-differs", seconds
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(_TOK.decode(ids), str(path), "exec", dont_inherit=True)
    except SyntaxError:
        return str(path), "no-compile", time.perf_counter() - t0
    except Exception as e:  # report, never stop the sweep
        return str(path), f"error: {type(e).__name__}: {e}", time.perf_counter() - t0
    return str(path), "ok", seconds


def compare_token_counts(files: list[Path]) -> SymbolicTokenizer:
    """Train the three tokenizers on 9/10 of ``files``; print tokens per held-out file."""
    texts = {p: read_compilable(p) for p in files}
    held = [p for i, p in enumerate(files) if i % 10 == 0 and texts[p] is not None]
    train = [p for i, p in enumerate(files) if i % 10 != 0 and texts[p] is not None]
    print(
        f"python {sys.version.split()[0]}, stdlib {len(files)} .py files, "
        f"{sum(t is not None for t in texts.values())} accepted by compile(); "
        f"train {len(train)}, held out {len(held)}"
    )

    # 1. tokenizers
    t0 = time.perf_counter()
    sym = train_symbolic((texts[p] for p in train), vocab_size=1024)
    t_sym = time.perf_counter() - t0
    print(
        f"symbolic: vocab {sym.vocab_size} (fixed {len(sym.fixed_tokens)}, indices {sym.max_symbols}, "
        f"merges {len(sym.merges)}), trained in {t_sym:.1f}s"
    )
    bpes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in (8192, 1024):
            t0 = time.perf_counter()
            bpes[v] = train_tokenizer(
                [str(p) for p in train],
                v,
                Path(tmp) / f"bpe{v}",
                kind="bpe",
                special_tokens=["<|endoftext|>"],
            )
            print(
                f"bpe {v}: vocab {bpes[v].vocab_size}, trained in {time.perf_counter() - t0:.1f}s"
            )

    # 2. tokens per held-out file
    counts: dict[str, list[int]] = {"symbolic 1024": [], "bpe 8192": [], "bpe 1024": []}
    kinds: Counter[str] = Counter()
    nbytes = 0
    t0 = time.perf_counter()
    cpu: Counter[str] = Counter()  # process time: steadier than wall time on a shared machine
    encoders = {
        "symbolic 1024": sym.encode_ordinary,
        "bpe 8192": bpes[8192].encode_ordinary,
        "bpe 1024": bpes[1024].encode_ordinary,
    }
    for p in held:
        code = texts[p]
        assert code is not None
        nbytes += len(code.encode())
        for name, encode in encoders.items():
            c0 = time.process_time()
            ids = encode(code)
            cpu[name] += time.process_time() - c0
            counts[name].append(len(ids))
        kinds.update(_category(sym, i) for i in sym.encode_ordinary(code))
    print(
        f"\ntokens per held-out file ({len(held)} files, {nbytes / 1e6:.2f} MB), {time.perf_counter() - t0:.1f}s"
    )
    print(
        "| tokenizer | vocab | mean | median | total | bytes/token | vs bpe 8192 | encode MB/s (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = sum(counts["bpe 8192"])
    for name, c in counts.items():
        vocab = (
            sym.vocab_size if name.startswith("symbolic") else bpes[int(name.split()[1])].vocab_size
        )
        print(
            f"| {name} | {vocab} | {statistics.mean(c):.0f} | {statistics.median(c):.0f} | {sum(c)} | "
            f"{nbytes / sum(c):.2f} | {sum(c) / base:.2f}x | {nbytes / 1e6 / cpu[name]:.2f} |"
        )
    total = sum(kinds.values())
    print(
        "\nsymbolic tokens by kind: "
        + ", ".join(f"{k} {100 * n / total:.1f}%" for k, n in kinds.most_common())
    )
    return sym


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--limit", type=int, default=0, help="use only every k-th file to get about N (quick look)"
    )
    ap.add_argument(
        "--round-trip-only", action="store_true", help="skip training and the token counts"
    )
    args = ap.parse_args()

    files = stdlib_files()
    if args.limit:
        files = files[:: max(1, len(files) // args.limit)]
    if args.round_trip_only:
        print(f"python {sys.version.split()[0]}, stdlib {len(files)} .py files")
        sym = SymbolicTokenizer()
    else:
        sym = compare_token_counts(files)

    # 3. the whole-stdlib AST round trip (through ids, with the symbol table)
    t0 = time.perf_counter()
    outcomes: Counter[str] = Counter()
    bad: list[str] = []
    seconds = 0.0
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(sym,)) as ex:
        for path, outcome, s in ex.map(round_trip, files, chunksize=8):
            outcomes[outcome.split(":")[0]] += 1
            seconds += s
            if outcome not in ("ok", "skip"):
                bad.append(f"{path}: {outcome}")
    checked = sum(n for k, n in outcomes.items() if k != "skip")
    print(
        f"\nAST round trip over the stdlib: {outcomes['ok']}/{checked} files accepted by compile() "
        f"restore to the same AST and compile without the table ({outcomes['skip']} not accepted by "
        f"compile, skipped); {time.perf_counter() - t0:.1f}s wall with {args.workers} workers, "
        f"encode+decode {seconds:.1f}s CPU"
    )
    for line in bad[:20]:
        print("  FAIL", line)
    return 0 if not bad else 1


def _category(tok: SymbolicTokenizer, i: int) -> str:
    if i >= tok._first_piece:
        return "BPE pieces"
    s = tok._string_of[i]
    if s == SYMBOL or s.startswith("<|") and s[2:-2].isdigit():
        return "SYMBOL+index"
    if s in (NEWLINE, NL, INDENT, DEDENT):
        return "layout"
    if s in (TEXT, COMMENT):
        return "TEXT/COMMENT"
    if s == OVERFLOW:
        return "OVERFLOW"
    return "keywords/operators/builtins" if s in tok._fixed_set else "other markers"


if __name__ == "__main__":
    raise SystemExit(main())
