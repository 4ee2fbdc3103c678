"""Byte-level BPE: Hugging Face ``tokenizers`` for training and the file format, tiktoken for speed.

The ``tokenizer.json`` (HF format) is the source of truth. From it we derive:
- ``vocab`` (id -> bytes) and ``merges`` (bytes pairs, in merge order);
- a tiktoken ``Encoding`` with the same split pattern, merges and special tokens, used by
  ``encode``/``encode_ordinary``/``*_batch`` (several times faster than ``tokenizers``).

tiktoken merges the adjacent pair whose *concatenation* has the lowest rank, and returns ranks
as ids. HF merges the pair with the lowest *merge index*. The two agree when each token's rank
follows the order of the merge that first created it. HF-trained and GPT-2 vocabularies
number merge results in merge order, so their ids serve as ranks directly. Otherwise we rank
tokens by merge order and translate ranks back to ids with a lookup table.
tiktoken also takes a whole pre-token that is itself in the vocabulary as one token (HF's
``ignore_merges``); for vocabularies BPE-trained on the same split (HF-trained, GPT-2) this
gives the same ids, which the tests check on text and on the whole standard library.
When the tokenizer.json does something tiktoken cannot mirror (a normalizer, a prefix space,
an unknown pre-tokenizer, missing byte tokens), the ``tokenizers`` path is used throughout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lmlab.errors import DataError, LmlabError
from lmlab.tokenizer.base import Tokenizer, hf_encode, hf_encode_batch, hf_from_str
from lmlab.tokenizer.bytelevel import GPT2_PATTERN, token_str_to_bytes


def _parse_merges(raw: list[Any], where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for m in raw:
        parts = m.split(" ") if isinstance(m, str) else list(m)
        if len(parts) != 2:
            raise DataError(f"{where}: malformed merge {m!r}")
        out.append((parts[0], parts[1]))
    return out


def _split_pattern(pre: dict[str, Any] | None) -> str | None:
    """The regex tiktoken must use to mirror this pre-tokenizer, or None if it cannot."""
    if not pre:
        return None
    if pre.get("type") == "ByteLevel":
        if pre.get("add_prefix_space") or not pre.get("use_regex", True):
            return None
        return GPT2_PATTERN
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        if (
            len(steps) == 2
            and steps[0].get("type") == "Split"
            and steps[1].get("type") == "ByteLevel"
            and "Regex" in (steps[0].get("pattern") or {})
            and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert")
            and not steps[1].get("add_prefix_space")
            and not steps[1].get("use_regex", True)
        ):
            return steps[0]["pattern"]["Regex"]
    return None


class BPETokenizer(Tokenizer):
    """Byte-level BPE backed by a HF ``tokenizer.json`` string (see the module docstring)."""

    kind = "bpe"

    def __init__(self, hf_json: str, where: str = "tokenizer.json") -> None:
        try:
            spec = json.loads(hf_json)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise DataError(f"{where}: not a tokenizer.json (no 'model' object)")
        model = spec["model"]
        if model.get("type") != "BPE":
            raise DataError(
                f"{where}: model type {model.get('type')!r} is not BPE; lmlab loads byte-level BPE tokenizers"
            )
        added = spec.get("added_tokens") or []
        specials = {t["content"]: int(t["id"]) for t in added}
        try:
            str_vocab: dict[str, int] = {str(k): int(v) for k, v in model["vocab"].items()}
            str_merges = _parse_merges(model.get("merges") or [], where)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{where}: malformed BPE model ({e})") from None
        n = max([*str_vocab.values(), *specials.values(), -1]) + 1
        id_bytes: list[bytes | None] = [None] * n
        for s, i in str_vocab.items():
            try:
                id_bytes[i] = token_str_to_bytes(s)
            except KeyError:
                if s not in specials:
                    raise DataError(
                        f"{where}: token {s!r} is not byte-level; lmlab loads byte-level BPE tokenizers"
                    ) from None
        for s, i in specials.items():
            id_bytes[i] = s.encode("utf-8")
        try:
            merges = [(token_str_to_bytes(a), token_str_to_bytes(b)) for a, b in str_merges]
        except KeyError:
            raise DataError(f"{where}: merges are not byte-level") from None
        super().__init__(id_bytes, specials, merges)
        self._json = hf_json
        self._where = where
        pattern = _split_pattern(spec.get("pre_tokenizer"))
        self.pattern = pattern or ""
        plain_added = all(
            not (t.get("lstrip") or t.get("rstrip") or t.get("single_word")) for t in added
        )
        self._fast_ok = (
            pattern is not None
            and spec.get("normalizer") is None
            and plain_added
            and not model.get("dropout")
            and not model.get("continuing_subword_prefix")
            and not model.get("end_of_word_suffix")
            and not model.get("byte_fallback")
        )
        self._hf = self._hf_plain = None
        self._tt: Any = None
        self._tt_built = False
        self._rank_to_id: Any = None

    @classmethod
    def from_file(cls, path: Path) -> BPETokenizer:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}: not valid UTF-8") from None
        return cls(text, where=str(path))

    # ---- pickling: ship the JSON, rebuild the engines lazily ---------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"json": self._json, "where": self._where, "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["json"], where=state["where"])  # type: ignore[misc]
        self.meta = state["meta"]

    # ---- engines -----------------------------------------------------------------------
    @property
    def hf_tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` (special tokens recognised)."""
        if self._hf is None:
            try:
                self._hf = hf_from_str(self._json)
            except Exception as e:  # tokenizers raises plain Exception on bad files
                raise DataError(f"{self._where}: tokenizers cannot load it ({e})") from None
        return self._hf

    @property
    def _hf_ordinary(self) -> Any:
        """Same model without added tokens, so special-token strings encode as plain text."""
        if self._hf_plain is None:
            if not self.special_tokens:
                self._hf_plain = self.hf_tokenizer
            else:
                spec = json.loads(self._json)
                spec["added_tokens"] = []
                self._hf_plain = hf_from_str(json.dumps(spec))
        return self._hf_plain

    @property
    def tiktoken_encoding(self) -> Any:
        """The tiktoken ``Encoding`` mirroring this tokenizer, or None if it cannot."""
        if not self._tt_built:
            self._tt = self._build_tiktoken() if self._fast_ok else None
            self._tt_built = True
        return self._tt

    def _build_tiktoken(self) -> Any:
        token_id: dict[bytes, int] = {}
        special_ids = set(self.special_tokens.values())
        for i, b in enumerate(self._id_bytes):
            if b is not None and i not in special_ids:
                token_id.setdefault(b, i)
        if any(bytes([x]) not in token_id for x in range(256)):
            return None  # tiktoken needs every single byte
        # 1. Merge results in first-creation order; tokens no merge creates are left out
        #    (HF can never emit them, so tiktoken must not either).
        results: list[bytes] = []
        seen: set[bytes] = set()
        for a, b in self._merges:
            t = a + b
            if t not in seen:
                seen.add(t)
                results.append(t)
        ids = [token_id[t] for t in results]
        singles = {bytes([x]): token_id[bytes([x])] for x in range(256)}
        # 2. Ids usable as ranks when they increase with merge order (HF-trained, GPT-2).
        if all(x < y for x, y in zip(ids, ids[1:])):
            ranks = {**singles, **dict(zip(results, ids))}
            specials = dict(self.special_tokens)
            self._rank_to_id = None
        else:
            # 3. Otherwise rank = merge order, and a table maps ranks back to ids.
            ranks = {bytes([x]): x for x in range(256)}
            ranks.update({t: 256 + k for k, t in enumerate(results)})
            table = [singles[bytes([x])] for x in range(256)] + ids
            specials = {}
            for s, i in self.special_tokens.items():
                specials[s] = len(table)
                table.append(i)
            self._rank_to_id = np.asarray(table, dtype=np.int64)
        return tiktoken.Encoding(
            f"lmlab-{self.fingerprint()[:16]}",
            pat_str=self.pattern,
            mergeable_ranks=ranks,
            special_tokens=specials,
        )

    def _translate(self, ranks: list[int]) -> list[int]:
        if self._rank_to_id is None:
            return ranks
        return self._rank_to_id[ranks].tolist() if ranks else []

    # ---- encoding ----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        tt = self.tiktoken_encoding
        if tt is not None:
            return self._translate(tt.encode(text, allowed_special="all"))
        return hf_encode(self.hf_tokenizer, text)

    def encode_ordinary(self, text: str) -> list[int]:
        tt = self.tiktoken_encoding
        if tt is not None:
            return self._translate(tt.encode_ordinary(text))
        return hf_encode(self._hf_ordinary, text)

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        tt = self.tiktoken_encoding
        if tt is not None:
            return [self._translate(r) for r in tt.encode_ordinary_batch(list(texts))]
        return self.encode_hf_batch(texts, allow_special=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        tt = self.tiktoken_encoding
        if tt is not None:
            return [self._translate(r) for r in tt.encode_batch(list(texts), allowed_special="all")]
        return self.encode_hf_batch(texts, allow_special=True)

    def encode_hf(self, text: str, allow_special: bool = True) -> list[int]:
        """Encode with ``tokenizers`` only (the reference the fast path is tested against)."""
        return hf_encode(self.hf_tokenizer if allow_special else self._hf_ordinary, text)

    def encode_hf_batch(self, texts: list[str], allow_special: bool = False) -> list[list[int]]:
        return hf_encode_batch(self.hf_tokenizer if allow_special else self._hf_ordinary, texts)

    # ---- files -------------------------------------------------------------------------
    def _write_files(self, folder: Path) -> None:
        (Path(folder) / "tokenizer.json").write_text(self._json, encoding="utf-8")


def bpe_from_parts(
    vocab: dict[str, int], merges: list[tuple[str, str]], specials: list[str], where: str
) -> BPETokenizer:
    """Build a GPT-2 style byte-level BPE from byte-level strings (the encoder.json form)."""
    try:
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    except Exception as e:
        raise DataError(f"{where}: vocab and merges do not fit together ({e})") from None
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    if specials:
        hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return BPETokenizer(hf.to_str(), where=where)


# Four times the largest published LM vocabularies (256K). The trainer reserves memory per
# entry up front: 1e9 asked it for 70 GB and aborted the process instead of raising.
MAX_BPE_VOCAB_SIZE = 1 << 20


def check_bpe_vocab_size(vocab_size: int, n_special: int) -> None:
    if vocab_size > MAX_BPE_VOCAB_SIZE:
        raise LmlabError(
            f"vocab_size {vocab_size} is above the largest byte-level BPE vocabulary lmlab trains, "
            f"{MAX_BPE_VOCAB_SIZE:,}"
        )
    if vocab_size < 256 + n_special:
        raise LmlabError(
            f"vocab_size {vocab_size} is too small for byte-level BPE: needs at least "
            f"256 byte tokens + {n_special} special tokens = {256 + n_special}"
        )
