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
