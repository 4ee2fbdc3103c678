"""Quality filters for documents; ``code`` keeps plausible, parseable Python source.

The code filter applies cheap checks first and the syntax check last, and reports the
first reason a document fails (one reason per dropped document). Exact duplicates are
removed by the caller (`lmlab.data.prepare`), which sees documents in input order, using the
content digest from :func:`digest`; a duplicate is only counted as such when it passed every
other check.

The syntax check compiles the source with ``compile(src, path, "exec", dont_inherit=True)``:
the code is parsed and compiled to bytecode, never executed. It catches what the compiler
alone finds (``return`` outside a function, bad ``nonlocal``), besides parse errors.

The literal-data check reads lines, not a syntax tree (a parse would cost as much again as the
syntax check): a module most of whose lines hold nothing but literals (a codec's 256-entry map,
an entity table, docs generated into one dict of strings) is data kept in a ``.py`` file, and a
model trained on it learns to write long lists.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Any

# The quality filters a tokenizer or a dataset can be given (tokenizer.filter, prepare.filter).
FILTERS = ("none", "code")

# Reasons a document is dropped, in the order they are checked.
REASONS = (
    "empty",
    "too_short",
    "too_long",
    "too_few_lines",
    "too_many_lines",
    "long_line",
    "long_mean_line",
    "low_alnum",
    "literal_data",
    "syntax",
    "duplicate",
)


@dataclass(frozen=True)
class CodeFilter:
    """Thresholds of the ``code`` filter (defaults follow common code-LM data practice).

    min_chars / max_chars: document length in characters (tiny stubs and generated blobs out).
    min_lines / max_lines: number of lines.
    max_line_length: longest line (minified code, embedded data).
    max_mean_line_length: average line length (the same, spread over a file).
    min_alnum_fraction: share of letters and digits among all characters (data tables, art).
    max_literal_fraction: share of lines holding only literals (:func:`literal_line_fraction`)
        above which a file is data, not code. The standard library's codec tables (83-92%),
        HTML entities and generated pydoc topics (~100%) are over 0.5; its code modules are not
        (bench/RESULTS.md "Issue 12, stop 35"). 1.0 turns the check off.
    syntax: require ``compile(src, path, "exec")`` to succeed.
    dedup: drop exact duplicates after the first occurrence (hash of the content).
    """

    min_chars: int = 20
    max_chars: int = 1_000_000  # The Stack's 1 MB file cap; data dumps also fail long_line
    min_lines: int = 2
    max_lines: int = 20_000
    max_line_length: int = 1000
    max_mean_line_length: float = 100.0
    min_alnum_fraction: float = 0.25
    max_literal_fraction: float = 0.5
    syntax: bool = True
    dedup: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NON_ALNUM = re.compile(r"[\W_]+")
_ASCII_NON_ALNUM = bytes(b for b in range(128) if not chr(b).isalnum())


def digest(data: bytes) -> bytes:
    """16-byte content digest used for exact-duplicate removal and the train/val split."""
    return hashlib.blake2b(data, digest_size=16).digest()


def alnum_fraction(text: str, data: bytes) -> float:
    """Fraction of characters that are letters or digits (``data`` is ``text`` in UTF-8)."""
    if not text:
        return 0.0
    if text.isascii():  # fast path: delete non-alphanumeric bytes at C speed
        return len(data.translate(None, _ASCII_NON_ALNUM)) / len(text)
    return len(_NON_ALNUM.sub("", text)) / len(text)


def syntax_ok(source: str, path: str) -> bool:
    """True when ``source`` compiles as a Python module. The code is never executed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning / DeprecationWarning from old code
            compile(source, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError, SystemError):
        # ValueError: null bytes (3.11); RecursionError/MemoryError: pathological nesting.
        return False
    return True


# A line of literals only: strings (one-line; no f-strings), numbers, True/False/None, joined by
# commas, colons, brackets, + or spaces, with at most a trailing comment. Possessive and atomic
# groups keep a failing line linear (no backtracking into the alternatives).
_STRING = r"""[bBuUrR]{0,2}(?:'(?:[^'\\\n]|\\.)*+'|"(?:[^"\\\n]|\\.)*+")"""
_NUMBER = (
    r"[-+]?(?:0[xXoObB][0-9a-fA-F_]++|[0-9][0-9_]*+\.?[0-9_]*+(?:[eE][-+]?[0-9]++)?j?|\.[0-9]++)"
)
_ATOM = rf"(?:{_STRING}|{_NUMBER}|True|False|None)"
_JOINERS = r"[ \t\r,:()\[\]{}+]"
_LITERAL_LINE = re.compile(rf"^(?>{_JOINERS}*+{_ATOM})++{_JOINERS}*+(?:#[^\n]*+)?$", re.M)


def literal_line_fraction(text: str, n_lines: int) -> float:
    """Share of ``text``'s ``n_lines`` lines that hold only literals, such as ``'\\x00'  # 0x00``
    or ``'AElig': '\\xc6',``. Code lines name things and call them; a one-line docstring counts,
    the lines of a multi-line (triple-quoted) string do not."""
    return len(_LITERAL_LINE.findall(text)) / max(n_lines, 1)


def code_reject_reason(text: str, data: bytes, path: str, cfg: CodeFilter) -> str | None:
    """The first reason ``text`` fails the code filter, or None when it passes (dedup aside)."""
    n = len(text)
    if not text or text.isspace():
        return "empty"
    if n < cfg.min_chars:
        return "too_short"
    if n > cfg.max_chars:
        return "too_long"
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # a final newline does not start another line
    if len(lines) < cfg.min_lines:
        return "too_few_lines"
    if len(lines) > cfg.max_lines:
        return "too_many_lines"
    if max(map(len, lines)) > cfg.max_line_length:
        return "long_line"
    if n / len(lines) > cfg.max_mean_line_length:
        return "long_mean_line"
    if alnum_fraction(text, data) < cfg.min_alnum_fraction:
        return "low_alnum"
    if (
        cfg.max_literal_fraction < 1.0
        and literal_line_fraction(text, len(lines)) > cfg.max_literal_fraction
    ):
        return "literal_data"
    if cfg.syntax and not syntax_ok(text, path):
        return "syntax"
    return None
