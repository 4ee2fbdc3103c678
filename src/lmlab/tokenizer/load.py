"""``load_tokenizer``: an lmlab tokenizer folder, a HF tokenizer.json, or GPT-2's two files."""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.errors import DataError
from lmlab.io import read_json
from lmlab.outputs import KIND_KEY
from lmlab.tokenizer.base import Tokenizer
from lmlab.tokenizer.bpe import BPETokenizer, bpe_from_parts
from lmlab.tokenizer.char import CHAR_FILE, CharTokenizer
from lmlab.tokenizer.hf import HFTokenizer, is_byte_level_bpe
from lmlab.tokenizer.symbolic import SYMBOLIC_FILE, SymbolicTokenizer

GPT2_VOCAB_NAMES = ("encoder.json", "vocab.json")
GPT2_MERGES_NAMES = ("vocab.bpe", "merges.txt")


def load_tokenizer(path: Path | str) -> Tokenizer:
    """Load a tokenizer from ``path``:

    - an lmlab tokenizer folder (``meta.json`` + ``tokenizer.json`` or ``char_vocab.json``);
      its fingerprint is checked against meta.json;
    - a HF ``tokenizer.json`` file, or a folder holding one: byte-level BPE becomes the ``bpe``
      kind (tiktoken fast path); any other model (WordPiece, Unigram, sentencepiece-style BPE)
      the ``hf`` kind, encoded by ``tokenizers`` alone;
    - a folder with GPT-2 files: ``*encoder.json``/``*vocab.json`` and ``*vocab.bpe``/``*merges.txt``.
    """
    p = Path(path)
    if p.is_file():
        tok = tokenizer_from_json_file(p)
        tok.meta = {"source": str(p.resolve())}
        return tok
    if not p.is_dir():
        raise DataError(f"{p}: no such tokenizer file or folder")
    meta = read_json(p / "meta.json") if (p / "meta.json").is_file() else None
    if (
        isinstance(meta, dict)
        and "kind" not in meta
        and meta.get(KIND_KEY) not in (None, "tokenizer")
    ):
        meta = None  # another lmlab output's marker (an export folder): its tokenizer files decide
    if meta is not None:
        kind = meta.get("kind") if isinstance(meta, dict) else None
        tok: Tokenizer
        if kind == "bpe":
            tok = BPETokenizer.from_file(p / "tokenizer.json")
        elif kind == "hf":
            tok = HFTokenizer.from_file(p / "tokenizer.json")
        elif kind == "char":
            tok = CharTokenizer.from_file(p / CHAR_FILE)
        elif kind == "symbolic":
            tok = SymbolicTokenizer.from_file(p / SYMBOLIC_FILE)
        else:
            raise DataError(f"{p / 'meta.json'}: not an lmlab tokenizer (kind {kind!r})")
        if meta.get("fingerprint") and meta["fingerprint"] != tok.fingerprint():
            raise DataError(
                f"{p}: tokenizer files do not match meta.json's fingerprint (edited or corrupt)"
            )
        tok.meta = {
            k: v
            for k, v in meta.items()
            if k in ("inputs", "skipped", "source", "requested_vocab_size", "created")
        }
        return tok
    if (p / "tokenizer.json").is_file():
        tok = tokenizer_from_json_file(p / "tokenizer.json")
        tok.meta = {"source": str((p / "tokenizer.json").resolve())}
        return tok
    vocab = _one(p, GPT2_VOCAB_NAMES)
    merges = _one(p, GPT2_MERGES_NAMES)
    if vocab and merges:
        return load_gpt2_files(vocab, merges)
    raise DataError(
        f"{p}: not a tokenizer folder (no meta.json, no tokenizer.json, no GPT-2 "
        "encoder.json/vocab.json + vocab.bpe/merges.txt pair)"
    )


def tokenizer_from_json_file(path: Path) -> Tokenizer:
    """A HF tokenizer.json: byte-level BPE as lmlab's ``bpe`` kind, anything else as ``hf``."""
    try:
        text = path.read_text(encoding="utf-8")
        spec = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise DataError(f"{path}: not a tokenizer.json (no 'model' object)")
    if is_byte_level_bpe(spec):
        return BPETokenizer(text, where=str(path))
    return HFTokenizer(text, where=str(path))


def _one(folder: Path, suffixes: tuple[str, ...]) -> Path | None:
    found = sorted(q for q in folder.iterdir() if q.is_file() and q.name.endswith(suffixes))
    if len(found) > 1:
        raise DataError(
            f"{folder}: several candidate files {[q.name for q in found]}; point at one tokenizer"
        )
    return found[0] if found else None


def load_gpt2_files(vocab_path: Path, merges_path: Path) -> BPETokenizer:
    """Import GPT-2's ``encoder.json`` (token string -> id) and ``vocab.bpe`` (merges, one per line).

    Vocabulary entries that are neither a single byte nor the result of a merge (GPT-2's
    ``<|endoftext|>``) become special tokens.
    """
    vocab = read_json(vocab_path)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise DataError(f"{vocab_path}: expected a JSON object of token -> id")
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{merges_path}: cannot read ({e})") from None
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines, 1):
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise DataError(f"{merges_path}:{lineno}: expected two tokens separated by one space")
        merges.append((parts[0], parts[1]))
    made = {a + b for a, b in merges}
    specials = [
        s for s, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if len(s) > 1 and s not in made
    ]
    tok = bpe_from_parts(vocab, merges, specials, where=f"{vocab_path} + {merges_path.name}")
    tok.meta = {"source": [str(vocab_path.resolve()), str(merges_path.resolve())]}
    return tok
