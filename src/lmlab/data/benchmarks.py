"""Code benchmarks' problem files: HumanEval and MBPP as lists of rows, MBPP's standard splits.

Readers only; running the problems is :mod:`lmlab.eval.code`'s job.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from lmlab.errors import DataError, LmlabError

# MBPP's standard split by task id (Austin et al., 2021).
MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
                missing = [k for k in required if k not in row]
                if missing:
                    raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
                rows.append(row)
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    return rows


def load_humaneval(path: Path | str) -> list[dict[str, Any]]:
    """HumanEval problems (``HumanEval.jsonl.gz`` or plain JSONL), in file order."""
    return _read_jsonl(
        Path(path), ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    )


def mbpp_split(task_id: int) -> str:
    """The standard split name of an MBPP task id."""
    for name, (lo, hi) in MBPP_SPLITS.items():
        if lo <= task_id <= hi:
            return name
    raise ValueError(f"MBPP task id {task_id} is outside 1..974")


def load_mbpp(path: Path | str, split: str | None = None) -> list[dict[str, Any]]:
    """MBPP tasks from ``mbpp.jsonl``; ``split`` keeps one standard split (test, validation, ...)."""
    if split is not None and split not in MBPP_SPLITS:
        raise LmlabError(f"MBPP split {split!r}: expected one of {', '.join(MBPP_SPLITS)}")
    rows = _read_jsonl(Path(path), ("task_id", "text", "code", "test_list"))
    if split is not None:
        rows = [r for r in rows if mbpp_split(int(r["task_id"])) == split]
    return rows
