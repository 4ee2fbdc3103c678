"""The one protocol the training loop reads batches through, and its token-shard implementation.

A *training data* object (:class:`TrainingData`) is what ``lmlab.train.loop.train(data=...)``
takes: the prepared token shards (:class:`TokenData`, with ``data.mix`` replay, which is how
curricula mix earlier phases in), instruction data (:class:`lmlab.data.sft.SftData`) or
encoder-decoder pairs (:class:`lmlab.data.pairs.PairData`). For one process it opens a
:class:`BatchSource`: this rank's micro-batches of optimizer step ``s`` (a function of
``(seed, s)``, so the source's whole state is ``{"seed", "step"}`` and resume is exact), the
global batch's token and target counts (the loss is divided by the global target count), and
fixed val batches, with the bytes per token that turn val nats into bits per byte where the data
records them. The fixed val windows of token shards (:func:`val_windows`) are the same ones
``lmlab eval --batches N`` scores (:mod:`lmlab.eval.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from lmlab.data.loader import (
    BatchLoader,
    TokenSplit,
    as_batches,
    contiguous_windows,
    fixed_windows,
    parse_mix,
)
from lmlab.data.shards import read_meta
from lmlab.errors import ConfigError, DataError
from lmlab.tokenizer import load_tokenizer

Batch = tuple[Any, torch.Tensor]  # (token ids, or a dict of the model's inputs; targets)
Row = TypeVar("Row")


@dataclass(frozen=True)
class ProcessBatch:
    """This process's part of the global batch: what a :class:`BatchSource` is opened with."""

    global_batch: int
    micro_batch: int
    seed: int
    rank: int = 0
    world: int = 1
    device: torch.device | None = None


class BatchSource(Protocol):
    """One process's training batches, addressed by optimizer step."""

    per_rank: int  # rows of the global batch this process takes
    micro_batch: int  # rows per micro-batch (the memory probe and the OOM retry change it)
    step: int  # the next step (saved in state_dict)
    tokens_per_step: int  # input tokens of a global batch (the mean, when lengths vary)

    @property
    def accum_steps(self) -> int: ...

    def get(self, step: int) -> list[Batch]:
        """This rank's micro-batches of optimizer step ``step``."""
        ...

    def counts(self, step: int) -> tuple[int, int]:
        """(input tokens, learned targets) of step ``step``'s global batch."""
        ...

    def state_dict(self) -> dict[str, int]: ...

    def load_state_dict(self, state: dict[str, int]) -> None: ...


class TrainingData(Protocol):
    """What the training loop trains on (see the module docstring).

    ``meta`` plays a prepared dataset's meta.json (vocab_size, eot_id, tokenizer). An optional
    ``samples(model, tokenizer, n, max_new_tokens, device)`` writes samples.md's texts instead of
    unconditional ones (the encoder-decoder's targets for held-out sources).
    """

    meta: dict[str, Any]
    # batches are full windows of token ids, so the memory probe may try random ones
    fixed_windows: bool

    def check(self, cfg: Any) -> None:
        """Refuse a config that does not fit this data (before anything is built)."""
        ...

    def loader(self, shape: ProcessBatch) -> BatchSource: ...

    def val_batches(
        self, batch_size: int, max_batches: int, seed: int, rank: int = 0, world: int = 1
    ) -> Iterable[Batch] | None:
        """This rank's share of the fixed val batches (re-iterable), or None without val data."""
        ...

    def val_bytes_per_token(self) -> float | None:
        """UTF-8 bytes per val token for bits per byte, or None when the data records none."""
        ...


def micro_batches(rows: Sequence[Row], micro_batch: int, collate: Callable[[Sequence[Row]], Batch]):
    """``rows`` (this rank's) cut into micro-batches of ``micro_batch`` and collated."""
    return [collate(rows[i : i + micro_batch]) for i in range(0, len(rows), micro_batch)]


def rank_rows(rows: Sequence[Row], rank: int, per_rank: int) -> Sequence[Row]:
    """Rank ``rank``'s slice of a global batch's rows."""
    return rows[rank * per_rank : (rank + 1) * per_rank]


# --- token shards -------------------------------------------------------------------------------


class Reiterable:
    """An iterable that calls ``make()`` afresh for every pass (a streamed val split)."""

    def __init__(self, make: Callable[[], Iterator[Batch]]):
        self._make = make

    def __iter__(self) -> Iterator[Batch]:
        return self._make()


def val_windows(
    split: TokenSplit,
    seq_len: int,
    batch_size: int,
    n_batches: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of a split's val batches: ``n_batches`` fixed random ones (the same at
    every eval and in ``lmlab eval --batches``), or with 0 the whole split, streamed."""
    if n_batches:
        mine = fixed_windows(split, seq_len, batch_size, n_batches, seed)[rank::world]
        return Reiterable(lambda: as_batches(mine, device))
    return Reiterable(
        lambda: as_batches(
            (
                w
                for i, w in enumerate(contiguous_windows(split, seq_len, batch_size))
                if i % world == rank
            ),
            device,
        )
    )


def bytes_per_token(split: TokenSplit) -> float | None:
    """The split's UTF-8 bytes per token as prepare recorded them (None when unknown)."""
    if not split.n_bytes:
        return None
    return split.n_bytes / int(split.info.get("tokens") or split.n_tokens)


class TokenBatches(BatchLoader):
    """:class:`~lmlab.data.loader.BatchLoader` as a :class:`BatchSource`: every row is a full
    window, so every input token has a target."""

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    def counts(self, step: int) -> tuple[int, int]:
        return self.tokens_per_step, self.tokens_per_step


class TokenData:
    """A prepared dataset (``data.path``, plus ``data.mix``) as :class:`TrainingData`.

    The splits are opened when first asked for, so the config's paths are the resolved ones
    the run records (:func:`lmlab.runs.resolve_run_config`)."""

    fixed_windows = True

    def __init__(self, cfg: Any):
        if not cfg.data.path:
            raise ConfigError("data.path: no dataset given (a folder from `lmlab data prepare`)")
        self.cfg = cfg
        self.meta = read_meta(cfg.data.path)
        self._val: TokenSplit | None | bool = False  # False: not opened yet

    def check(self, cfg: Any) -> None:
        check_dataset_tokenizer(cfg, self.meta)

    def loader(self, shape: ProcessBatch) -> TokenBatches:
        data = self.cfg.data
        mix = [(TokenSplit(p, "train"), f) for p, f in parse_mix(data.mix)]
        return TokenBatches(
            TokenSplit(data.path, "train", self.meta),
            self.cfg.model.context_length,
            shape.global_batch,
            shape.micro_batch,
            shape.seed,
            shape.rank,
            shape.world,
            shape.device,
            mix,
        )

    def val_split(self) -> TokenSplit | None:
        if self._val is False:
            has_val = self.meta["splits"].get("val", {}).get("shards")
            self._val = TokenSplit(self.cfg.data.path, "val", self.meta) if has_val else None
        return self._val  # type: ignore[return-value]

    def val_batches(
        self, batch_size: int, max_batches: int, seed: int, rank: int = 0, world: int = 1
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]] | None:
        split = self.val_split()
        if split is None:
            return None
        T = self.cfg.eval_context_length
        return val_windows(split, T, batch_size, max_batches, seed, rank, world)

    def val_bytes_per_token(self) -> float | None:
        split = self.val_split()
        return bytes_per_token(split) if split is not None else None


def check_dataset_tokenizer(cfg: Any, meta: dict[str, Any]) -> None:
    """DataError when ``data.tokenizer`` is not the tokenizer the dataset was prepared with
    (every sample would decode to garbage): both fingerprints are named."""
    want = meta.get("tokenizer_fingerprint")
    if not cfg.data.tokenizer or not want:
        return
    if not Path(cfg.data.tokenizer).exists():
        raise ConfigError(f"data.tokenizer: {cfg.data.tokenizer} not found")
    got = load_tokenizer(cfg.data.tokenizer).fingerprint()
    if got != want:
        raise DataError(
            f"data.tokenizer: {cfg.data.tokenizer} (fingerprint {got[:12]}) is not the tokenizer "
            f"{cfg.data.path} was prepared with (fingerprint {want[:12]}, {meta.get('tokenizer', '?')})"
        )


__all__ = [
    "Batch",
    "BatchSource",
    "ProcessBatch",
    "Reiterable",
    "TokenBatches",
    "TokenData",
    "TrainingData",
    "bytes_per_token",
    "check_dataset_tokenizer",
    "micro_batches",
    "rank_rows",
    "val_windows",
]
