"""Quality filters for documents; ``code`` keeps plausible, parseable Python source.

The code filter applies cheap checks first and the syntax check last, and reports the
first reason a document fails (one reason per dropped document). Exact duplicates are
removed by the caller (`lmlab.data.prepare`), which sees documents in input order, using the
content digest from :func:`digest`; a duplicate is only counted as such when it passed every
other check.

The syntax check parses the source and compiles the tree to bytecode, never executing it. It
catches what the compiler alone finds (``return`` outside a function, bad ``nonlocal``), besides
parse errors. The literal-data check reads the same tree: a module whose lines are mostly
multi-line literal displays (a codec's 256-entry map, an entity table, docs generated into one
dict) is data kept in a ``.py`` file, and a model trained on it learns to write long lists.
"""

from __future__ import annotations

import ast
import hashlib
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Any

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
    "syntax",
    "literal_data",
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
    syntax: require ``compile(src, path, "exec")`` to succeed.
    max_literal_fraction: share of lines inside multi-line literals (dicts, lists, tuples, sets
        and strings of constants only; docstrings aside), above which a file is data, not code.
        The standard library's codec tables (~83%), HTML entity table and generated pydoc topics
        (~100%) are over 0.5, its code modules are not (bench/RESULTS.md "Issue 12, stop 35").
    dedup: drop exact duplicates after the first occurrence (hash of the content).
    """

    min_chars: int = 20
    max_chars: int = 1_000_000  # The Stack's 1 MB file cap; data dumps also fail long_line
    min_lines: int = 2
    max_lines: int = 20_000
    max_line_length: int = 1000
    max_mean_line_length: float = 100.0
    min_alnum_fraction: float = 0.25
    syntax: bool = True
    max_literal_fraction: float = 0.5
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


_COMPILE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError, SystemError)
# ValueError: null bytes (3.11); RecursionError/MemoryError: pathological nesting.


def parse_module(source: str, path: str, compile_tree: bool = True) -> ast.Module | None:
    """``source``'s syntax tree, or None when it does not parse or (``compile_tree``) does not
    compile to bytecode. The code is never executed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning / DeprecationWarning from old code
            tree = ast.parse(source, path)
            if compile_tree:
                compile(tree, path, "exec", dont_inherit=True)
    except _COMPILE_ERRORS:
        return None
    return tree


def syntax_ok(source: str, path: str) -> bool:
    """True when ``source`` compiles as a Python module. The code is never executed."""
    return parse_module(source, path) is not None


def _is_literal(node: ast.AST) -> bool:
    """True for a constant, or a display / arithmetic of constants only (no names, no calls)."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _is_literal(k) for k in node.keys) and all(
            _is_literal(v) for v in node.values
        )
    if isinstance(node, ast.BinOp):
        return _is_literal(node.left) and _is_literal(node.right)
    if isinstance(node, ast.UnaryOp):
        return _is_literal(node.operand)
    return False


def _docstring(node: ast.AST) -> ast.AST | None:
    """The docstring constant of a module, class or function, if it has one."""
    body = getattr(node, "body", None)
    first = body[0] if isinstance(body, list) and body else None
    if (
        isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return first.value
    return None


def literal_fraction(tree: ast.Module, n_lines: int) -> float:
    """Share of a module's ``n_lines`` lines spanned by multi-line literals other than docstrings
    (a one-line constant, as in ``f(1, "a")``, spans none: only data laid out over lines counts)."""
    lines: set[int] = set()
    docs: set[int] = set()
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        start = getattr(node, "lineno", None)
        end = getattr(node, "end_lineno", None)
        if start is not None and (end is None or end <= start):
            continue  # one line holds no multi-line literal: most of a module is skipped here
        doc = _docstring(node)
        if doc is not None:
            docs.add(id(doc))
        if isinstance(node, ast.expr) and id(node) not in docs and _is_literal(node):
            lines.update(range(start, end + 1))  # type: ignore[arg-type]
            continue
        stack.extend(ast.iter_child_nodes(node))
    return len(lines) / max(n_lines, 1)


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
    tree = parse_module(text, path) if cfg.syntax else None
    if cfg.syntax and tree is None:
        return "syntax"
    if cfg.max_literal_fraction < 1.0:
        if tree is None:  # the syntax check is off: judge what parses, leave the rest
            tree = parse_module(text, path, compile_tree=False)
        try:
            if tree is not None and literal_fraction(tree, len(lines)) > cfg.max_literal_fraction:
                return "literal_data"
        except RecursionError:  # literals nested past the interpreter's stack: data
            return "literal_data"
    return None
