"""Source/target pairs for the encoder-decoder (``model.arch = "encdec"``).

Records are read by :func:`lmlab.data.sft.read_records`, so pairs come in the same forms and
with the same checks as instruction data: JSONL ``{"source", "target"}`` records, MBPP
``{"text", "code"}`` (``#SPLIT`` keeps one MBPP split), Alpaca records (instruction and input
as the source), ``hf:NAME`` when online; malformed lines and empty fields are skipped and
counted, naming the record.

The encoder reads the source with its own tokenizer (cut to ``encdec.max_source_tokens``);
the decoder learns ``<|endoftext|> target <|endoftext|>`` with lmlab's tokenizer, every
target token and the closing end-of-text in the loss. Batches are those of the SFT loader
(length-bucketed, a function of ``(seed, step)``, so resume is exact) with the encoder
inputs added: ``({"idx", "enc_ids", "enc_mask"}, y)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmlab.data.batches import ProcessBatch, micro_batches, rank_rows
from lmlab.data.sft import Example, Record, SftLoader, SkipReport, collate, fingerprint
from lmlab.device import inputs_to
from lmlab.errors import DataError, LmlabError

Inputs = dict[str, torch.Tensor]


@dataclass
class PairExample(Example):
    """An :class:`~lmlab.data.sft.Example` (``ids = [eot] + target + [eot]``, ``n_prompt = 1``)
    with the encoder's token ids of its source."""

    source: np.ndarray  # int64 encoder ids


def source_text(rec: Record) -> str:
    """What the encoder reads: the instruction, and the input below it when there is one."""
    return rec.instruction + ("\n\n" + rec.input if rec.input else "")


def tokenize_pairs(
    records: Sequence[Record],
    enc_tok: Any,
    dec_tok: Any,
    context_length: int,
    max_source_tokens: int,
    skips: SkipReport,
) -> list[PairExample]:
    """Records -> examples; a target longer than the decoder's context is skipped (counted)."""
    eot = dec_tok.eot_id
    if eot is None:
        raise DataError(
            "the decoder's tokenizer has no <|endoftext|> token to start and end targets"
        )
    if not records:
        return []
    sources = enc_tok(
        [source_text(r) for r in records], truncation=True, max_length=max_source_tokens
    )["input_ids"]
    out = []
    for rec, src in zip(records, sources):
        try:
            target = dec_tok.encode_ordinary(rec.output)
        except LmlabError as e:  # a char tokenizer meeting an unseen character
            skips.skip(rec.where, f"target cannot be tokenized ({e})", "untokenizable")
            continue
        ids = np.array([eot, *target, eot], dtype=np.int64)
        if len(ids) - 1 > context_length:
            skips.skip(
                rec.where,
                f"target of {len(ids) - 1} tokens exceeds model.context_length={context_length}",
                "too_long",
            )
            continue
        out.append(PairExample(ids, 1, rec.where, np.asarray(src, dtype=np.int64)))
    return out


def pairs_fingerprint(examples: Sequence[PairExample]) -> str:
    """sha256 over targets and sources (resume checks that the pairs did not change)."""

    h = hashlib.sha256(fingerprint(examples).encode())
    for e in examples:
        h.update(np.int64(len(e.source)).tobytes())
        h.update(e.source.tobytes())
    return h.hexdigest()


def collate_pairs(
    examples: Sequence[PairExample], pad_id: int, enc_pad_id: int
) -> tuple[Inputs, torch.Tensor]:
    """Examples -> (model inputs, targets): decoder rows padded with -100 targets, encoder rows
    padded with ``enc_pad_id`` and masked out."""
    x, y = collate([e.xy() for e in examples], pad_id)
    S = max(len(e.source) for e in examples)
    enc_ids = np.full((len(examples), S), enc_pad_id, dtype=np.int64)
    enc_mask = np.zeros((len(examples), S), dtype=np.int64)
    for i, e in enumerate(examples):
        enc_ids[i, : len(e.source)] = e.source
        enc_mask[i, : len(e.source)] = 1
    return {
        "idx": x,
        "enc_ids": torch.from_numpy(enc_ids),
        "enc_mask": torch.from_numpy(enc_mask),
    }, y


def _to_device(
    batch: tuple[Inputs, torch.Tensor], device: torch.device | None
) -> tuple[Inputs, torch.Tensor]:
    inputs, y = batch
    return (inputs, y) if device is None else (inputs_to(inputs, device), y.to(device))


class PairLoader(SftLoader):
    """The SFT loader's step plan (bucketed by target length, seeded per step) over pairs."""

    def __init__(
        self,
        examples: Sequence[PairExample],
        global_batch: int,
        micro_batch: int,
        seed: int,
        rank: int,
        world: int,
        device: torch.device | None,
        pad_id: int,
        enc_pad_id: int,
    ):
        super().__init__(examples, global_batch, micro_batch, seed, rank, world, device, pad_id)
        self.enc_pad_id = enc_pad_id

    def get(self, step: int) -> list[tuple[Inputs, torch.Tensor]]:
        """This rank's micro-batches ``[(inputs, y), ...]`` for optimizer step ``step``."""
        idx, _ = self._rows(step)
        mine = [self.examples[i] for i in rank_rows(idx, self.rank, self.per_rank)]
        return micro_batches(
            mine,
            self.micro_batch,
            lambda part: _to_device(collate_pairs(part, self.pad_id, self.enc_pad_id), self.device),
        )


@dataclass
class PairData:
    """The encoder-decoder's :class:`~lmlab.data.batches.TrainingData` (``train(cfg, data=...)``)."""

    train: list[PairExample]
    val: list[PairExample]
    meta: dict[str, Any]  # vocab_size, eot_id, tokenizer
    pad_id: int
    enc_pad_id: int

    fixed_windows = False  # the model takes encoder inputs too: no memory probe

    def check(self, cfg: Any) -> None:
        """Nothing to check: the pairs were tokenized with the run's tokenizers."""

    def loader(self, shape: ProcessBatch) -> PairLoader:
        return PairLoader(
            self.train,
            shape.global_batch,
            shape.micro_batch,
            shape.seed,
            shape.rank,
            shape.world,
            shape.device,
            self.pad_id,
            self.enc_pad_id,
        )

    def val_bytes_per_token(self) -> float | None:
        return None  # no byte counts: no bits per byte

    def val_batches(
        self, batch_size: int, max_batches: int, seed: int, rank: int = 0, world: int = 1
    ) -> list[tuple[Inputs, torch.Tensor]] | None:
        """Fixed held-out batches in order (every pair when ``max_batches`` is 0); this rank's share."""
        if not self.val:
            return None
        ex = self.val[: max_batches * batch_size] if max_batches else self.val
        batches = [
            collate_pairs(ex[i : i + batch_size], self.pad_id, self.enc_pad_id)
            for i in range(0, len(ex), batch_size)
        ]
        return batches[rank::world]

    def samples(
        self, model: Any, tokenizer: Any, n: int, max_new_tokens: int, device: torch.device
    ) -> list[str]:
        """Greedy targets for the first ``n`` held-out sources (what samples.md shows)."""
        examples = (self.val or self.train)[:n]
        outputs = generate_targets(
            model, examples, self.enc_pad_id, int(self.meta["eot_id"]), max_new_tokens, device
        )
        return [tokenizer.decode(ids) for ids in outputs]


@torch.no_grad()
def generate_targets(
    model: Any,
    examples: Sequence[PairExample],
    enc_pad_id: int,
    eot: int,
    max_new_tokens: int,
    device: torch.device,
    batch_size: int = 8,
) -> list[list[int]]:
    """Greedy decoder outputs for the examples' sources, each cut before its end-of-text."""
    out: list[list[int]] = []
    for lo in range(0, len(examples), batch_size):
        inputs, _ = collate_pairs(examples[lo : lo + batch_size], eot, enc_pad_id)
        out += model.generate(
            inputs["enc_ids"].to(device), inputs["enc_mask"].to(device), eot, max_new_tokens, eot
        )
    return out
