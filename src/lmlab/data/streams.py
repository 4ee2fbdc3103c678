"""Datasets as document streams: the hub (``hf:NAME[:CONFIG][#SPLIT]``) and local dataset folders.

Spellings of an input (``lmlab data prepare --input``):

* ``hf:NAME[:CONFIG][#SPLIT]``: a dataset on the Hugging Face hub, streamed with
  ``datasets.load_dataset(NAME, CONFIG, split=SPLIT, streaming=True)`` (SPLIT defaults to
  ``train``). Rows arrive batch by batch over the network; nothing is downloaded whole.
* ``hf:PATH[#SPLIT]`` where PATH exists here:

  - a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``disk``):
    its Arrow files are read one record batch at a time with plain reads, not a memory map
    (a map would count every page read as resident memory);
  - a parquet or JSONL file, or a glob of them (``files``): ``load_dataset("parquet" | "json",
    data_files=..., streaming=True)``, the same streaming reader a hub dataset goes through;
  - any other folder (``folder``, e.g. a hub dataset repository cloned here):
    ``load_dataset(PATH, CONFIG, split=SPLIT, streaming=True)``.

* a plain input naming a ``save_to_disk`` folder (``FOLDER`` or ``FOLDER#SPLIT``) is read as a
  dataset (``disk``) too, never as a folder of files.

The reader is a generator from end to end: :func:`stream_batches` yields lists of at most
``rows`` values of the text column and holds nothing else, so an unbounded stream can be cut
to a prefix by the caller at any point.

Offline, a hub name fails at once with one line: when ``HF_HUB_OFFLINE`` or
``HF_DATASETS_OFFLINE`` is set, or when one request to the hub endpoint (no retries, a few
seconds at most) gets no answer; ``datasets`` itself would retry for about half a minute.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import ConfigError, DataError

HF_PREFIX = "hf:"
PROBE_SECONDS = 5.0  # the longest the hub check waits before calling the hub unreachable
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_DATA_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".ndjson": "json", ".json": "json"}


@dataclass(frozen=True)
class StreamSource:
    """One dataset input read as a stream of rows."""

    spec: str  # the input as given (names the source in messages)
    kind: str  # hub | disk | files | folder
    name: str  # hub id, or the local folder / glob
    config: str = ""
    split: str = ""

    def record(self) -> dict[str, Any]:
        """What meta.json says about this source."""
        rec: dict[str, Any] = {"input": self.spec, "kind": self.kind}
        if self.kind == "hub":
            rec |= {
                "name": self.name,
                "config": self.config or None,
                "split": self.split or "train",
            }
        elif self.kind == "files":
            rec["files"] = [str(Path(p).resolve()) for p in _glob_files(self.name)]
        elif self.kind == "disk":
            rec |= {
                "path": str(Path(self.name).resolve()),
                "split": _saved_split(Path(self.name), self) or None,
            }
        else:
            rec |= {
                "path": str(Path(self.name).resolve()),
                "config": self.config or None,
                "split": self.split or "train",
            }
        return rec


# ---- parsing --------------------------------------------------------------------------------


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    # the marker file's key too: a corpus folder may well hold some other state.json
    for marker, key in (("state.json", "_data_files"), ("dataset_dict.json", "splits")):
        f = path / marker
        if f.is_file():
            try:
                return key in json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError, TypeError):
                return False
    return False


def _glob_files(pattern: str) -> list[str]:
    if Path(pattern).is_file():
        return [pattern]
    return sorted(m for m in glob.glob(pattern, recursive=True) if Path(m).is_file())


def _local(name: str) -> bool:
    return Path(name).exists() or (glob.has_magic(name) and bool(_glob_files(name)))


def parse_stream_input(item: str) -> StreamSource | None:
    """The stream an input names, or None when it names plain files, folders or globs."""
    if not item.startswith(HF_PREFIX):
        path, _, split = item.partition("#") if not Path(item).exists() else (item, "", "")
        if is_saved_dataset(Path(path)):
            return StreamSource(item, "disk", path, split=split)
        return None
    body = item[len(HF_PREFIX) :]
    name, _, split = body.rpartition("#") if "#" in body else (body, "", "")
    config = ""
    if not _local(name) and ":" in name:
        name, _, config = name.partition(":")
    if not name:
        raise ConfigError(f"{item}: no dataset name after 'hf:' (hf:NAME[:CONFIG][#SPLIT])")
    if not _local(name):
        return StreamSource(item, "hub", name, config, split)
    path = Path(name)
    if is_saved_dataset(path):
        if config:
            raise ConfigError(f"{item}: a save_to_disk folder has no configs (drop ':{config}')")
        return StreamSource(item, "disk", name, split=split)
    if path.is_dir():
        return StreamSource(item, "folder", name, config, split)
    if config or split:
        raise ConfigError(
            f"{item}: data files form one split and no config (drop ':CONFIG' and '#SPLIT')"
        )
    return StreamSource(item, "files", name)


def local_path(item: str) -> str | None:
    """The local file, folder or glob behind a stream input (for up-to-date checks), else None."""
    src = parse_stream_input(item)
    return None if src is None or src.kind == "hub" else src.name


# ---- reading --------------------------------------------------------------------------------


def stream_batches(src: StreamSource, text_field: str, rows: int) -> Iterator[list[Any]]:
    """Lists of at most ``rows`` values of ``text_field``, in stream order (a generator)."""
    if src.kind == "disk":
        yield from _disk_batches(src, text_field, rows)
        return
    yield from _iterable_batches(_load_streaming(src), src, text_field, rows)


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    msg = msg if len(msg) <= 300 else msg[:297] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _offline_reason() -> str | None:
    """Why the hub cannot be reached now (None: it answered, or it cannot be checked)."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var} is set"
    try:
        from huggingface_hub import constants  # noqa: PLC0415 (optional: the hub client comes with datasets/transformers)
        from huggingface_hub.utils import get_session  # noqa: PLC0415 (as above)
    except ImportError:  # datasets will say what is wrong
        return None
    if constants.HF_HUB_OFFLINE:
        return "huggingface_hub is in offline mode"
    try:  # one request, no retries; any HTTP answer means the hub is reachable
        get_session().head(constants.ENDPOINT, timeout=PROBE_SECONDS)
    except Exception as e:  # the HTTP client's own error types differ between versions
        return f"the hub did not answer ({_one_line(e)})"
    return None


def _import_datasets(src: StreamSource) -> Any:
    try:
        import datasets  # noqa: PLC0415 (optional extra: pip install 'lmlab[datasets]')
    except ImportError:
        raise DataError(
            f"{src.spec}: streaming a dataset needs the optional package 'datasets' "
            "(pip install 'lmlab[datasets]')"
        ) from None
    return datasets


def check_available(src: StreamSource) -> None:
    """Fail now, in one line, when the source cannot be streamed (no ``datasets``; offline for a hub name)."""
    if src.kind == "disk":
        return  # read with pyarrow alone
    _import_datasets(src)
    if src.kind == "hub":
        why = _offline_reason()
        if why is not None:
            raise DataError(
                f"{src.spec}: offline, {why}; give a local copy instead "
                "(a save_to_disk folder, or parquet/JSONL files)"
            )


def _load_streaming(src: StreamSource) -> Any:
    datasets = _import_datasets(src)
    try:
        if src.kind == "files":
            files = _glob_files(src.name)
            suffixes = {Path(f.removesuffix(".gz")).suffix.lower() for f in files}
            builders = {_DATA_FILE_BUILDERS.get(s) for s in suffixes}
            if len(builders) != 1 or None in builders:
                raise DataError(
                    f"{src.spec}: hf: data files must all be parquet or all JSONL "
                    f"(found {', '.join(sorted(suffixes)) or 'no suffix'})"
                )
            return datasets.load_dataset(
                builders.pop(), data_files=files, split="train", streaming=True
            )
        return datasets.load_dataset(
            src.name, src.config or None, split=src.split or "train", streaming=True
        )
    except DataError:
        raise
    except Exception as e:  # unknown name, config or split, no network: datasets raises many types
        hint = (
            "; offline? give a local copy instead"
            if isinstance(e, ConnectionError | OSError)
            else ""
        )
        raise DataError(f"{src.spec}: cannot stream it ({_one_line(e)}){hint}") from None


def _iterable_batches(
    ds: Any, src: StreamSource, text_field: str, rows: int
) -> Iterator[list[Any]]:
    cols = getattr(
        ds, "column_names", None
    )  # None when the stream's columns are not known up front
    if cols is not None:
        if text_field not in cols:
            raise DataError(f"{src.spec}: no column {text_field!r} (columns: {', '.join(cols)})")
        if len(cols) > 1:
            ds = ds.select_columns([text_field])  # the other columns are never decoded
    it = ds.iter(batch_size=rows)
    row = 1
    try:
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except Exception as e:  # a dropped connection or a bad shard, mid-stream
                raise DataError(
                    f"{src.spec}: reading row {row} onwards failed ({_one_line(e)})"
                ) from None
            if text_field not in batch:
                raise DataError(
                    f"{src.spec}: row {row}: no column {text_field!r} (columns: {', '.join(batch)})"
                )
            values = batch[text_field]
            row += len(values)
            yield values
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _saved_split(folder: Path, src: StreamSource) -> str:
    """The split a save_to_disk source reads ('' for a single Dataset)."""
    dict_file = folder / "dataset_dict.json"
    if not dict_file.is_file():
        return src.split
    try:
        splits = json.loads(dict_file.read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{dict_file}: not a readable dataset_dict.json") from None
    split = src.split or "train"
    if split not in splits:
        raise DataError(f"{src.spec}: no split {split!r} (splits: {', '.join(splits)})")
    return split


def _disk_files(src: StreamSource) -> list[Path]:
    """The Arrow files of a save_to_disk source's split, in row order."""
    folder = Path(src.name)
    is_dict = (folder / "dataset_dict.json").is_file()
    if is_dict:
        folder = folder / _saved_split(folder, src)
    state_file = folder / "state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        files = [folder / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{state_file}: not a readable save_to_disk state.json") from None
    saved = state.get("_split")
    if not is_dict and src.split and src.split != saved:
        of = f" (of split {saved!r})" if saved else ""
        raise DataError(
            f"{src.spec}: a single saved Dataset{of}, not a DatasetDict: drop '#{src.split}'"
        )
    return files


def _disk_batches(src: StreamSource, text_field: str, rows: int) -> Iterator[list[Any]]:
    try:
        import pyarrow as pa  # noqa: PLC0415 (optional extra: lmlab[parquet])
    except ImportError:
        raise DataError(
            f"{src.spec}: reading a save_to_disk folder needs pyarrow (pip install 'lmlab[parquet]')"
        ) from None
    for path in _disk_files(src):
        try:
            # plain reads, one record batch at a time: memory stays flat in the file's size
            with pa.OSFile(str(path)) as fh:
                reader = pa.ipc.open_stream(fh)
                names = reader.schema.names
                if text_field not in names:
                    raise DataError(
                        f"{src.spec}: no column {text_field!r} (columns: {', '.join(names)})"
                    )
                index = names.index(text_field)
                for batch in reader:
                    column = batch.column(index)
                    for start in range(0, len(column), rows):
                        yield column.slice(start, rows).to_pylist()
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: not a readable Arrow file ({_one_line(e)})") from None
