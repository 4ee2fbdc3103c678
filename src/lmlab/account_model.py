"""The model a config will train, as `lmlab account` needs it: before anything has run.

A recipe often leaves ``model.vocab_size = 0`` (the tokenizer decides it) and a fine-tuning
recipe names no model at all: it inherits the one of ``train.init_from``'s run. Here both are
resolved without training anything:

1. ``train.init_from``: the model in that run's ``config.toml``; when the run does not exist
   yet, the model of the shipped recipe that writes it (``runs/demo/run`` is what `lmlab demo`
   writes from ``demo-python``). ``hf:FOLDER``: the model its ``config.json`` describes; a
   folder not made yet that a recipe documents as an export of a run (``runs/demo/hf``, the
   demo's run exported) counts that run's model.
2. the vocabulary, first found of: ``model.vocab_size``; ``data.tokenizer``; ``data.path``'s
   meta.json; ``tokenizer.path``; a tokenizer already at ``tokenizer.out``; a dataset already at
   ``prepare.out``; else what the tokenizer stage will produce: a char tokenizer's distinct
   characters of ``tokenizer.input`` plus its special tokens, a BPE or symbolic tokenizer's
   target ``tokenizer.vocab_size``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lmlab.config import Config, ModelConfig, builtin_recipes, load_config
from lmlab.errors import ConfigError, LmlabError
from lmlab.export.hf_import import model_fields
from lmlab.io import expand_inputs, read_json
from lmlab.runs import read_config, resolve_checkpoint
from lmlab.tokenizer import load_tokenizer
from lmlab.tokenizer.base import check_special_tokens
from lmlab.tokenizer.corpus import Corpus

# Where `lmlab demo` (default --out runs/demo) writes its run, and the recipe it trains.
DEMO_RUN = Path("runs/demo/run")
# Where the sft-from-hf recipe's comment exports that run (`lmlab export runs/demo/run --format hf`).
DEMO_HF_EXPORT = Path("runs/demo/hf")
DEMO_RECIPE = "demo-python"
# Counting characters reads the corpus; past this many bytes the char vocabulary is given as
# the bound tokenizer.vocab_size instead.
CHAR_COUNT_MAX_BYTES = 64 << 20


@dataclasses.dataclass
class ResolvedModel:
    model: ModelConfig
    vocab_source: str  # where the vocabulary size came from, for the report
    model_source: str  # "config", or the base run / recipe of train.init_from


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def base_config(init_from: str) -> tuple[Config, str]:
    """The config whose model ``train.init_from`` holds: the run's own, or the recipe that writes it."""
    if init_from.startswith("hf:"):
        return _hf_base_config(init_from)
    if Path(init_from).exists():
        try:
            ckpt = resolve_checkpoint(init_from)
        except LmlabError as e:
            raise ConfigError(f"train.init_from: {e}") from None
        return read_config(ckpt), f"the run {init_from}"
    for name, path in builtin_recipes().items():
        cfg = load_config(path)
        if cfg.train.out and _same_path(cfg.train.out, init_from):
            return cfg, f"recipe {name}, which writes {init_from}"
    if _same_path(init_from, DEMO_RUN):
        return load_config(
            DEMO_RECIPE
        ), f"recipe {DEMO_RECIPE}, which `lmlab demo` trains into {init_from}"
    raise ConfigError(
        f"train.init_from: {init_from} does not exist and no shipped recipe writes it; the model is that "
        "run's: train it first, or pass --model.* keys and --train.init_from=''"
    )


def _hf_base_config(init_from: str) -> tuple[Config, str]:
    """``hf:FOLDER``: the model of its config.json (no weights read), or of the run it will export."""
    folder = Path(init_from[len("hf:") :]).expanduser()
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        try:
            hf = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"train.init_from: {cfg_file}: not valid JSON ({e})") from None
        cfg = Config()
        for k, v in model_fields(hf, str(cfg_file))[1].items():
            setattr(cfg.model, k, v)
        return cfg, f"the transformers folder {folder}"
    if _same_path(folder, DEMO_HF_EXPORT):
        cfg, src = base_config(str(DEMO_RUN))
        return cfg, f"{src}, exported to {folder}"
    raise ConfigError(
        f"train.init_from: {init_from}: no config.json there (not a transformers model folder, or not made yet)"
    )


def _char_vocab(cfg: Config) -> tuple[int, str]:
    t = cfg.tokenizer
    try:
        files = expand_inputs(list(t.input))
    except LmlabError:
        files = []
    if not files or sum(f.stat().st_size for f in files) > CHAR_COUNT_MAX_BYTES:
        return (
            t.vocab_size,
            f"tokenizer.vocab_size {t.vocab_size} (an upper bound: char tokenizer, corpus not read)",
        )
    specials = check_special_tokens(t.special_tokens)
    chars: set[str] = set()
    for text in Corpus(files, specials).texts():
        chars.update(text)
    n = min(len(chars) + len(specials), t.vocab_size)
    return (
        n,
        f"the char tokenizer stage: {len(chars)} characters of tokenizer.input + {len(specials)} special",
    )


def resolve_vocab(cfg: Config) -> tuple[int, str]:
    """(vocabulary size, where it came from); see the module docstring for the order."""
    if cfg.model.vocab_size > 0:
        return cfg.model.vocab_size, "model.vocab_size"

    def tokenizer_at(path: str) -> int | None:
        if path and Path(path).exists():
            return int(load_tokenizer(path).vocab_size)
        return None

    def dataset_at(path: str) -> int | None:
        meta = Path(path) / "meta.json" if path else None
        if meta is not None and meta.is_file():
            size = read_json(meta).get("vocab_size", 0)
            return size if isinstance(size, int) and size > 0 else None
        return None

    for key, value, look in (
        ("data.tokenizer", cfg.data.tokenizer, tokenizer_at),
        ("data.path", cfg.data.path, dataset_at),
        ("tokenizer.path", cfg.tokenizer.path, tokenizer_at),
        ("tokenizer.out", cfg.tokenizer.out, tokenizer_at),
        ("prepare.out", cfg.prepare.out, dataset_at),
    ):
        size = look(value)
        if size:
            return size, f"{key} ({value})"
    if cfg.tokenizer.path:
        raise ConfigError(
            f"tokenizer.path: {cfg.tokenizer.path} not found (the vocabulary comes from it)"
        )
    if cfg.tokenizer.out:  # the stage will train one
        if cfg.tokenizer.kind == "char":
            return _char_vocab(cfg)
        return (
            cfg.tokenizer.vocab_size,
            f"the {cfg.tokenizer.kind} tokenizer stage's tokenizer.vocab_size",
        )
    raise ConfigError(
        "model.vocab_size: 0 and no tokenizer, dataset or tokenizer stage to take it from "
        f"(data.tokenizer={cfg.data.tokenizer!r}, data.path={cfg.data.path!r}); pass --model.vocab_size=N"
    )


def resolve_model(cfg: Config) -> ResolvedModel:
    """The model ``cfg`` trains, with its vocabulary size filled in."""
    if cfg.train.init_from:
        base, where = base_config(cfg.train.init_from)
        inner = resolve_model(
            dataclasses.replace(base, train=dataclasses.replace(base.train, init_from=""))
        )
        return ResolvedModel(inner.model, inner.vocab_source, f"train.init_from: {where}")
    size, source = resolve_vocab(cfg)
    return ResolvedModel(dataclasses.replace(cfg.model, vocab_size=size), source, "config")
