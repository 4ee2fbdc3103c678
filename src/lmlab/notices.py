"""Warnings a user reads once: the same skipped file is reported by the first stage that meets it.

`lmlab demo` and `lmlab run` read the same corpus in the tokenizer and the data stages; each
used to report the standard library's non-UTF-8 files, in two wordings. Both now word it with
:func:`utf8_reason` and print through :func:`warn_once`, which remembers what this process said.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from pathlib import Path

from tqdm import tqdm

_said: set[Hashable] = set()


def utf8_reason(e: UnicodeDecodeError, base: int = 0) -> str:
    """``not valid UTF-8 (byte 0xe9 at byte offset 1234)``: the first bad byte, counted from 0."""
    bad = e.object[e.start : e.start + 1]
    return f"not valid UTF-8 (byte 0x{bad.hex()} at byte offset {base + e.start})"


def file_key(kind: str, path: str | Path) -> tuple[str, str]:
    """The key of a notice about one file, whatever relative or absolute path names it."""
    return kind, str(Path(path).resolve())


def first_time(key: Hashable) -> bool:
    """True the first time ``key`` is seen in this process (then it is remembered)."""
    if key in _said:
        return False
    _said.add(key)
    return True


def _stderr(line: str) -> None:
    tqdm.write(line, file=sys.stderr)  # above a progress bar, if one is drawn


def warn_once(
    message: str, key: Hashable | None = None, write: Callable[[str], None] | None = None
) -> None:
    """Print ``lmlab: warning: message`` to stderr unless ``key`` (default: the message) was warned already."""
    if first_time(message if key is None else key):
        (write or _stderr)(f"lmlab: warning: {message}")


def progress_on_terminal() -> bool:
    """Whether a progress bar (tqdm draws on stderr) would be seen on a terminal: in a log file
    its carriage-return frames become thousands of lines, so bars are drawn only on a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
