"""The data stages of a recipe: train its tokenizer, prepare its dataset, each skipped when up to date.

A stage is up to date when its output folder holds a ``stage.json`` whose key matches the
key computed now from the stage's settings and its inputs (paths, sizes, modification
times) and, for data, the tokenizer's fingerprint. :mod:`lmlab.pipeline.recipe` and
:mod:`lmlab.pipeline.curriculum` run them before training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from lmlab.config import Config
from lmlab.data.filters import CodeFilter
from lmlab.data.prepare import format_report, prepare_dataset
from lmlab.data.streams import HF_PREFIX, local_path
from lmlab.errors import ConfigError
from lmlab.io import atomic_write_text, expand_inputs
from lmlab.tokenizer import load_tokenizer, train_tokenizer
from lmlab.tokenizer.train import filter_summary

STAGE_FILE = "stage.json"


def _inputs_signature(inputs: list[str], suffixes: tuple[str, ...] = ()) -> list[list[Any]]:

    # a hub dataset is known by its name only; a local dataset by its files, like any input
    hub = [i for i in inputs if i.startswith(HF_PREFIX) and local_path(i) is None]
    local = [local_path(i) or i for i in inputs if i not in hub]
    files = expand_inputs(local, suffixes) if local else []
    sig: list[list[Any]] = [[h] for h in hub]
    for f in files:
        st = f.stat()
        sig.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return sig


def stage_key(
    settings: dict[str, Any], inputs: list[str], extra: dict[str, Any] | None = None
) -> str:
    """A hash of a stage's settings, its input files' identities, and anything upstream."""
    blob = json.dumps(
        {"settings": settings, "inputs": _inputs_signature(inputs), "extra": extra or {}},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def is_up_to_date(out: Path, key: str) -> bool:
    path = Path(out) / STAGE_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("key") == key
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def mark_done(out: Path, key: str, stage: str) -> None:
    atomic_write_text(Path(out) / STAGE_FILE, json.dumps({"stage": stage, "key": key}) + "\n")


def _filter_thresholds(name: str) -> dict[str, Any]:
    """The quality filter's thresholds, for a stage key: a stage filtered under other thresholds
    (an older lmlab's) is out of date."""
    return {"code_filter": CodeFilter().to_dict()} if name == "code" else {}


def ensure_tokenizer(cfg: Config, force: bool = False, log=print) -> Path:
    """The tokenizer folder for this recipe, training it first when needed."""
    t = cfg.tokenizer
    if t.path:
        if not Path(t.path).exists():
            raise ConfigError(f"tokenizer.path: {t.path} does not exist")
        return Path(t.path)
    if not t.out:
        raise ConfigError(
            "tokenizer.out: the recipe names no tokenizer (set tokenizer.out or tokenizer.path)"
        )
    out = Path(t.out)
    settings = {k: v for k, v in dataclasses.asdict(t).items() if k not in ("out", "path")}
    if t.filter == "none":
        del settings["filter"]  # tokenizers trained before the option existed stay up to date
    key = stage_key(settings, t.input, _filter_thresholds(t.filter))
    if not force and is_up_to_date(out, key):
        log(f"[tokenizer] up to date: {out}")
        return out

    log(f"[tokenizer] training {t.kind} tokenizer, vocab {t.vocab_size} -> {out}")
    tok = train_tokenizer(
        inputs=t.input,
        vocab_size=t.vocab_size,
        out=out,
        kind=t.kind,
        special_tokens=t.special_tokens,
        exclude=t.exclude,
        filter=t.filter,
    )
    if summary := filter_summary(tok):
        log(f"[tokenizer] {summary}")
    mark_done(out, key, "tokenizer")
    return out


def ensure_dataset(cfg: Config, tokenizer_dir: Path, force: bool = False, log=print) -> Path:
    """The prepared dataset folder for this recipe, preparing it first when needed."""
    p = cfg.prepare
    if not p.out:
        if not cfg.data.path:
            raise ConfigError(
                "prepare.out: the recipe names no dataset (set prepare.out or data.path)"
            )
        return Path(cfg.data.path)
    out = Path(p.out)

    fingerprint = load_tokenizer(tokenizer_dir).fingerprint()
    settings = {k: v for k, v in dataclasses.asdict(p).items() if k not in ("out", "workers")}
    key = stage_key(settings, p.input, {"tokenizer": fingerprint, **_filter_thresholds(p.filter)})
    if not force and is_up_to_date(out, key):
        log(f"[data] up to date: {out}")
        return out

    log(f"[data] preparing -> {out}")
    meta = prepare_dataset(p, tokenizer_path=str(tokenizer_dir), progress=cfg.log.progress)
    log(format_report(meta))
    mark_done(out, key, "data")
    return out


def resolve_training_inputs(cfg: Config, force: bool = False, log=print) -> Config:
    """Run the tokenizer and data stages as needed and point cfg.data at their outputs."""
    needs_tokenizer = bool(cfg.tokenizer.out or cfg.tokenizer.path)
    tok_dir = ensure_tokenizer(cfg, force, log) if needs_tokenizer else None
    if cfg.prepare.out:
        if tok_dir is None:
            raise ConfigError(
                "prepare.out: data preparation needs a tokenizer (tokenizer.out or tokenizer.path)"
            )
        cfg.data.path = str(ensure_dataset(cfg, tok_dir, force, log))
    if tok_dir is not None and not cfg.data.tokenizer:
        cfg.data.tokenizer = str(tok_dir)
    if not cfg.data.path:
        raise ConfigError(
            "data.path: the recipe names no dataset (set data.path or a [prepare] stage)"
        )
    return cfg
