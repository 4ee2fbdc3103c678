"""Tokenized instruction examples and their loss mask; held-out and subset selections.

One example is ``[eot] + prompt + response + [eot]``: it starts after a document boundary
(as ``lmlab chat`` feeds a first turn) and the trailing end-of-text teaches the model to
stop. Prompt and response are tokenized separately, so the prompt's tokens are exactly
those ``lmlab chat`` feeds at inference. Inputs are ``ids[:-1]``, targets ``ids[1:]``
with every target inside the prompt set to -100: only the response and its end-of-text
are learned (the loss lives outside the model and ignores -100).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmlab.data.sft.records import Record, SkipReport
from lmlab.data.sft.templates import PromptTemplate
from lmlab.errors import DataError, LmlabError

_HOLDOUT_SALT = 0x5F7_0001
_SUBSET_SALT = 0x5F7_0002
IGNORE = -100  # the target the loss skips


@dataclass
class Example:
    """One tokenized example: ``ids = [eot] + prompt + response + [eot]``."""

    ids: np.ndarray  # int64
    n_prompt: int  # leading tokens not learned (eot + prompt)
    where: str

    @property
    def length(self) -> int:
        """Sequence length (positions fed to the model)."""
        return len(self.ids) - 1

    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets, prompt targets set to -100."""
        x = self.ids[:-1]
        y = self.ids[1:].copy()
        y[: self.n_prompt - 1] = IGNORE
        return x, y


def tokenize_records(
    records: Sequence[Record],
    tokenizer: Any,
    template: PromptTemplate,
    max_len: int,
    skips: SkipReport,
) -> list[Example]:
    """Records -> examples; those longer than ``max_len`` positions are skipped (counted)."""
    eot = getattr(tokenizer, "eot_id", None)
    if eot is None:
        raise DataError(
            "the tokenizer has no <|endoftext|> token: SFT needs it to mark where a response ends"
        )
    prompts = [template.render(r.instruction, r.input) for r in records]
    responses = [r.output for r in records]
    encoded: list[tuple[list[int], list[int]] | str] = []  # (prompt ids, response ids) or why not
    try:  # the fast batch path; a tokenizer that rejects some text (char) goes one by one
        encoded = list(
            zip(
                tokenizer.encode_ordinary_batch(prompts),
                tokenizer.encode_ordinary_batch(responses),
                strict=True,
            )
        )
    except (LmlabError, AttributeError):
        for p, r in zip(prompts, responses, strict=True):
            try:
                encoded.append((tokenizer.encode_ordinary(p), tokenizer.encode_ordinary(r)))
            except LmlabError as e:
                encoded.append(str(e))
    out: list[Example] = []
    for rec, enc in zip(records, encoded, strict=True):
        if isinstance(enc, str):
            skips.skip(rec.where, f"cannot tokenize ({enc})", "untokenizable")
            continue
        p, r = enc
        ids = np.array([eot, *p, *r, eot], dtype=np.int64)
        if len(ids) - 1 > max_len:
            skips.skip(
                rec.where, f"{len(ids) - 1} tokens, longer than the context ({max_len})", "too_long"
            )
            continue
        out.append(Example(ids, 1 + len(p), rec.where))
    return out


def fingerprint(examples: Sequence[Example]) -> str:
    """sha256 over the examples' tokens and masks (resume checks the data did not change)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(np.int64(e.n_prompt).tobytes())
        h.update(np.int64(len(e.ids)).tobytes())
        h.update(e.ids.tobytes())
    return h.hexdigest()


def hold_out(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, held-out): a fixed random ``fraction`` (at least one) of ``examples`` held out."""
    n_val = max(1, round(fraction * len(examples)))
    if n_val >= len(examples):
        raise DataError(
            f"sft.val_fraction: {fraction} of {len(examples)} examples leaves none to train on"
        )
    perm = np.random.default_rng([seed, _HOLDOUT_SALT]).permutation(len(examples))
    val_idx = set(perm[:n_val].tolist())
    train = [e for i, e in enumerate(examples) if i not in val_idx]
    val = [e for i, e in enumerate(examples) if i in val_idx]
    return train, val


def subset(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A fixed random subset of ``n`` examples, in their original order (all when n is 0)."""
    if not n or n >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng([seed, _SUBSET_SALT]).permutation(len(examples))[:n])
    return [examples[i] for i in keep]
