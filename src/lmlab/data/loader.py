"""Batches from a prepared dataset: memmapped token shards, random windows, resumable.

A split (``train`` or ``val``) is the concatenation of its shards, read through ``np.memmap``
so nothing is loaded up front. Training batches are random windows of ``seq_len + 1`` tokens
(inputs and next-token targets). The windows for optimizer step ``s`` depend only on
``(seed, s)``: every rank draws the same global batch and keeps its own slice, so DDP sees the
same data as one process with the same global batch, and a resumed run regenerates exactly the
batches it would have seen. The loader's whole state is therefore ``{"seed", "step"}``.

Evaluation uses either a fixed set of random windows (the same at every eval, so curves are
comparable) or the whole split in contiguous non-overlapping windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.data.shards import open_shards, read_meta
from lmlab.errors import DataError

_VAL_SALT = 0x5EED_0FA1  # keeps the fixed val windows independent of the training stream


class TokenSplit:
    """One split of a dataset as a single token stream over its memmapped shards."""

    def __init__(self, path: str | Path, split: str, meta: dict[str, Any] | None = None):
        self.path = Path(path)
        self.meta = meta if meta is not None else read_meta(self.path)
        self.split = split
        self.info = self.meta["splits"].get(split) or {}
        self.shards: list[np.ndarray] = open_shards(self.path, split, self.meta)
        lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate(
            [[0], np.cumsum(lengths)]
        )  # shard i covers [starts[i], starts[i+1])
        self.n_tokens = int(self.starts[-1])
        if self.n_tokens < 2:
            raise DataError(
                f"{self.path / 'meta.json'}: split {split!r} holds {self.n_tokens} tokens; need at least 2"
            )

    @property
    def n_bytes(self) -> int:
        """UTF-8 bytes of the split's text as recorded by prepare (0 if unknown)."""
        return int(self.info.get("bytes") or 0)

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start+length)`` of the stream (may span shards) as int64."""
        out = np.empty(length, dtype=np.int64)
        pos, filled = start, 0
        i = int(np.searchsorted(self.starts, pos, side="right")) - 1
        while filled < length:
            shard = self.shards[i]
            off = pos - int(self.starts[i])
            take = min(length - filled, len(shard) - off)
            out[filled : filled + take] = shard[off : off + take]
            filled += take
            pos += take
            i += 1
        return out

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Windows ``[s, s+length)`` for each start, shape (len(starts), length), int64.

        Windows inside one shard are gathered with one fancy-indexing read per shard; the rare
        ones crossing a shard boundary are copied one by one.
        """
        starts = np.asarray(starts, dtype=np.int64)
        out = np.empty((len(starts), length), dtype=np.int64)
        shard_of = np.searchsorted(self.starts, starts, side="right") - 1
        inside = starts + length <= self.starts[shard_of + 1]
        offsets = np.arange(length, dtype=np.int64)
        for i in np.unique(shard_of[inside]):
            rows = np.nonzero(inside & (shard_of == i))[0]
            local = starts[rows] - self.starts[i]
            out[rows] = self.shards[i][local[:, None] + offsets]
        for r in np.nonzero(~inside)[0]:
            out[r] = self.read(int(starts[r]), length)
        return out


def _to_xy(w: np.ndarray, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(w)
    x, y = t[:, :-1], t[:, 1:]
    if device is not None and device.type != "cpu":
        # pinned host memory lets the copy overlap with compute
        x = x.contiguous().pin_memory().to(device, non_blocking=True)
        y = y.contiguous().pin_memory().to(device, non_blocking=True)
    return x, y


@dataclass
class Source:
    split: TokenSplit
    rows: int  # rows of each global batch drawn from this source


class SeededSteps:
    """The resumable position of a loader whose batches for step ``s`` are a function of
    ``(seed, s)`` only: its state is ``(seed, step)``, and ``next()`` hands out the current
    step's micro-batches. Subclasses set ``seed``, ``step``, ``per_rank``, ``micro_batch`` and
    define ``get(step)``."""

    seed: int
    step: int
    per_rank: int
    micro_batch: int

    def get(self, step: int) -> list[Any]:
        raise NotImplementedError

    @property
    def accum_steps(self) -> int:
        return self.per_rank // self.micro_batch

    def next(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batch = self.get(self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise DataError(
                f"loader state was saved with seed {state['seed']}, this run uses {self.seed}"
            )
        self.step = int(state["step"])


class BatchLoader(SeededSteps):
    """Random training windows for step ``s``, determined by ``(seed, s)`` only.

    ``global_batch`` sequences per optimizer step are drawn; rank ``r`` of ``world`` keeps rows
    ``[r*B/world, (r+1)*B/world)`` and splits them into micro-batches of ``micro_batch``.
    ``mix`` adds other datasets as ``(TokenSplit, fraction)``: that fraction of each batch's
    rows (rounded, at least one) comes from it, the rest from the main split.
    """

    def __init__(
        self,
        split: TokenSplit,
        seq_len: int,
        global_batch: int,
        micro_batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device | None = None,
        mix: list[tuple[TokenSplit, float]] | None = None,
    ):
        if global_batch % world:
            raise DataError(f"global batch {global_batch} is not divisible by {world} processes")
        per_rank = global_batch // world
        if per_rank % micro_batch:
            raise DataError(
                f"micro batch {micro_batch} does not divide the per-process batch {per_rank}"
            )
        self.seq_len, self.global_batch, self.micro_batch = seq_len, global_batch, micro_batch
        self.seed, self.rank, self.world, self.device = seed, rank, world, device
        self.per_rank = per_rank
        self.step = 0
        sources: list[Source] = []
        taken = 0
        for other, frac in mix or []:
            rows = max(1, round(frac * global_batch))
            sources.append(Source(other, rows))
            taken += rows
        if taken >= global_batch:
            raise DataError(
                f"data.mix fractions leave no rows of the main dataset in a batch of {global_batch}"
            )
        self.sources = [Source(split, global_batch - taken), *sources]
        for s in self.sources:
            if s.split.n_tokens < seq_len + 1:
                raise DataError(
                    f"{s.split.path}: split {s.split.split!r} has {s.split.n_tokens} tokens, "
                    f"fewer than context_length + 1 = {seq_len + 1}"
                )

    def global_windows(self, step: int) -> np.ndarray:
        """All ``global_batch`` windows of step ``step``, shape (B, seq_len + 1)."""
        rng = np.random.default_rng([self.seed, step])
        parts = []
        for s in self.sources:
            starts = rng.integers(0, s.split.n_tokens - self.seq_len, size=s.rows)
            parts.append(s.split.windows(starts, self.seq_len + 1))
        w = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if len(parts) > 1:
            w = w[rng.permutation(len(w))]  # spread mixed rows over ranks and micro-batches
        return w

    def rank_windows(self, step: int) -> np.ndarray:
        lo = self.rank * self.per_rank
        if len(self.sources) == 1:
            # draw all starts (same RNG stream as global_windows), read only our rows
            rng = np.random.default_rng([self.seed, step])
            starts = rng.integers(
                0, self.sources[0].split.n_tokens - self.seq_len, size=self.global_batch
            )
            return self.sources[0].split.windows(starts[lo : lo + self.per_rank], self.seq_len + 1)
        return self.global_windows(step)[lo : lo + self.per_rank]

    def get(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches ``[(x, y), ...]`` for optimizer step ``step``."""
        w = self.rank_windows(step)
        return [
            _to_xy(w[i : i + self.micro_batch], self.device)
            for i in range(0, self.per_rank, self.micro_batch)
        ]


def fixed_windows(
    split: TokenSplit, seq_len: int, batch_size: int, n_batches: int, seed: int
) -> list[np.ndarray]:
    """``n_batches`` random batches of windows, the same every call (for comparable evals)."""
    rng = np.random.default_rng([seed, _VAL_SALT])
    length = min(seq_len, split.n_tokens - 1) + 1
    return [
        split.windows(rng.integers(0, split.n_tokens - length + 1, size=batch_size), length)
        for _ in range(n_batches)
    ]


def contiguous_windows(split: TokenSplit, seq_len: int, batch_size: int) -> Iterator[np.ndarray]:
    """The whole split in non-overlapping windows: every token after the first is predicted once.

    Windows start at 0, T, 2T, ... and hold T + 1 tokens; the tail (fewer than T targets) comes
    last as its own one-row batch.
    """
    n_full = (split.n_tokens - 1) // seq_len
    for b in range(0, n_full, batch_size):
        rows = range(b, min(b + batch_size, n_full))
        starts = np.fromiter((r * seq_len for r in rows), dtype=np.int64)
        yield split.windows(starts, seq_len + 1)
    tail = n_full * seq_len
    if split.n_tokens - tail >= 2:
        yield split.read(tail, split.n_tokens - tail)[None, :]


def as_batches(
    windows: Iterator[np.ndarray] | list[np.ndarray], device: torch.device | None = None
):
    """Windows -> ``(x, y)`` tensor pairs on ``device``."""
    for w in windows:
        yield _to_xy(w, device)


def parse_mix(items: list[str]) -> list[tuple[str, float]]:
    """``data.mix`` entries ``PATH:FRACTION`` -> ``[(path, fraction)]`` (DataError on bad input)."""
    out = []
    for item in items:
        path, sep, frac = item.rpartition(":")
        try:
            value = float(frac)
        except ValueError:
            value = -1.0
        if not sep or not path or not 0.0 < value < 1.0:
            raise DataError(f"data.mix: expected PATH:FRACTION with 0 < FRACTION < 1, got {item!r}")
        out.append((path, value))
    return out
