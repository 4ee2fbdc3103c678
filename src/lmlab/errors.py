"""User-facing errors.

Library code raises :class:`LmlabError` (a ``ValueError``) for anything the user can fix:
a missing file, a bad config value, malformed data. The command line prints its message as
one line and exits with status 2; library users catch it like any ``ValueError``.
"""

from __future__ import annotations


class LmlabError(ValueError):
    """A problem with the user's input: the message names the file, line or key."""


class ConfigError(LmlabError):
    """A bad config key or value; the message names the key."""


class DataError(LmlabError):
    """Malformed or missing input data; the message names the file (and line where known)."""


class CheckpointError(LmlabError):
    """A missing, incomplete or corrupt checkpoint or run folder."""


def os_error_message(e: OSError, where: str = "") -> str:
    """One line for a failed file operation: the path (``e.filename``, else ``where``) and why.

    A write that fails on a full disk or a read-only filesystem often carries no file name
    (``write()``/``fsync()`` on an open file); ``where`` then names the output being written.
    """
    path = e.filename if e.filename is not None else where
    reason = e.strerror or str(e) or type(e).__name__
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    return f"{path}: {reason}" if path else reason
