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
syntax can be checked with ``compile()`` (:func:`lmlab.eval.code.parse_rate`). A name ``tokenize`` splits
(``℘x``: its regex misses some identifier characters) is kept whole as a ``<|RAW|>`` item.

"""

from __future__ import annotations

import ast
import builtins
import io
import re
import tokenize
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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


def same_ast(a: str, b: str) -> bool:
    """Whether two sources parse to the same AST (``ast.dump`` equal)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))
