"""The symbolic tokenizer: :mod:`.abstract`'s tokens as ids, spelled items through a small BPE.
Ids: special tokens, then the fixed tokens above, then the ``max_symbols`` index tokens,
then 256 byte pieces and the learned merges. ``decode(ids)`` restores code without a table;
``DEDENT``s at the end of the input and a final newline the input lacked are not emitted,
so a prompt's ids end where the prompt ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lmlab.errors import ConfigError, DataError
from lmlab.io import read_json, write_json
from lmlab.tokenizer.base import Tokenizer
from lmlab.tokenizer.symbolic.abstract import (
    DEFAULT_MAX_SYMBOLS,
    EOT,
    MARKERS,
    NUM,
    OPERATORS,
    OVERFLOW,
    RAW,
    SymbolTable,
    abstract,
    default_fixed_tokens,
    restore,
)

FORMAT = "lmlab-symbolic-v1"
SYMBOLIC_FILE = "symbolic.json"


class SymbolicTokenizer(Tokenizer):
    """The symbolic tokenizer behind ``kind="symbolic"``; see the module docstring.

    ``encode`` treats each stretch of text between special tokens as one file (indices
    restart); ``decode`` restores code without a table, so it is lossy by design: names
    become ``v0``..., literals placeholders. ``<|endoftext|>`` is always a special token.
    """

    kind = "symbolic"

    def __init__(
        self,
        merges: Sequence[tuple[bytes, bytes]] = (),
        *,
        max_symbols: int = DEFAULT_MAX_SYMBOLS,
        fixed_tokens: Sequence[str] | None = None,
        special_tokens: Sequence[str] = (EOT,),
    ) -> None:
        if max_symbols < 1:
            raise ConfigError(f"max_symbols: must be >= 1, got {max_symbols}")
        fixed = list(
            dict.fromkeys(default_fixed_tokens() if fixed_tokens is None else fixed_tokens)
        )
        specials = list(dict.fromkeys([EOT, *special_tokens]))
        clash = set(specials) & (set(MARKERS) | set(fixed))
        if clash:
            raise ConfigError(
                f"special_tokens: {sorted(clash)} already mean something in the symbolic tokenizer"
            )
        bad = [t for t in fixed if not (t.isidentifier() or t in OPERATORS)]
        if bad:
            raise ConfigError(
                f"fixed_tokens: {bad[:3]} are neither identifiers nor Python operators"
            )
        merges = [(bytes(a), bytes(b)) for a, b in merges]
        strings = [*specials, *MARKERS, *fixed, *(f"<|{k}|>" for k in range(max_symbols))]
        pieces = [bytes([b]) for b in range(256)] + [a + b for a, b in merges]
        super().__init__(
            [s.encode() for s in strings] + pieces, {s: i for i, s in enumerate(specials)}, merges
        )
        self.max_symbols = max_symbols
        self.fixed_tokens = fixed
        self._fixed_set = frozenset(fixed)
        self._id = {s: i for i, s in enumerate(strings)}
        self._string_of = strings  # id -> token string, for ids below the first piece
        self._first_piece = len(strings)
        self._piece_id = {p: self._first_piece + i for i, p in enumerate(pieces)}
        if len(self._piece_id) != len(pieces):
            raise ConfigError("merges: two merges make the same piece")
        self._rank = {pair: r for r, pair in enumerate(merges)}
        self._num_id, self._overflow_id, self._raw_id = (
            self._id[NUM],
            self._id[OVERFLOW],
            self._id[RAW],
        )
        self._special_ids = {i: s for s, i in self.special_tokens.items()}
        self._special_re = re.compile(
            "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
        )
        self._cache: dict[str, list[int]] = {}
        self.meta = {"max_symbols": max_symbols, "num_fixed_tokens": len(fixed)}

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.to_dict(), "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        d = state["data"]
        self.__init__(  # type: ignore[misc]
            [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in d["merges"]],
            max_symbols=d["max_symbols"],
            fixed_tokens=d["fixed_tokens"],
            special_tokens=d["special_tokens"],
        )
        self.meta = state["meta"]

    # -- abstract / restore with this tokenizer's vocabulary
    def abstract(self, code: str) -> tuple[list[str], SymbolTable]:
        return abstract(code, self.max_symbols, self._fixed_set)

    @staticmethod
    def restore(tokens: Sequence[str], table: SymbolTable | None = None) -> str:
        return restore(tokens, table)

    def tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        """Ids for symbolic tokens; spelled text goes through the BPE."""
        ids: list[int] = []
        spelled_next = False
        for tok in tokens:
            i = None if spelled_next else self._id.get(tok)
            if i is not None:
                ids.append(i)
                spelled_next = i in (self._overflow_id, self._raw_id)
                continue
            if not spelled_next and ids and ids[-1] >= self._first_piece:
                ids.append(self._num_id)  # two spellings in a row: keep them apart
            spelled_next = False
            ids += self._spell(tok)
        return ids

    def ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Symbolic tokens for ids: each run of BPE pieces becomes one spelled token.

        Ids outside the vocabulary are dropped (model output never makes this raise).
        """
        tokens: list[str] = []
        run = bytearray()
        first_piece, table, strings = self._first_piece, self._id_bytes, self._string_of
        for i in ids:
            i = int(i)
            if first_piece <= i < len(table):
                run += table[i]  # type: ignore[arg-type]
                continue
            if run:
                tokens.append(run.decode("utf-8", errors="replace"))
                run.clear()
            if 0 <= i < first_piece and i != self._num_id:
                tokens.append(strings[i])
        if run:
            tokens.append(run.decode("utf-8", errors="replace"))
        return tokens

    def _spell(self, text: str) -> list[int]:
        """Byte-level BPE: merge the lowest-ranked adjacent pair until none is a merge."""
        ids = self._cache.get(text)
        if ids is not None:
            return ids
        parts = [bytes([b]) for b in text.encode("utf-8", "surrogatepass")]
        rank = self._rank
        while len(parts) > 1:
            best, best_rank = -1, len(rank)
            for j in range(len(parts) - 1):
                r = rank.get((parts[j], parts[j + 1]), best_rank)
                if r < best_rank:
                    best, best_rank = j, r
            if best < 0:
                break
            pair, merged, j = (parts[best], parts[best + 1]), [], 0
            while j < len(parts):
                if j < len(parts) - 1 and (parts[j], parts[j + 1]) == pair:
                    merged.append(pair[0] + pair[1])
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        ids = [self._piece_id[p] for p in parts]
        if len(self._cache) < 100_000:
            self._cache[text] = ids
        return ids

    # -- the Tokenizer interface
    def encode_ordinary(self, text: str) -> list[int]:
        """One file's ids; ``<|endoftext|>`` written in it is just code (it lexes as operators)."""
        return self.tokens_to_ids(self.abstract(text)[0])

    def encode(self, text: str) -> list[int]:
        """Ids; each stretch between special tokens is abstracted as a file of its own."""
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            ids += self.encode_ordinary(text[pos : m.start()])
            ids.append(self.special_tokens[m.group()])
            pos = m.end()
        ids += self.encode_ordinary(text[pos:])
        return ids

    def encode_with_table(self, code: str) -> tuple[list[int], SymbolTable]:
        tokens, table = self.abstract(code)
        return self.tokens_to_ids(tokens), table

    def encode_file(
        self, path: Path | str, chunk_bytes: int = 1 << 20, allow_special: bool = False
    ) -> Iterator[list[int]]:
        """The whole file at once: cutting it would restart symbol numbering mid-file."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as e:
            raise DataError(f"{path}: cannot open ({e.strerror})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 near byte {e.start}") from None
        if text:
            yield self.encode(text) if allow_special else self.encode_ordinary(text)

    def decode(self, ids: Iterable[int], table: SymbolTable | None = None) -> str:
        """Code for ids (restore without a table unless one is given); never raises."""
        parts: list[str] = []
        segment: list[int] = []
        for i in ids:
            special = self._special_ids.get(int(i))
            if special is None:
                segment.append(int(i))
                continue
            parts += (restore(self.ids_to_tokens(segment), table), special)
            segment = []
        parts.append(restore(self.ids_to_tokens(segment), table))
        return "".join(parts)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8", "surrogatepass")

    def restore_sample(self, ids: Iterable[int]) -> str:
        """A model sample's code without a table: up to its first ``<|endoftext|>``, other
        special tokens dropped (:func:`lmlab.eval.code.parse_rate` compiles it)."""
        ids = [int(i) for i in ids]
        eot = self.eot_id
        if eot is not None and eot in ids:
            ids = ids[: ids.index(eot)]
        return restore(self.ids_to_tokens(i for i in ids if i not in self._special_ids))

    # -- files
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "max_symbols": self.max_symbols,
            "special_tokens": list(self.special_tokens),
            "fixed_tokens": self.fixed_tokens,
            "merges": [[a.hex(), b.hex()] for a, b in self._merges],
        }

    def _write_files(self, folder: Path) -> None:
        write_json(Path(folder) / SYMBOLIC_FILE, self.to_dict())

    @classmethod
    def from_file(cls, path: Path | str) -> SymbolicTokenizer:
        """From ``symbolic.json`` (or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / SYMBOLIC_FILE
        d = read_json(path)
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DataError(f"{path}: not an lmlab symbolic tokenizer file (format {FORMAT})")
        try:
            return cls(
                [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in d["merges"]],
                max_symbols=int(d["max_symbols"]),
                fixed_tokens=[str(t) for t in d["fixed_tokens"]],
                special_tokens=[str(t) for t in d["special_tokens"]],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                f"{path}: malformed symbolic tokenizer file ({type(e).__name__}: {e})"
            ) from None

    def __repr__(self) -> str:
        return f"<SymbolicTokenizer vocab_size={self.vocab_size} max_symbols={self.max_symbols} merges={len(self._merges)}>"
