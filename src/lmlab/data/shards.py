"""Token shard files: the writer used by `lmlab data prepare` and two small reader helpers.

A prepared dataset folder holds ``train_000000.bin``, ``val_000000.bin``, ... (raw
little-endian token ids, ``uint16`` when the vocabulary has at most 65,536 ids, else
``uint32``) and ``meta.json`` (format ``lmlab-tokens-v1``, see /tmp/contracts.md). Within a
split, the shards in the order listed by ``meta.json`` form one stream ``doc eot doc eot ...``;
a document may continue from one shard into the next (shards are cut at a token count, not at
document boundaries), and no shard file is empty.

Readers::

    meta = read_meta("ds/")                 # dict, checked
    shards = open_shards("ds/", "train")    # list[np.memmap], read-only, in stream order
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lmlab.errors import DataError
from lmlab.io import read_json

FORMAT = "lmlab-tokens-v1"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 100_000_000


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


class ShardWriter:
    """Appends tokens of one split to ``split_XXXXXX.bin`` files of at most ``shard_tokens``.

    Files are opened lazily, so a split that receives no tokens has no shard files.
    """

    def __init__(
        self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int = DEFAULT_SHARD_TOKENS
    ):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.folder = Path(folder)
        self.split = split
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.shards: list[str] = []
        self.tokens = 0
        self._file: BinaryIO | None = None
        self._in_shard = 0

    def write(self, tokens: np.ndarray) -> None:
        """Append ``tokens`` (already in this writer's dtype), rolling over to new shards."""
        assert tokens.dtype == self.dtype, (tokens.dtype, self.dtype)
        pos = 0
        n = len(tokens)
        while pos < n:
            if self._file is None or self._in_shard >= self.shard_tokens:
                self._roll()
            take = min(n - pos, self.shard_tokens - self._in_shard)
            try:
                self._file.write(tokens[pos : pos + take].tobytes())
            except OSError as e:  # a full disk: name the shard, which write() does not
                raise OSError(e.errno, e.strerror, self._file.name) from e
            self._in_shard += take
            pos += take
        self.tokens += n

    def _roll(self) -> None:
        self._close_file()
        name = shard_name(self.split, len(self.shards))
        self._file = open(self.folder / name, "wb")  # noqa: SIM115 - closed in _close_file
        self.shards.append(name)
        self._in_shard = 0

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None

    def close(self) -> None:
        self._close_file()


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of a prepared dataset folder, checked; DataError naming the file otherwise."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found (run `lmlab data prepare` first)")
    meta_path = folder / "meta.json"
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_path}: not an lmlab dataset (format is not {FORMAT!r})")
    if meta.get("dtype") not in ("uint16", "uint32"):
        raise DataError(f"{meta_path}: dtype must be uint16 or uint32, got {meta.get('dtype')!r}")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(splits.get(s), dict) for s in SPLITS):
        raise DataError(f"{meta_path}: missing splits.train or splits.val")
    return meta


def open_shards(
    path: str | Path, split: str, meta: dict[str, Any] | None = None
) -> list[np.memmap]:
    """Read-only memmaps of one split's shards, in stream order (empty list for an empty split).

    Checks that every shard exists, is a whole number of tokens, and that the shards add up
    to the token count in ``meta.json``.
    """
    folder = Path(path)
    meta = meta if meta is not None else read_meta(folder)
    if split not in SPLITS:
        raise DataError(f"{folder}: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    info = meta["splits"][split]
    out: list[np.memmap] = []
    total = 0
    for name in info.get("shards", []):
        f = folder / name
        if not f.is_file():
            raise DataError(f"{f}: shard listed in meta.json is missing")
        size = f.stat().st_size
        if size == 0 or size % dtype.itemsize:
            raise DataError(
                f"{f}: size {size} is not a positive multiple of {dtype.itemsize} bytes"
            )
        mm = np.memmap(f, dtype=dtype, mode="r")
        total += len(mm)
        out.append(mm)
    if total != info.get("tokens", total):
        raise DataError(
            f"{folder / 'meta.json'}: {split} has {total} tokens on disk, meta says {info['tokens']}"
        )
    return out
