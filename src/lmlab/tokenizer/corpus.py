"""Reading training/measurement text: UTF-8 files, skipping (and recording) the ones that are not."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmlab.notices import file_key, utf8_reason, warn_once

# A quality filter's verdict on a file: (text, its UTF-8 bytes, path) -> why it is left out, or None.
RejectFn = Callable[[str, bytes, str], "str | None"]


class Corpus:
    """Iterate the texts of ``files``; each pass records ``inputs`` (path, bytes, sha256) and
    ``skipped`` (files that are not valid UTF-8, each warned about by name). With ``reject``
    (a quality filter, :func:`lmlab.data.filters.code_reject_reason`'s kind), files it gives a
    reason for are left out too, and with ``dedup`` a file whose bytes an earlier file had;
    both counted by reason in ``filtered``, as `lmlab data prepare` counts what it drops."""

    def __init__(
        self,
        files: list[Path],
        special_tokens: list[str] = (),
        reject: RejectFn | None = None,
        dedup: bool = False,
    ) -> None:
        self.files = list(files)
        self.reject = reject
        self.dedup = dedup
        self.inputs: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.filtered: Counter[str] = Counter()
        alts = sorted(special_tokens, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, alts))) if alts else None

    @property
    def total_bytes(self) -> int:
        return sum(i["bytes"] for i in self.inputs)

    def texts(self) -> Iterator[str]:
        """Whole-file texts."""
        self.inputs, self.skipped, self.filtered = [], [], Counter()
        seen: set[str] = set()
        for path in self.files:
            data = path.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                reason = utf8_reason(e)
                warn_once(f"{path}: {reason}, skipped", key=file_key("undecodable", path))
                self.skipped.append({"path": str(path.resolve()), "reason": reason})
                continue
            if self.reject is not None and (why := self.reject(text, data, str(path))):
                self.filtered[why] += 1
                continue
            sha = hashlib.sha256(data).hexdigest()
            if self.dedup:
                if sha in seen:
                    self.filtered["duplicate"] += 1
                    continue
                seen.add(sha)
            self.inputs.append({"path": str(path.resolve()), "bytes": len(data), "sha256": sha})
            if text:
                yield text

    def segments(self) -> Iterator[str]:
        """Texts split around special tokens, so training never merges across one."""
        for text in self.texts():
            if self._special_re is None or not self._special_re.search(text):
                yield text
            else:
                yield from (s for s in self._special_re.split(text) if s)
