"""Character-level tokenizer: the classic tinyshakespeare setup.

The vocabulary is the sorted set of characters seen in the training corpus (ids 0..n-1, so
they match nanoGPT's ``shakespeare_char``), followed by the special tokens. Encoding a
character the corpus never contained raises :class:`LmlabError` naming it and its offset:
a char model has no way to represent it, and silently mapping it to something else would
make decode lossy. Decoding is lossless (every id is a whole character).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmlab.errors import DataError, LmlabError
from lmlab.io import read_json, write_json
from lmlab.tokenizer.base import Tokenizer

CHAR_FILE = "char_vocab.json"
CHAR_FORMAT = "lmlab-char-v1"


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: list[str], special_tokens: list[str]) -> None:
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise DataError("char vocabulary must be distinct single characters")
        specials = {s: len(chars) + k for k, s in enumerate(special_tokens)}
        id_bytes: list[bytes | None] = [c.encode("utf-8", "surrogatepass") for c in chars]
        id_bytes += [s.encode("utf-8") for s in special_tokens]
        super().__init__(id_bytes, specials)
        self.chars = list(chars)
        self._stoi = {c: i for i, c in enumerate(chars)}
        # Longest first, so a special that is a prefix of another never wins wrongly.
        alts = sorted(special_tokens, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, alts))) if alts else None

    def __getstate__(self) -> dict[str, Any]:
        return {"chars": self.chars, "specials": list(self.special_tokens), "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["chars"], state["specials"])  # type: ignore[misc]
        self.meta = state["meta"]

    def _encode_plain(self, text: str, base: int = 0) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in stoi)
            c = text[pos]
            raise LmlabError(
                f"character {c!r} (U+{ord(c):04X}) at character offset {base + pos} is not in the "
                f"char tokenizer's vocabulary of {len(stoi)} characters"
            ) from None

    def encode_ordinary(self, text: str) -> list[int]:
        return self._encode_plain(text)

    def encode(self, text: str) -> list[int]:
        if self._special_re is None:
            return self._encode_plain(text)
        out: list[int] = []
        start = 0
        for m in self._special_re.finditer(text):
            out += self._encode_plain(text[start : m.start()], start)
            out.append(self.special_tokens[m.group()])
            start = m.end()
        out += self._encode_plain(text[start:], start)
        return out

    def _write_files(self, folder: Path) -> None:
        write_json(
            Path(folder) / CHAR_FILE,
            {
                "format": CHAR_FORMAT,
                "chars": self.chars,
                "special_tokens": list(self.special_tokens),
            },
        )

    @classmethod
    def from_file(cls, path: Path) -> CharTokenizer:
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != CHAR_FORMAT:
            raise DataError(f"{path}: not an lmlab char tokenizer file (format {CHAR_FORMAT})")
        try:
            return cls(list(data["chars"]), list(data["special_tokens"]))
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: malformed char tokenizer file ({e})") from None
