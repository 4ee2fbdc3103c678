"""The tokenizer interface every kind implements, and the behaviour they share.

A tokenizer maps text to integer ids and back. Every kind keeps a table ``id -> bytes`` so
decoding is one join of byte strings; invalid UTF-8 in the result becomes U+FFFD and never
raises. Kinds differ in how they encode (see ``bpe.py`` and ``char.py``).
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from lmlab.errors import DataError, LmlabError
from lmlab.io import write_json
from lmlab.outputs import atomic_dir
from lmlab.tokenizer.bytelevel import GPT2_PATTERN

META_FORMAT = "lmlab-tokenizer-v1"
EOT_TOKEN = "<|endoftext|>"


class Tokenizer:
    """Base class: subclasses set ``kind``, fill ``_id_bytes`` and implement the encoders."""

    kind: str = ""
    pattern: str = ""  # the pre-tokenization regex, "" when the kind has none

    def __init__(
        self,
        id_bytes: list[bytes | None],
        special_tokens: dict[str, int],
        merges: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._id_bytes = id_bytes  # index = id; None marks an unused id
        self.special_tokens: dict[str, int] = dict(special_tokens)
        self._merges = list(merges or [])
        # Provenance written into meta.json (inputs, skipped files, source); set by train/load.
        self.meta: dict[str, Any] = {}
        self._fingerprint: str | None = None

    # ---- tables -------------------------------------------------------------------------
    @property
    def vocab(self) -> dict[int, bytes]:
        """Every id (special tokens included) to its bytes."""
        return {i: b for i, b in enumerate(self._id_bytes) if b is not None}

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        return list(self._merges)

    @property
    def vocab_size(self) -> int:
        """Max id + 1 (the embedding table size a model needs)."""
        return len(self._id_bytes)

    @property
    def eot_id(self) -> int | None:
        return self.special_tokens.get(EOT_TOKEN)

    # ---- encoding (subclasses) -----------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Encode ``text``; special tokens written in it become their ids (lone surrogates: U+FFFD)."""
        raise NotImplementedError

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` with special-token strings treated as plain text."""
        raise NotImplementedError

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode_ordinary(t) for t in texts]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    # ---- decoding ----------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._id_bytes
        ids = list(ids)
        try:
            out = b"".join([table[i] for i in ids])  # type: ignore[misc]
            if not ids or min(ids) >= 0:
                return out
        except (IndexError, TypeError):
            pass
        bad = next(i for i in ids if not (0 <= i < len(table)) or table[i] is None)
        raise LmlabError(
            f"token id {bad} is not in this {self.kind} tokenizer (vocab size {len(table)})"
        )

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- streaming ---------------------------------------------------------------------
    def encode_file(
        self, path: Path | str, chunk_bytes: int = 1 << 20, allow_special: bool = False
    ) -> Iterator[list[int]]:
        """Encode a UTF-8 file chunk by chunk in bounded memory.

        Chunks are cut only where the split pattern is guaranteed to break anyway (just before
        a newline that follows a non-space character, see ``_safe_cut``), so the concatenated
        ids equal those of encoding the whole file at once. A file with no such point in a
        window keeps growing its buffer until one is found (memory is then that span).
        ``chunk_bytes`` is read per step; a chunk is cut once the buffer holds that many
        characters, so memory is proportional to ``chunk_bytes``, not to the file size.
        """
        if chunk_bytes < 1:
            raise LmlabError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        enc = self.encode if allow_special else self.encode_ordinary
        path = Path(path)
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        buf = ""
        offset = 0
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise DataError(f"{path}: cannot open ({e.strerror})") from None
        with f:
            while True:
                block = f.read(chunk_bytes)
                try:
                    buf += decoder.decode(block, final=not block)
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}: not valid UTF-8 near byte {offset + e.start}"
                    ) from None
                offset += len(block)
                if not block:
                    break
                if len(buf) >= chunk_bytes:
                    cut = self._safe_cut(buf, allow_special)
                    if cut > 0:
                        yield enc(buf[:cut])
                        buf = buf[cut:]
        if buf:
            yield enc(buf)

    def _safe_cut(self, buf: str, allow_special: bool) -> int:
        """The last index where ``buf`` can be cut without changing the encoding, or -1."""
        loose = self.pattern in ("", GPT2_PATTERN)  # any non-space char ends a GPT-2 pre-token
        # With specials, keep enough lookahead to see any special that might straddle the cut.
        reach = max(map(len, self.special_tokens), default=0) if allow_special else 0
        p = buf.rfind("\n", 0, len(buf) - reach + 1) if reach else buf.rfind("\n")
        while p > 0:
            prev = buf[p - 1]
            ok = (not prev.isspace()) if loose else prev.isalnum()
            if ok and not (allow_special and self._special_straddles(buf, p)):
                return p
            p = buf.rfind("\n", 0, p)
        return -1

    def _special_straddles(self, buf: str, p: int) -> bool:
        for s in self.special_tokens:
            if len(s) < 2:
                continue
            i = buf.find(s, max(0, p - len(s) + 1), p + len(s) - 1)
            while i != -1 and i < p:
                if i + len(s) > p:
                    return True
                i = buf.find(s, i + 1, p + len(s) - 1)
        return False

    # ---- identity and files ------------------------------------------------------------
    def _canonical(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pattern": self.pattern,
            "vocab": [None if b is None else b.hex() for b in self._id_bytes],
            "merges": [[a.hex(), b.hex()] for a, b in self._merges],
            "special_tokens": dict(sorted(self.special_tokens.items(), key=lambda kv: kv[1])),
        }

    def fingerprint(self) -> str:
        """sha256 of the canonical content (kind, pattern, vocab bytes, merges, specials)."""
        if self._fingerprint is None:
            blob = json.dumps(self._canonical(), separators=(",", ":"), sort_keys=True)
            self._fingerprint = hashlib.sha256(blob.encode()).hexdigest()
        return self._fingerprint

    def _write_files(self, folder: Path) -> None:
        """Write the kind's own file(s) into ``folder``."""
        raise NotImplementedError

    def save(self, out_dir: Path | str) -> None:
        """Write the tokenizer folder atomically: the kind's file(s) plus meta.json."""
        out_dir = Path(out_dir)
        with atomic_dir(out_dir, "tokenizer") as tmp:
            self._write_files(tmp)
            meta = {
                "format": META_FORMAT,
                "kind": self.kind,
                "vocab_size": self.vocab_size,
                "special_tokens": self.special_tokens,
                "eot_id": self.eot_id,
                "fingerprint": self.fingerprint(),
                "pattern": self.pattern,
                "num_merges": len(self._merges),
                "inputs": self.meta.get("inputs", []),
                "skipped": self.meta.get("skipped", []),
                "num_skipped": len(self.meta.get("skipped", [])),
            }
            for k, v in self.meta.items():
                meta.setdefault(k, v)
            write_json(tmp / "meta.json", meta)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind} vocab_size={self.vocab_size} specials={len(self.special_tokens)}>"


def scrub_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8: replace them with U+FFFD (what tiktoken does too)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def hf_from_str(text: str) -> Any:
    """A ``tokenizers.Tokenizer`` from JSON text, with any saved truncation/padding switched off
    (lmlab encodes whole documents and never pads)."""
    hf = HFTokenizer.from_str(text)
    hf.no_truncation()
    hf.no_padding()
    return hf


def hf_encode(hf: Any, text: str) -> list[int]:
    """``tokenizers`` encode without post-processing; lone surrogates become U+FFFD."""
    try:
        return hf.encode(text, add_special_tokens=False).ids
    except TypeError:  # tokenizers rejects str it cannot turn into UTF-8
        return hf.encode(scrub_surrogates(text), add_special_tokens=False).ids


def hf_encode_batch(hf: Any, texts: list[str]) -> list[list[int]]:
    fast = getattr(hf, "encode_batch_fast", None) or hf.encode_batch
    try:
        return [e.ids for e in fast(list(texts), add_special_tokens=False)]
    except TypeError:
        return [e.ids for e in fast([scrub_surrogates(t) for t in texts], add_special_tokens=False)]


def check_special_tokens(special_tokens: Iterable[str]) -> list[str]:
    """Validate user-given special tokens: non-empty strings, no duplicates (order kept)."""
    out: list[str] = []
    for s in special_tokens:
        if not isinstance(s, str) or not s:
            raise LmlabError(f"special token {s!r}: must be a non-empty string")
        if s in out:
            raise LmlabError(f"special token {s!r} given twice")
        out.append(s)
    return out
