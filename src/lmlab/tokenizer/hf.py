"""Any other ``tokenizer.json`` (WordPiece, Unigram, sentencepiece-style BPE): HF ``tokenizers`` only.

lmlab's own kinds are byte-level (``bpe.py``); this wrapper lets a user bring a tokenizer of
another family. Encoding and decoding go through ``tokenizers`` (its normalizer and decoder
apply, so round trips are only as lossless as that tokenizer is: a lowercasing WordPiece is
not). ``vocab`` maps each id to the bytes its token stands for: ``<0xNN>`` byte-fallback
tokens to that byte, the Metaspace "▁" to a space, WordPiece's "##" prefix removed.
``encode_file`` works but holds the whole file (no cut point is provably safe here).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmlab.errors import DataError, LmlabError
from lmlab.tokenizer.base import Tokenizer, hf_encode, hf_encode_batch, hf_from_str
from lmlab.tokenizer.bytelevel import unicode_to_byte

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _token_bytes(s: str, model: dict[str, Any], specials: set[str]) -> bytes:
    if s in specials:
        return s.encode("utf-8")
    m = _BYTE_TOKEN.fullmatch(s)
    if m and model.get("byte_fallback", model.get("type") == "Unigram"):
        return bytes([int(m.group(1), 16)])
    prefix = model.get("continuing_subword_prefix") or ""
    if prefix and s.startswith(prefix) and len(s) > len(prefix):
        s = s[len(prefix) :]
    return s.replace("\u2581", " ").encode("utf-8")


class HFTokenizer(Tokenizer):
    """A non-byte-level ``tokenizer.json``, encoded and decoded by ``tokenizers``."""

    kind = "hf"

    def __init__(self, hf_json: str, where: str = "tokenizer.json") -> None:
        try:
            spec = json.loads(hf_json)
            self._hf = hf_from_str(hf_json)
        except Exception as e:  # json or tokenizers (which raises plain Exception)
            raise DataError(f"{where}: not a loadable tokenizer.json ({e})") from None
        model = spec.get("model") or {}
        specials = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or []}
        vocab: dict[str, int] = self._hf.get_vocab(with_added_tokens=True)
        id_bytes: list[bytes | None] = [None] * (max(vocab.values(), default=-1) + 1)
        for s, i in vocab.items():
            id_bytes[i] = _token_bytes(s, model, set(specials))
        merges: list[tuple[bytes, bytes]] = []
        if model.get("type") == "BPE":
            for m in model.get("merges") or []:
                a, b = m.split(" ", 1) if isinstance(m, str) else m
                merges.append((_token_bytes(a, model, set()), _token_bytes(b, model, set())))
        super().__init__(id_bytes, specials, merges)
        self.pattern = ""
        self._json = hf_json
        self._where = where
        spec["added_tokens"] = []
        self._plain = hf_from_str(json.dumps(spec)) if specials else self._hf

    @classmethod
    def from_file(cls, path: Path) -> HFTokenizer:
        try:
            return cls(Path(path).read_text(encoding="utf-8"), where=str(path))
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read ({e})") from None

    def __getstate__(self) -> dict[str, Any]:
        return {"json": self._json, "where": self._where, "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["json"], where=state["where"])  # type: ignore[misc]
        self.meta = state["meta"]

    @property
    def hf_tokenizer(self) -> Any:
        return self._hf

    def encode(self, text: str) -> list[int]:
        return hf_encode(self._hf, text)

    def encode_ordinary(self, text: str) -> list[int]:
        return hf_encode(self._plain, text)

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return hf_encode_batch(self._plain, texts)

    def decode(self, ids: Iterable[int]) -> str:
        """Decode with the tokenizer's own decoder (merges "##" pieces, strips the "▁" prefix, ...)."""
        ids = list(ids)
        bad = [i for i in ids if not (0 <= i < len(self._id_bytes)) or self._id_bytes[i] is None]
        if bad:
            raise LmlabError(
                f"token id {bad[0]} is not in this hf tokenizer (vocab size {len(self._id_bytes)})"
            )
        return self._hf.decode(ids, skip_special_tokens=False)

    def _safe_cut(self, buf: str, allow_special: bool) -> int:
        # Normalizers and pre-tokenizers of other families (e.g. Metaspace's prefix "▁") make
        # no cut provably safe, so encode_file encodes the file whole (correct, not streamed).
        return -1

    def _write_files(self, folder: Path) -> None:
        (Path(folder) / "tokenizer.json").write_text(self._json, encoding="utf-8")


def is_byte_level_bpe(spec: dict[str, Any]) -> bool:
    """True when ``spec`` (a parsed tokenizer.json) is a BPE whose tokens are all byte-level strings."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        return False
    table = unicode_to_byte()
    specials = {t.get("content") for t in spec.get("added_tokens") or []}
    return all(s in specials or all(c in table for c in s) for s in model["vocab"])
