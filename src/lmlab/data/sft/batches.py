"""Instruction batches: length-bucketed padding, not packing, as a step-addressable loader.

The model's attention is plain causal SDPA with no per-document mask, so packing several
examples into one sequence would let later examples attend to earlier ones. Instead each
sequence holds one example; each epoch shuffles the examples, sorts them by length inside
chunks of ``BUCKET_BATCHES`` batches and cuts those into batches, so a micro-batch holds
examples of similar length and is padded only to its own longest (padding targets are
-100, and causal attention never lets real tokens see the padding after them). The waste
is small and the result is exactly the per-example loss, which packing without a
block-diagonal mask could not give.

Like :class:`lmlab.data.loader.BatchLoader`, :class:`SftLoader` makes step ``s``'s batch
a function of ``(seed, s)``: its state is ``{"seed", "step"}`` and resume is exact.
``sft.replay_fraction`` replaces that fraction of each batch's rows by random windows of
pretraining tokens (all targets learned), as long as the step's longest example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmlab.data.batches import ProcessBatch, micro_batches, rank_rows
from lmlab.data.loader import SeededSteps
from lmlab.data.sft.examples import IGNORE, Example
from lmlab.errors import ConfigError, DataError

BUCKET_BATCHES = 16  # batches sorted together by length: bigger pads less but mixes less
_REPLAY_SALT = 0x5F7_0003
_VAL_SALT = 0x5F7_0004


def collate(
    rows: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) rows of varying length -> padded tensors; padding targets are -100."""
    T = max(len(x) for x, _ in rows)
    x = np.full((len(rows), T), pad_id, dtype=np.int64)
    y = np.full((len(rows), T), IGNORE, dtype=np.int64)
    for i, (xi, yi) in enumerate(rows):
        x[i, : len(xi)] = xi
        y[i, : len(yi)] = yi
    return torch.from_numpy(x), torch.from_numpy(y)


def _to_device(xy: tuple[torch.Tensor, torch.Tensor], device: torch.device | None):
    x, y = xy
    if device is not None and device.type != "cpu":
        x = x.pin_memory().to(device, non_blocking=True)
        y = y.pin_memory().to(device, non_blocking=True)
    return x, y


class SftLoader(SeededSteps):
    """Instruction batches for step ``s``, a function of ``(seed, s)`` only (see module doc).

    A :class:`lmlab.data.batches.BatchSource`: ``counts(step)`` is the global batch's (real
    tokens, learned targets), which the training loop divides the summed loss by.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        global_batch: int,
        micro_batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device | None = None,
        pad_id: int = 0,
        replay: Any = None,  # a lmlab.data.loader.TokenSplit
        replay_fraction: float = 0.0,
    ):
        if not examples:
            raise DataError("no training examples left (see the skip report)")
        if global_batch % world or (global_batch // world) % micro_batch:
            raise DataError(
                f"batch {global_batch} does not split into {world} process(es) x micro-batches of {micro_batch}"
            )
        self.examples = list(examples)
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.per_rank = global_batch // world
        self.seed, self.rank, self.world, self.device, self.pad_id = (
            seed,
            rank,
            world,
            device,
            pad_id,
        )
        self.replay = replay
        self.replay_rows = 0
        if replay is not None and replay_fraction > 0:
            self.replay_rows = max(1, round(replay_fraction * global_batch))
            if self.replay_rows >= global_batch:
                raise ConfigError(
                    f"sft.replay_fraction: {replay_fraction} leaves no instruction rows in a batch of {global_batch}"
                )
        self.sft_rows = global_batch - self.replay_rows
        self.steps_per_epoch = math.ceil(len(self.examples) / self.sft_rows)
        self.step = 0
        self._plan: tuple[int, list[np.ndarray]] | None = None
        self._lengths = np.array([e.length for e in self.examples], dtype=np.int64)
        self._targets = np.array(
            [e.length - (e.n_prompt - 1) for e in self.examples], dtype=np.int64
        )
        # the mean real tokens per step, for the loop's throughput figure
        self.tokens_per_step = int(self._lengths.mean() * global_batch)

    def epoch_plan(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches as arrays of example indices (length-bucketed, shuffled)."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        rng = np.random.default_rng([self.seed, epoch])
        n, B = len(self.examples), self.sft_rows
        perm = rng.permutation(n)
        short = self.steps_per_epoch * B - n
        if short:  # fill the last batch from the start of this epoch's order
            perm = np.concatenate(
                [perm, perm[:short]] if short <= n else [perm, np.resize(perm, short)]
            )
        chunk = B * BUCKET_BATCHES
        batches = []
        for c in range(0, len(perm), chunk):
            part = perm[c : c + chunk]
            part = part[np.argsort(self._lengths[part], kind="stable")]
            batches += [part[i : i + B] for i in range(0, len(part), B)]
        order = rng.permutation(len(batches))
        plan = [batches[i] for i in order]
        self._plan = (epoch, plan)
        return plan

    def _rows(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(example indices, replay windows or None) of the global batch, in row order."""
        idx = self.epoch_plan(step // self.steps_per_epoch)[step % self.steps_per_epoch]
        if not self.replay_rows:
            return idx, None
        L = int(self._lengths[idx].max()) + 1
        L = min(L, self.replay.n_tokens)
        rng = np.random.default_rng([self.seed, step, _REPLAY_SALT])
        starts = rng.integers(0, self.replay.n_tokens - L + 1, size=self.replay_rows)
        return idx, self.replay.windows(starts, L)

    def counts(self, step: int) -> tuple[int, int]:
        """(real input tokens, learned targets) of step ``step``'s global batch."""
        idx, win = self._rows(step)
        tokens = int(self._lengths[idx].sum())
        targets = int(self._targets[idx].sum())
        if win is not None:
            tokens += win.size - len(win)
            targets += win.size - len(win)
        return tokens, targets

    def get(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches ``[(x, y), ...]`` for optimizer step ``step``."""
        idx, win = self._rows(step)
        rows = [self.examples[i].xy() for i in idx]
        if win is not None:
            rows += [(w[:-1], w[1:]) for w in win]
            # spread the replay rows over ranks and micro-batches
            perm = np.random.default_rng([self.seed, step, _REPLAY_SALT + 1]).permutation(len(rows))
            rows = [rows[i] for i in perm]
        return micro_batches(
            rank_rows(rows, self.rank, self.per_rank),
            self.micro_batch,
            lambda part: _to_device(collate(part, self.pad_id), self.device),
        )


def val_batches(
    examples: Sequence[Example],
    batch_size: int,
    pad_id: int,
    max_batches: int = 0,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed held-out batches (sorted by length to pad little); this rank's share.

    With ``max_batches`` > 0 and more examples than fit, a fixed random subset is used.
    """
    ex = list(examples)
    cap = max_batches * batch_size
    if max_batches and len(ex) > cap:
        keep = np.random.default_rng([seed, _VAL_SALT]).permutation(len(ex))[:cap]
        ex = [ex[i] for i in keep]
    ex.sort(key=lambda e: e.length)
    batches = [
        collate([e.xy() for e in ex[i : i + batch_size]], pad_id)
        for i in range(0, len(ex), batch_size)
    ]
    return batches[rank::world]


@dataclass
class SftData:
    """SFT examples as the training loop's :class:`~lmlab.data.batches.TrainingData`
    (``lmlab.train.loop.train(data=...)``).

    ``meta`` plays the role of a prepared dataset's meta.json (vocab_size, eot_id, tokenizer).
    """

    train: list[Example]
    val: list[Example]
    meta: dict[str, Any]
    pad_id: int
    replay: Any = None
    replay_fraction: float = 0.0

    fixed_windows = False  # examples of varying length: no memory probe

    def check(self, cfg: Any) -> None:
        """Nothing to check: the examples were tokenized with the run's tokenizer."""

    def loader(self, shape: ProcessBatch) -> SftLoader:
        return SftLoader(
            self.train,
            shape.global_batch,
            shape.micro_batch,
            shape.seed,
            shape.rank,
            shape.world,
            shape.device,
            self.pad_id,
            self.replay,
            self.replay_fraction,
        )

    def val_bytes_per_token(self) -> float | None:
        return None  # the examples record no byte counts: no bits per byte

    def val_batches(
        self, batch_size: int, max_batches: int, seed: int, rank: int = 0, world: int = 1
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if not self.val:
            return None
        return val_batches(self.val, batch_size, self.pad_id, max_batches, seed, rank, world)
