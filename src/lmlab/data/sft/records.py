"""Instruction records: what SFT reads, from JSON/JSONL files, MBPP records or the hub.

``{"instruction", "input", "output"}`` in the Alpaca layout, read from JSON (a list of
objects) or JSONL files, from MBPP-style records (``text`` -> ``code``), or from a Hugging
Face dataset (``hf:NAME``, needs the optional ``datasets`` package and a network). A source
may end in ``#SPLIT``: for MBPP records it keeps one standard split by task id (``train``
601-974, ``validation`` 511-600, ``test`` 11-510, ``prompt`` 1-10); for ``hf:`` sources it
names the hub split.

An MBPP record becomes ``instruction = text + "\\nYour code should pass these tests:\\n" +
the test_list asserts`` (``sft.mbpp_tests = true``, the default), as in the original MBPP
prompt (Austin et al., 2021): the asserts are the only place that names the function and
its signature, so a model cannot match the tests without them. ``output`` is ``code``
with ``\\r\\n`` line ends normalised.

Malformed records (bad JSON, a missing or non-string field, an empty response, an example
longer than the context) are skipped and counted per reason, the first few named as
``file:line``; with ``sft.on_error = "error"`` the first one raises DataError instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.data.benchmarks import MBPP_SPLITS, mbpp_split
from lmlab.errors import ConfigError, DataError
from lmlab.io import expand_inputs

_MAX_NAMED = 10  # skipped records named per reason


@dataclass
class Record:
    instruction: str
    input: str
    output: str
    where: str  # file:line (or hf:NAME[split]:index), for messages


@dataclass
class SkipReport:
    """Counts of records left out, per reason, with the first few named."""

    on_error: str = "skip"
    counts: dict[str, int] = field(default_factory=dict)
    named: list[str] = field(default_factory=list)

    def skip(self, where: str, reason: str, key: str) -> None:
        if self.on_error == "error":
            raise DataError(f"{where}: {reason}")
        self.counts[key] = self.counts.get(key, 0) + 1
        if sum(1 for n in self.named if n.endswith(f"[{key}]")) < _MAX_NAMED:
            self.named.append(f"{where}: {reason} [{key}]")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "skipped 0 records"
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"skipped {self.total} records ({parts})"

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "counts": dict(self.counts), "first": list(self.named)}


def mbpp_instruction(row: dict[str, Any], with_tests: bool) -> str:
    """MBPP's task text, with its test asserts appended when ``with_tests``."""
    text = str(row["text"]).strip()
    if with_tests and row.get("test_list"):
        text += "\nYour code should pass these tests:\n" + "\n".join(
            str(t) for t in row["test_list"]
        )
    return text


def to_record(row: Any, where: str, mbpp_tests: bool = True) -> tuple[Record | None, str, str]:
    """A parsed JSON object -> (Record, "", "") or (None, reason, key) when unusable."""
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}", "not_an_object"
    if "instruction" in row or "output" in row:
        missing = [k for k in ("instruction", "output") if k not in row]
        if missing:
            return None, f"missing field(s) {', '.join(missing)}", "missing_field"
        ins, inp, out = row["instruction"], row.get("input") or "", row["output"]
    elif "text" in row or "code" in row:
        missing = [k for k in ("text", "code") if k not in row]
        if missing:
            return None, f"missing field(s) {', '.join(missing)}", "missing_field"
        if not isinstance(row["text"], str):
            return None, "field 'text' is not a string", "bad_field"
        ins, inp, out = mbpp_instruction(row, mbpp_tests), "", row["code"]
    elif "source" in row or "target" in row:
        missing = [k for k in ("source", "target") if k not in row]
        if missing:
            return None, f"missing field(s) {', '.join(missing)}", "missing_field"
        ins, inp, out = row["source"], "", row["target"]
    else:
        return (
            None,
            "missing fields: need instruction/output (Alpaca), text/code (MBPP) or source/target",
            "missing_field",
        )
    for name, value in (("instruction", ins), ("input", inp), ("output", out)):
        if not isinstance(value, str):
            return None, f"field {name!r} is not a string", "bad_field"
    out = out.replace("\r\n", "\n").rstrip()
    if not out.strip():
        return None, "empty response (output)", "empty_response"
    if not ins.strip():
        return None, "empty instruction", "empty_instruction"
    return (
        Record(ins.replace("\r\n", "\n").strip(), inp.replace("\r\n", "\n").strip(), out, where),
        "",
        "",
    )


def split_spec(spec: str) -> tuple[str, str]:
    """``SOURCE#SPLIT`` -> (SOURCE, SPLIT); a '#' in an existing file name is left alone."""
    base, sep, split = spec.rpartition("#")
    if not sep or not base or Path(spec).exists() or not split.isidentifier():
        return spec, ""
    return base, split


def _json_rows(path: Path) -> Iterator[tuple[Any, str, str | None]]:
    """(row, where, error) for every record of a JSON list or JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if text.lstrip().startswith("["):  # one JSON array
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        for i, row in enumerate(rows):
            yield row, f"{path}:[{i}]", None
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line), f"{path}:{lineno}", None
        except json.JSONDecodeError as e:
            yield None, f"{path}:{lineno}", f"malformed JSON ({e.msg})"


def _hf_rows(name: str, split: str) -> Iterator[tuple[Any, str, str | None]]:
    """Rows of a Hugging Face hub dataset (lazy ``datasets`` import; clear error offline)."""
    try:
        import datasets  # noqa: PLC0415 (optional extra: pip install 'lmlab[datasets]')
    except ImportError:
        raise DataError(
            f"hf:{name}: hub datasets need the optional package 'datasets' (pip install 'lmlab[datasets]'); "
            "or download the data and give a local JSON/JSONL file"
        ) from None
    split = split or "train"
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name or split: datasets raises many types
        raise DataError(
            f"hf:{name}: cannot load split {split!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "offline? give a local JSON/JSONL copy instead"
        ) from None
    for i, row in enumerate(ds):
        yield row, f"hf:{name}[{split}]:{i}", None


def read_records(
    sources: Sequence[str], skips: SkipReport, mbpp_tests: bool = True
) -> list[Record]:
    """All usable records of ``sources`` (files, folders, globs, ``hf:NAME``, each ``[#SPLIT]``)."""
    records: list[Record] = []
    for spec in sources:
        src, split = split_spec(spec)
        if src.startswith("hf:"):
            rows: Iterable[tuple[Any, str, str | None]] = _hf_rows(src[3:], split)
            split = ""  # the hub already selected it
        else:
            if split and split not in MBPP_SPLITS:
                raise ConfigError(
                    f"{spec}: #{split} is not an MBPP split ({', '.join(MBPP_SPLITS)})"
                )
            files = expand_inputs([src], suffixes=(".json", ".jsonl"))
            rows = (r for f in files for r in _json_rows(f))
        for row, where, error in rows:
            if error is not None:
                skips.skip(where, error, "malformed_json")
                continue
            if split:
                tid = row.get("task_id") if isinstance(row, dict) else None
                try:
                    if mbpp_split(int(tid)) != split:
                        continue
                except (TypeError, ValueError):
                    skips.skip(
                        where,
                        f"#{split} selects MBPP records by task_id, and this one has none",
                        "no_task_id",
                    )
                    continue
            rec, reason, key = to_record(row, where, mbpp_tests)
            if rec is None:
                skips.skip(where, reason, key)
            else:
                records.append(rec)
    return records
