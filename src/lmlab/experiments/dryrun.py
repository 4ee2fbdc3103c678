"""`lmlab sweep SWEEP.toml --dry-run`: every point's config built and checked, nothing trained.

For each point (each seed, with ``seeds``): the config from the base recipe and the
overrides, exactly as the sweep would build it (unknown keys and bad values raise the
sweep's errors); the model built on the meta device (no memory, no weights: shape errors
show, such as a width not divisible by the heads); its parameter count from that model;
``train.max_steps`` from a budget; the tokens and training FLOPs of the run
(:mod:`lmlab.accounting`). No tokenizer, dataset or run folder is written or needed: the
vocabulary comes from the dataset when it is already prepared, else from
``tokenizer.vocab_size`` (an upper bound for a char tokenizer, whose table is the text's
symbols). This is how the GPU tier (``sweeps/gpu/``) is checked on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.accounting import training_flops_per_token
from lmlab.config import Config
from lmlab.data.shards import read_meta
from lmlab.errors import ConfigError
from lmlab.experiments.results import table_markdown
from lmlab.experiments.spec import load_sweep, resolve_base
from lmlab.experiments.sweep import apply_budget, point_config
from lmlab.model import build_model

COLUMNS = [
    "point",
    "seed",
    "arch",
    "params",
    "vocab_size",
    "steps",
    "batch",
    "context",
    "tokens",
    "train_flops",
    "vocab_from",
]


@dataclass
class DryRun:
    rows: list[dict[str, Any]]
    markdown: str
    total_flops: float
    total_tokens: int


def _vocab(cfg: Config) -> tuple[int, str]:
    """The vocabulary size training would use, and where it came from."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "model.vocab_size"

    for folder in (cfg.data.path, cfg.prepare.out):
        if folder and (Path(folder) / "meta.json").is_file():
            return int(read_meta(folder)["vocab_size"]), f"{folder}/meta.json"
    if cfg.tokenizer.vocab_size:
        return cfg.tokenizer.vocab_size, "tokenizer.vocab_size"
    raise ConfigError(
        "model.vocab_size: 0, and no prepared dataset or tokenizer.vocab_size to take it from"
    )


def meta_params(cfg: Config) -> int:
    """Parameters of the model ``cfg`` builds, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(cfg.model)
    # a tied head shares its tensor with the embedding: count each tensor once
    return sum(p.numel() for p in model.parameters())


def dry_run(
    path: Path, overrides: list[str] | None = None, seeds: int | None = None, log=print
) -> DryRun:
    """Build and check every point of the sweep in ``path``; see the module docstring."""
    spec = load_sweep(path, seeds=seeds)
    base = resolve_base(spec)
    cli = [o[2:] if o.startswith("--") else o for o in (overrides or [])]
    rows = []
    for point in spec.points:
        cfg, budget = point_config(spec, base, point, cli)
        cfg.model.vocab_size, source = _vocab(cfg)
        apply_budget(cfg, budget)
        try:
            cfg.validate()
            if cfg.model.arch == "encdec":
                raise ConfigError(
                    "model.arch: encdec needs its pretrained encoder; a dry run cannot build it"
                )
            params = meta_params(cfg)
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"{spec.path}: point {point.name}: {e}") from None
        batch = cfg.batch_shape(1)[0]
        tokens = cfg.train.max_steps * batch * cfg.model.context_length
        rows.append(
            {
                "point": point.name,
                "seed": cfg.train.seed,
                "arch": cfg.model.arch,
                "params": params,
                "vocab_size": cfg.model.vocab_size,
                "steps": cfg.train.max_steps,
                "batch": batch,
                "context": cfg.model.context_length,
                "tokens": tokens,
                "train_flops": tokens * training_flops_per_token(cfg.model),
                "vocab_from": source,
            }
        )
    md = table_markdown(rows, COLUMNS)
    total = float(sum(r["train_flops"] for r in rows))
    total_tokens = int(sum(r["tokens"] for r in rows))
    log(f"[sweep] {spec.name}: dry run, {len(rows)} runs -> {spec.out} (nothing trained)")
    log(md.rstrip())
    log(f"[sweep] total: {total_tokens:,} tokens, {total:.3g} training FLOPs")
    return DryRun(rows=rows, markdown=md, total_flops=total, total_tokens=total_tokens)
