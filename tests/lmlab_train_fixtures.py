"""Tiny datasets and configs for the training, checkpoint, loader and eval tests.

Datasets are written directly with numpy in the prepared-dataset format (meta.json + .bin
shards), so these tests do not depend on `lmlab data prepare`; the tokenizer is a char
tokenizer trained on the same text.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lmlab.config import Config, from_dict

WORDS = "the cat sat on a mat and dog ran to big red hat with sun in sky so we go up".split()


def make_text(n_docs: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "."
            for _ in range(rng.randint(2, 5))
        ]
        docs.append(" ".join(sentences))
    return docs


def write_dataset(
    out: Path,
    docs: list[str],
    tok_dir: Path | None = None,
    val_docs: int = 8,
    shard_tokens: int = 0,
) -> Path:
    """Tokenize ``docs`` with a char tokenizer (trained here) and write a dataset folder."""
    from lmlab.tokenizer import train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok_dir = tok_dir or out.parent / (out.name + "_tok")
    corpus = out.parent / (out.name + "_corpus.txt")
    corpus.write_text("\n".join(docs), encoding="utf-8")
    tok = train_tokenizer(
        [str(corpus)], vocab_size=64, out=tok_dir, kind="char", special_tokens=["<|endoftext|>"]
    )
    eot = tok.special_tokens["<|endoftext|>"]
    splits = {}
    for split, part in (("train", docs[val_docs:]), ("val", docs[:val_docs])):
        ids: list[int] = []
        for d in part:
            ids += tok.encode_ordinary(d) + [eot]
        arr = np.array(ids, dtype=np.uint16)
        chunks = (
            [arr]
            if not shard_tokens
            else [arr[i : i + shard_tokens] for i in range(0, len(arr), shard_tokens)]
        )
        names = []
        for k, c in enumerate(chunks):
            name = f"{split}_{k:06d}.bin"
            c.astype("<u2").tofile(out / name)
            names.append(name)
        splits[split] = {
            "tokens": len(arr),
            "documents": len(part),
            "bytes": sum(len(d.encode()) for d in part),
            "shards": names,
        }
    meta = {
        "format": "lmlab-tokens-v1",
        "dtype": "uint16",
        "vocab_size": tok.vocab_size,
        "eot_id": eot,
        "tokenizer": str(tok_dir.resolve()),
        "tokenizer_fingerprint": tok.fingerprint(),
        "splits": splits,
    }
    (out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return out


def tiny_config(data: Path, out: Path, **overrides: object) -> Config:
    """A 2-layer width-32 model on CPU with small batches; ``section__key=value`` overrides."""
    tree: dict[str, dict[str, object]] = {
        "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "context_length": 16},
        "data": {"path": str(data)},
        "train": {
            "max_steps": 12,
            "batch_size": 4,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 2,
            "eval_every": 4,
            "checkpoint_every": 4,
            "log_every": 1,
            "device": "cpu",
            "dtype": "float32",  # not auto: a timing-based pick must not move stored losses
            "out": str(out),
            "seed": 3,
        },
        "eval": {"batches": 2, "samples": 1, "sample_tokens": 8},
        "log": {"progress": False},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        tree.setdefault(section, {})[name] = value
    return from_dict(tree).validate()


def losses(run: Path, key: str = "train_loss") -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if key in rec:
            out[rec["step"]] = rec[key]
    return out


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """Build and train in float64, for tests that compare two computations meant to be equal.

    Float32 results depend on summation order, which differs across CPUs (AVX2, AVX-512, AMX)
    and between a batch and its micro-batches; Adam then amplifies a gradient difference
    near its eps. In float64 the unit roundoff is 2**-53 instead of 2**-24, 5e8 times smaller,
    so a tolerance far below float32's noise still leaves orders of margin.
    """
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
