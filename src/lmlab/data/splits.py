"""Which split each document of `lmlab data prepare` lands in, and the writing of both splits.

By content (``split = "hash"``): a hash of (seed, document) against ``val_fraction``, with the
promise that val gets a document when two distinct ones exist (:class:`SplitRouter`). By
position (``split = "tail"``): everything to train, then the last ``val_fraction`` of the
token stream moves to val (:func:`move_tail`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.data.shards import SPLITS, ShardWriter

Pending = list[tuple[bytes, np.ndarray, int]]  # (digest, tokens, nbytes)


class SplitRouter:
    """Appends documents to the train/val writers, keeping the 'one val document' promise.

    While one split is still empty, the latest first-occurrence document of each split (and
    any later copies of earlier content, to keep order) is held back instead of written; at
    the end it can move to the empty split. Once both splits have a document, nothing is
    held back any more.
    """

    def __init__(self, writers: dict[str, ShardWriter], track: bool):
        self.writers = writers
        self.docs = dict.fromkeys(SPLITS, 0)
        self.bytes = dict.fromkeys(SPLITS, 0)
        self.tracking = track
        self.seen: set[bytes] = set()
        self.pending: dict[str, Pending] = {s: [] for s in SPLITS}

    def add(self, split: str, d: bytes, tokens: np.ndarray, nbytes: int) -> None:
        self.docs[split] += 1
        self.bytes[split] += nbytes
        if not self.tracking:
            self.writers[split].write(tokens)
            return
        first = d not in self.seen
        self.seen.add(d)
        pend = self.pending[split]
        if first:
            self._flush(split)
            pend.append((d, tokens.copy(), nbytes))
        elif pend:
            pend.append((d, tokens.copy(), nbytes))
        else:
            self.writers[split].write(tokens)
        if self.docs["train"] and self.docs["val"]:
            self._flush("train")
            self._flush("val")
            self.tracking = False
            self.seen = set()

    def _flush(self, split: str) -> None:
        pend = self.pending[split]
        for _, tokens, _ in pend:
            self.writers[split].write(tokens)
        pend.clear()  # in place: add() holds a reference to this list

    def _move_head(self, src: str, dst: str) -> None:
        pend = self.pending[src]
        head = pend[0][0]
        for d, tokens, nbytes in pend:
            if d == head:
                self.writers[dst].write(tokens)
                for s, sign in ((src, -1), (dst, 1)):
                    self.docs[s] += sign
                    self.bytes[s] += sign * nbytes
        self.pending[src] = [x for x in pend if x[0] != head]

    def finish(self, want_val: bool) -> None:
        if self.tracking:
            if self.docs["train"] == 0 and self.pending["val"]:
                self._move_head("val", "train")
            elif (
                want_val and self.docs["val"] == 0 and len(self.seen) >= 2 and self.pending["train"]
            ):
                self._move_head("train", "val")
        self._flush("train")
        self._flush("val")
        for w in self.writers.values():
            w.close()


def val_threshold(fraction: float) -> int:
    return int(fraction * (1 << 64))


def split_key(seed_bytes: bytes, d: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(seed_bytes + d, digest_size=8).digest(), "little")


def move_tail(
    folder: Path, writers: dict[str, ShardWriter], router: SplitRouter, fraction: float, tok: Any
) -> None:
    """Move the last ``fraction`` of the train stream (at least one token when train has
    two) into val; the train shards past the cut are truncated or deleted."""
    train, val = writers["train"], writers["val"]
    n = train.tokens
    n_val = min(n - 1, n - int(n * (1.0 - fraction))) if n >= 2 else 0
    if n_val <= 0:
        return
    # bytes per id (end-of-text counts 0, as the per-document byte counts exclude it)
    lengths = np.zeros(tok.vocab_size, dtype=np.int64)
    for i, b in tok.vocab.items():
        lengths[i] = len(b)
    lengths[tok.eot_id] = 0
    cut = n - n_val  # stream position of the first val token
    start = 0  # stream position of the current shard's first token
    keep: list[str] = []
    moved_bytes = moved_docs = 0
    before_cut = tok.eot_id  # the token just before the cut: not eot when the cut splits a document
    for name in train.shards:
        path = folder / name
        size = path.stat().st_size // train.dtype.itemsize
        if start + size <= cut:
            keep.append(name)
            if start + size == cut:
                before_cut = int(np.memmap(path, dtype=train.dtype, mode="r")[-1])
        else:
            lo = max(cut - start, 0)
            mm = np.memmap(path, dtype=train.dtype, mode="r")
            if lo:
                before_cut = int(mm[lo - 1])
            for a in range(lo, size, 1 << 22):  # bounded memory: 4M tokens at a time
                chunk = np.array(mm[a : min(a + (1 << 22), size)])
                val.write(chunk)
                moved_bytes += int(lengths[chunk].sum())
                moved_docs += int((chunk == tok.eot_id).sum())
            del mm
            if lo:
                os.truncate(path, lo * train.dtype.itemsize)
                keep.append(name)
            else:
                path.unlink()
        start += size
    val.close()
    train.shards, train.tokens = keep, cut
    # documents that start in train count there, those that end in val count there (a
    # document cut in two counts in both)
    split_doc = int(before_cut != tok.eot_id)
    router.docs["val"], router.docs["train"] = (
        moved_docs,
        router.docs["train"] - moved_docs + split_doc,
    )
    router.bytes["val"], router.bytes["train"] = moved_bytes, router.bytes["train"] - moved_bytes


def split_chooser(seed: int, val_fraction: float, tail: bool) -> Callable[[bytes], str]:
    """The split of a document given its digest: by a hash of (seed, content), or always train
    with ``tail`` (val is cut from the end of the stream afterwards)."""
    if tail:
        return lambda d: "train"
    seed_bytes = str(seed).encode()
    threshold = val_threshold(val_fraction)
    return lambda d: "val" if split_key(seed_bytes, d) < threshold else "train"
