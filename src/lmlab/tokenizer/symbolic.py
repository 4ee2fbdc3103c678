"""Symbolic code tokenizer: Python code as structure, with names and literals abstracted away.

Python's :mod:`tokenize` splits the code; then

1. keywords (soft ones too: ``match``, ``case``, ``_``, ``type``), operators, punctuation and
   the layout tokens ``<|NEWLINE|>`` ``<|NL|>`` ``<|INDENT|>`` ``<|DEDENT|>`` stay as tokens;
   so do builtin names (``print``, ``len``, ``ValueError``...), ``self``, ``cls`` and a few
   dunders (``__init__``, ``__name__``...; ``__class__`` always, ``nonlocal`` needs it);
2. every other identifier becomes ``<|SYMBOL|>`` and a per-file index token ``<|k|>``: the
   first new name in the file is ``<|0|>``, the next ``<|1|>``, and a name keeps its index
   wherever it appears (names are compared after NFKC normalisation, as Python does);
3. **overflow rule**: a file has at most ``max_symbols`` (256) indices; each name first seen
   after they are used up is written ``<|OVERFLOW|>`` followed by its spelling in the
   fallback BPE, at every occurrence, so restore gives it back exactly;
4. string literals (docstrings and f-strings included) become ``<|TEXT|>`` and comments
   ``<|COMMENT|>`` (a separate token: a comment can end a line where a string cannot); their
   source texts go to the file's :class:`SymbolTable`;
5. numbers are spelled with a small byte-level BPE of their own (they carry meaning:
   indices, sizes, flags), as is anything ``tokenize`` could not classify (``<|RAW|>`` then
   its spelling). ``<|NUM|>`` separates two spellings that would otherwise run together.

``abstract(code) -> (tokens, table)`` and ``restore(tokens, table) -> code`` round-trip to
the same AST (``ast.dump(ast.parse(code))``); the layout is regenerated (4-space indents,
one logical line per line), not copied. Without a table (model output) names come back as
``v0``, ``v1``..., strings as ``"s0"``, ``"s1"``... and comments as ``# ...``, so a sample's
syntax can be checked with ``compile()`` (:func:`parse_rate`). A name ``tokenize`` splits
(``℘x``: its regex misses some identifier characters) is kept whole as a ``<|RAW|>`` item.

Ids: special tokens, then the fixed tokens above, then the ``max_symbols`` index tokens,
then 256 byte pieces and the learned merges. ``decode(ids)`` restores code without a table;
``DEDENT``s at the end of the input and a final newline the input lacked are not emitted,
so a prompt's ids end where the prompt ends.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import re
import tokenize
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import ConfigError, DataError
from lmlab.io import read_json, write_json
from lmlab.tokenizer.base import Tokenizer
from lmlab.tokenizer.bytelevel import token_str_to_bytes

FORMAT = "lmlab-symbolic-v1"
EOT = "<|endoftext|>"
SYMBOL = "<|SYMBOL|>"
TEXT = "<|TEXT|>"
COMMENT = "<|COMMENT|>"
OVERFLOW = "<|OVERFLOW|>"
RAW = "<|RAW|>"
NUM = "<|NUM|>"
NEWLINE = "<|NEWLINE|>"
NL = "<|NL|>"
INDENT = "<|INDENT|>"
DEDENT = "<|DEDENT|>"
MARKERS = (SYMBOL, TEXT, COMMENT, OVERFLOW, RAW, NUM, NEWLINE, NL, INDENT, DEDENT)

# Written out rather than read from `keyword`/`tokenize` so ids do not depend on the
# interpreter that trains the tokenizer (3.12 adds the soft keyword `type` and the `!` op).
KEYWORDS = (
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class",
    "continue", "def", "del", "elif", "else", "except", "finally", "for", "from", "global",
    "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return",
    "try", "while", "with", "yield",
)  # fmt: skip
SOFT_KEYWORDS = ("_", "case", "match", "type")
OPERATORS = (
    "!=", "%", "%=", "&", "&=", "(", ")", "*", "**", "**=", "*=", "+", "+=", ",", "-", "-=",
    "->", ".", "...", "/", "//", "//=", "/=", ":", ":=", ";", "<", "<<", "<<=", "<=", "=", "==",
    ">", ">=", ">>", ">>=", "@", "@=", "[", "]", "^", "^=", "{", "|", "|=", "}", "~", "!",
)  # fmt: skip
DEFAULT_MAX_SYMBOLS = 256
DEFAULT_VOCAB_SIZE = 1024
MAX_VOCAB_SIZE = 1024  # the README's promise: a symbolic vocabulary is at most 1024 tokens
COMMENT_PLACEHOLDER = "# ..."

_INDEX_RE = re.compile(r"<\|(\d+)\|>")
_MARKER_RE = re.compile(r"<\|[^|\s]*\|>")
_HARD_KEYWORDS = frozenset(KEYWORDS)
_OPERATOR_SET = frozenset(OPERATORS)


# `__class__` is always kept: `nonlocal __class__` compiles only under that name.
ALWAYS_KEPT = ("__class__",)
COMMON_NAMES = ("__all__", "__doc__", "__file__", "__init__", "__name__", "cls", "self")


def default_kept_names() -> list[str]:
    """Names kept as they are: the interpreter's public builtins and a few common names."""
    names = {n for n in dir(builtins) if not n.startswith("_")} - set(KEYWORDS) - set(SOFT_KEYWORDS)
    return sorted(names) + list(COMMON_NAMES)


def default_fixed_tokens(keep_builtins: bool = True) -> list[str]:
    """Keywords, operators and (optionally) kept names: the tokens that stand for themselves."""
    kept = default_kept_names() if keep_builtins else []
    return [*KEYWORDS, *SOFT_KEYWORDS, *OPERATORS, *ALWAYS_KEPT, *kept]


@dataclass
class SymbolTable:
    """What :func:`abstract` took out of one file, for :func:`restore` to put back."""

    names: list[str] = field(default_factory=list)  # index k -> the name's first spelling
    strings: list[str] = field(default_factory=list)  # string literals' source, in order
    comments: list[str] = field(default_factory=list)  # comments' source, in order


# --- lexing -----------------------------------------------------------------------------------

_NAME, _NUMBER, _STRING, _COMMENT, _OP, _RAW = "name", "number", "string", "comment", "op", "raw"
_LAYOUT = {
    tokenize.NEWLINE: NEWLINE,
    tokenize.NL: NL,
    tokenize.INDENT: INDENT,
    tokenize.DEDENT: DEDENT,
}
_FSTRING_START = getattr(tokenize, "FSTRING_START", None)  # 3.12+: f-strings come in pieces
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)
_STRING_START_RE = re.compile(r"(?i)[rbuf]{0,2}['\"]")


def _lex(code: str) -> list[tuple[str, str]]:
    """(kind, text) pairs for ``code``; kind is a layout marker or one of the _NAME... kinds.

    Never raises: when ``tokenize`` gives up (unterminated string or bracket at the end of a
    prompt, inconsistent dedent, ...) the rest of the source becomes one string (if it opens
    with a quote) or raw item.
    """
    starts = [0]  # character offset of each line, for slicing f-strings and leftovers
    for line in io.StringIO(code, newline="\n"):
        starts.append(starts[-1] + len(line))

    def offset(pos: tuple[int, int]) -> int:
        row, col = pos
        return starts[min(row - 1, len(starts) - 1)] + col

    # Positions stay (row, col) tuples: only f-strings and leftovers need offsets.
    items: list[tuple[str, str, Any, Any]] = []  # kind, text, start, end
    end_of_last: tuple[int, int] = (1, 0)
    fstring_depth, fstring_start = 0, (1, 0)
    append = items.append
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code, newline="\n").readline):
            if tok.type == _FSTRING_START:
                if fstring_depth == 0:
                    fstring_start = tok.start
                fstring_depth += 1
                continue
            if fstring_depth:
                if tok.type == _FSTRING_END:
                    fstring_depth -= 1
                    if fstring_depth == 0:
                        text = code[offset(fstring_start) : offset(tok.end)]
                        append((_STRING, text, fstring_start, tok.end))
                        end_of_last = tok.end
                continue
            kind = _kind_of(tok)
            if kind is not None:
                append((kind, tok.string, tok.start, tok.end))
                end_of_last = max(end_of_last, tok.end)
    except (tokenize.TokenError, SyntaxError):
        rest_start = offset(fstring_start if fstring_depth else end_of_last)
        rest = code[rest_start:].strip()
        if rest:
            kind = _STRING if _STRING_START_RE.match(rest) else _RAW
            append((kind, rest, (-1, -1), (-1, -1)))
    items = _merge_error_tokens(items)
    # DEDENTs at the end are implied, and so is a final newline the source did not have.
    while items and (
        items[-1][0] == DEDENT or (items[-1][0] in (NEWLINE, NL) and not items[-1][1])
    ):
        items.pop()
    return [(kind, text) for kind, text, _, _ in items]


def _kind_of(tok: tokenize.TokenInfo) -> str | None:
    t = tok.type
    if t in _LAYOUT:
        return _LAYOUT[t]
    if t == tokenize.NAME:
        return _NAME
    if t == tokenize.NUMBER:
        return _NUMBER
    if t == tokenize.STRING:
        return _STRING
    if t == tokenize.COMMENT:
        return _COMMENT
    if t == tokenize.OP:
        return _OP if tok.string in _OPERATOR_SET else _RAW
    if t == tokenize.ERRORTOKEN:
        return _RAW if tok.string.strip() else None
    return None  # ENCODING, ENDMARKER, TYPE_COMMENT...


def _merge_error_tokens(items: list[tuple[str, str, Any, Any]]) -> list[tuple[str, str, Any, Any]]:
    """Glue a raw item to the names/numbers/raw items touching it (no space between).

    ``tokenize`` splits an identifier at a character its regex does not know (``℘x``); kept
    apart, restore would put a space inside it.
    """
    if not any(kind == _RAW for kind, _, _, _ in items):
        return items
    glue = (_RAW, _NAME, _NUMBER)
    out: list[tuple[str, str, Any, Any]] = []
    for item in items:
        kind, text, start, end = item
        if (
            out
            and kind in glue
            and out[-1][0] in glue
            and out[-1][3] == start
            and _RAW in (kind, out[-1][0])
        ):
            _, ptext, pstart, _ = out.pop()
            out.append((_RAW, ptext + text, pstart, end))
        else:
            out.append(item)
    return out


# --- abstract / restore -----------------------------------------------------------------------


def abstract(
    code: str,
    max_symbols: int = DEFAULT_MAX_SYMBOLS,
    fixed_tokens: Iterable[str] | None = None,
) -> tuple[list[str], SymbolTable]:
    """Symbolic tokens for ``code`` and the file's symbol table (see the module docstring).

    ``fixed_tokens`` are the names and operators that stand for themselves (default:
    :func:`default_fixed_tokens`). Items spelled with the BPE (numbers, and the text after
    ``<|OVERFLOW|>`` or ``<|RAW|>``) appear as their plain text.
    """
    fixed = frozenset(default_fixed_tokens() if fixed_tokens is None else fixed_tokens)
    return _abstract(code, max_symbols, fixed)


def _abstract(code: str, max_symbols: int, fixed: frozenset[str]) -> tuple[list[str], SymbolTable]:
    table = SymbolTable()
    index: dict[str, int] = {}
    tokens: list[str] = []
    append = tokens.append
    for kind, text in _lex(code):
        if kind == _NAME:
            if text in fixed:
                append(text)
                continue
            key = unicodedata.normalize("NFKC", text) if not text.isascii() else text
            k = index.get(key)
            if k is None:
                if len(table.names) >= max_symbols:
                    tokens += (OVERFLOW, text)
                    continue
                k = index[key] = len(table.names)
                table.names.append(text)
            tokens += (SYMBOL, f"<|{k}|>")
        elif kind == _OP:
            tokens += (text,) if text in fixed else (RAW, text)
        elif kind == _NUMBER:
            append(text)
        elif kind == _STRING:
            append(TEXT)
            table.strings.append(text)
        elif kind == _COMMENT:
            append(COMMENT)
            table.comments.append(text)
        elif kind == _RAW:
            tokens += (RAW, text)
        else:  # layout marker
            append(kind)
    return tokens, table


# Spacing: one space between tokens except where dropping it cannot change the tokenization
# (brackets, commas and ``;`` never merge with a neighbour) and reads better.
_NO_SPACE_BEFORE = frozenset(")]},;:")
_OPENERS = frozenset("([{")
_CLOSERS = frozenset(")]}")
_TIGHT_AFTER_OPERAND = frozenset("([.")
_UNARY = frozenset(("-", "+", "~", "*", "**"))
_SPACED_NAMES = _HARD_KEYWORDS | {"match", "case"}  # `if (x)`, `case [a, b]`, but `f(x)`


def restore(tokens: Sequence[str], table: SymbolTable | None = None) -> str:
    """Code for symbolic ``tokens``; with the file's ``table`` it has the original's AST.

    Without a table (or past its end) names are ``v<k>``, strings ``"s<n>"``, comments
    ``# ...``. Never raises, whatever the tokens (model output is welcome).
    """
    names = table.names if table is not None else []
    strings = table.strings if table is not None else []
    comments = table.comments if table is not None else []
    # Generated names must not collide with a name spelled out after <|OVERFLOW|>/<|RAW|>.
    spelled = {tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in (OVERFLOW, RAW)}
    n_string = n_comment = 0
    w = _Writer()
    pending = ""  # OVERFLOW or RAW: the next token is spelled text

    def name_for(k: int) -> str:
        if k < len(names):
            return names[k]
        name = f"v{k}"
        while name in spelled:
            name += "_"
        return name

    for tok in tokens:
        if pending:
            marker, pending = pending, ""
            if not _MARKER_RE.fullmatch(tok):  # else the marker dangles: drop it
                w.emit(tok, _NAME if marker == OVERFLOW and tok.isidentifier() else _RAW)
                continue
        if tok == NEWLINE:
            w.newline(statement_end=True)
        elif tok == NL:
            w.newline(statement_end=False)
        elif tok == INDENT:
            w.level += 1
        elif tok == DEDENT:
            w.level = max(0, w.level - 1)
        elif tok in (OVERFLOW, RAW):
            pending = tok
        elif tok == TEXT:
            # Numbered placeholders: `case {"s0": 1, "s1": 2}` must not repeat a key.
            w.emit(strings[n_string] if n_string < len(strings) else f'"s{n_string}"', _STRING)
            n_string += 1
        elif tok == COMMENT:
            w.emit(
                comments[n_comment] if n_comment < len(comments) else COMMENT_PLACEHOLDER, _COMMENT
            )
            n_comment += 1
        elif m := _INDEX_RE.fullmatch(tok):
            w.emit(name_for(int(m.group(1))), _NAME)
        elif _MARKER_RE.fullmatch(tok) or not tok:
            continue  # <|SYMBOL|> (its index carries the name), <|NUM|>, special tokens
        elif tok in _OPERATOR_SET:
            w.emit(tok, _OP)
        elif tok.isidentifier():
            w.emit(tok, _NAME)
        else:
            w.emit(tok, _NUMBER if tok[0].isdigit() or tok[0] == "." else _RAW)
    return "".join(w.out)


class _Writer:
    """Lays tokens out: 4-space indents, continuation lines one level deeper, and spaces
    except where dropping one cannot change how the line tokenizes (see :meth:`_space`)."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.level = 0  # INDENT depth
        self.brackets: list[str] = []  # open brackets: a continuation line when not empty
        self.line_start = True
        self.after_comment = False
        self.prev = self.prev2 = ("", "")  # (text, kind) of the last two tokens on this line
        self.prev_first = False  # the last token opened its line
        self.tight_eq = False  # the last token is a keyword-argument `=` (written tight)

    def newline(self, statement_end: bool) -> None:
        if statement_end:
            self.brackets.clear()  # real code has no open bracket here; model output may
        if not self.after_comment:
            self.out.append("\n")
        self.line_start, self.after_comment = True, False
        self.prev = self.prev2 = ("", "")

    def emit(self, text: str, kind: str) -> None:
        if kind == _OP and text in _CLOSERS and self.brackets:
            self.brackets.pop()
        spaced = False
        if self.line_start:
            self.out.append("    " * (self.level + bool(self.brackets)))
        elif self._space(text, kind):
            self.out.append("  " if kind == _COMMENT else " ")
            spaced = True
        self.out.append(text)
        self.tight_eq = kind == _OP and text == "=" and not spaced and not self.line_start
        if kind == _OP and text in _OPENERS:
            self.brackets.append(text)
        self.prev2, self.prev = self.prev, (text, kind)
        self.prev_first, self.line_start, self.after_comment = self.line_start, False, False
        if kind == _COMMENT:  # a comment always ends its line, so nothing after it is lost
            self.out.append("\n")
            self.line_start, self.after_comment = True, True
            self.prev = self.prev2 = ("", "")

    def _space(self, text: str, kind: str) -> bool:
        """Whether a space goes between the previous token and this one.

        Tokens written tight never merge: brackets, ``,`` ``;`` never combine with a
        neighbour, and the other tight cases are followed by an operand (a name, number,
        string or opening bracket), which no operator combines with.
        """
        (prev, prev_kind), (prev2, prev2_kind) = self.prev, self.prev2
        if kind == _COMMENT:
            return True
        if prev_kind == _OP and (prev in _OPENERS or (prev == "@" and self.prev_first)):
            return False  # (x, [x, {x, @decorator
        operand_next = kind in (_NAME, _NUMBER, _STRING) or (kind == _OP and text in _OPENERS)
        if kind == _OP:
            if text in _NO_SPACE_BEFORE:
                return False
            operand = prev_kind == _STRING or (prev_kind == _OP and prev in _CLOSERS)
            if prev_kind == _NAME:
                operand = prev not in (_HARD_KEYWORDS if text == "." else _SPACED_NAMES)
            if text in _TIGHT_AFTER_OPERAND and operand:  # f(x), a[i], obj.attr; `1 .real` keeps it
                return False
            if text == "=" and self.brackets[-1:] == ["("] and operand:
                return False  # f(a=1), def g(b=2)
        if prev_kind == _OP:
            if prev == "." and kind == _NAME and text not in _HARD_KEYWORDS:
                return False
            if self.tight_eq and (operand_next or text in _UNARY):
                return False  # f(a=-1)
            unary = prev in _UNARY and (
                prev2_kind == ""
                or (prev2_kind == _OP and prev2 not in _CLOSERS)
                or (prev2_kind == _NAME and prev2 in _HARD_KEYWORDS)
            )
            if unary and operand_next:
                return False  # -1, f(*args, **kw), return -x, lambda *a: a
            if prev == ":" and self.brackets[-1:] == ["["] and (operand_next or text in "-+~"):
                return False  # a[1:-1]
        return True


# --- the tokenizer ----------------------------------------------------------------------------

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
        bad = [t for t in fixed if not (t.isidentifier() or t in _OPERATOR_SET)]
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
        return _abstract(code, self.max_symbols, self._fixed_set)

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

    def parse_rate(self, sequences: Iterable[Sequence[int]]) -> dict[str, Any]:
        return parse_rate(sequences, self)

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


# --- training -----------------------------------------------------------------------------------


def check_symbolic_vocab_size(
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    max_symbols: int = DEFAULT_MAX_SYMBOLS,
    keep_builtins: bool = True,
) -> SymbolicTokenizer:
    """The tokenizer without merges; ConfigError if ``vocab_size`` cannot even hold that,
    or is above :data:`MAX_VOCAB_SIZE`."""
    if vocab_size > MAX_VOCAB_SIZE:
        raise ConfigError(f"vocab_size: {vocab_size} is above the symbolic tokenizer's maximum of {MAX_VOCAB_SIZE}")
    base = SymbolicTokenizer(
        (),
        max_symbols=max_symbols,
        fixed_tokens=default_fixed_tokens(keep_builtins),
        special_tokens=special_tokens,
    )
    if vocab_size < base.vocab_size:
        raise ConfigError(
            f"vocab_size: {vocab_size} is too small for the symbolic tokenizer: its fixed tokens, "
            f"{max_symbols} symbol indices and 256 bytes already take {base.vocab_size}"
        )
    return base


def train_symbolic(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    special_tokens: Sequence[str] = (),
    max_symbols: int = DEFAULT_MAX_SYMBOLS,
    keep_builtins: bool = True,
) -> SymbolicTokenizer:
    """Fit the fallback BPE so the whole vocabulary is at most ``vocab_size``.

    The BPE learns from what the files make it spell (numbers, overflowing names, raw
    items) plus each file's distinct abstracted names once, so overflow in bigger files
    than the training ones is spelled compactly too.
    """
    base = check_symbolic_vocab_size(vocab_size, special_tokens, max_symbols, keep_builtins)
    n_merges = vocab_size - base.vocab_size
    words: Counter[str] = Counter()
    for code in texts:
        tokens, table = base.abstract(code)
        spelled_next = False
        for tok in tokens:
            if spelled_next or tok not in base._id:
                words[tok] += 1
            spelled_next = tok in (OVERFLOW, RAW)
        words.update(table.names)
    merges = _train_merges(words, n_merges) if n_merges else []
    return SymbolicTokenizer(
        merges,
        max_symbols=max_symbols,
        fixed_tokens=base.fixed_tokens,
        special_tokens=special_tokens,
    )


def _train_merges(words: Counter[str], n_merges: int) -> list[tuple[bytes, bytes]]:
    """Byte-level BPE merges over whole words, trained with Hugging Face ``tokenizers``."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    if not words:
        return []
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=256 + n_merges,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator((w for w, c in words.items() for _ in range(c)), trainer)
    raw = json.loads(hf.to_str())["model"]["merges"]
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in raw]
    return [(token_str_to_bytes(a), token_str_to_bytes(b)) for a, b in pairs][:n_merges]


# --- checks ------------------------------------------------------------------------------------


def parse_rate(sequences: Iterable[Sequence[int]], tokenizer: SymbolicTokenizer) -> dict[str, Any]:
    """Share of token sequences (model samples) whose table-less restore compiles.

    A sample ends at its first ``<|endoftext|>``. Returns :func:`lmlab.eval.code.parse_report`'s
    ``{"samples", "parsed", "parse_rate", "empty", "errors"}``: an empty sample does not pass.
    """
    from lmlab.eval.code import parse_report

    eot = tokenizer.eot_id

    def programs() -> Iterator[str]:
        for seq in sequences:
            ids = [int(i) for i in seq]
            if eot is not None and eot in ids:
                ids = ids[: ids.index(eot)]
            yield restore(tokenizer.ids_to_tokens(i for i in ids if i not in tokenizer._special_ids))

    return parse_report(programs())


def same_ast(a: str, b: str) -> bool:
    """Whether two sources parse to the same AST (``ast.dump`` equal)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))
