"""`lmlab run RECIPE`: every stage a recipe declares, each skipped when already up to date.

A stage is up to date when its output folder holds a ``stage.json`` whose key matches the
key computed now from the stage's settings and its inputs (paths, sizes, modification
times) and, for data, the tokenizer's fingerprint. Stages:

1. tokenizer: train into ``tokenizer.out`` (or use ``tokenizer.path`` as it is);
2. data: ``lmlab data prepare`` into ``prepare.out``;
3. train: into ``train.out``; a finished run with the same config is kept, a partial one
   resumes;
4. eval: the final metrics, printed and added to the report.

A recipe with ``[[phase]]`` tables is a curriculum: :func:`lmlab.train.curriculum.run_curriculum`
runs it instead (per-phase data stages and runs, then the forgetting table). A recipe with
``model.arch = "encdec"`` trains on ``[encdec]`` pairs (:func:`lmlab.train.encdec.run_encdec`)
after its tokenizer stage, and returns its ``encdec.json`` (pairs, result, parse rate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from lmlab.config import Config, load_config
from lmlab.errors import CheckpointError, ConfigError
from lmlab.io import atomic_write_text, expand_inputs, read_json, write_json

STAGE_FILE = "stage.json"


def _inputs_signature(inputs: list[str], suffixes: tuple[str, ...] = ()) -> list[list[Any]]:
    from lmlab.data.streams import HF_PREFIX, local_path

    # a hub dataset is known by its name only; a local dataset by its files, like any input
    hub = [i for i in inputs if i.startswith(HF_PREFIX) and local_path(i) is None]
    local = [local_path(i) or i for i in inputs if i not in hub]
    files = expand_inputs(local, suffixes) if local else []
    sig: list[list[Any]] = [[h] for h in hub]
    for f in files:
        st = f.stat()
        sig.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return sig


def stage_key(settings: dict[str, Any], inputs: list[str], extra: dict[str, Any] | None = None) -> str:
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


def ensure_tokenizer(cfg: Config, force: bool = False, log=print) -> Path:
    """The tokenizer folder for this recipe, training it first when needed."""
    t = cfg.tokenizer
    if t.path:
        if not Path(t.path).exists():
            raise ConfigError(f"tokenizer.path: {t.path} does not exist")
        return Path(t.path)
    if not t.out:
        raise ConfigError("tokenizer.out: the recipe names no tokenizer (set tokenizer.out or tokenizer.path)")
    out = Path(t.out)
    settings = {k: v for k, v in dataclasses.asdict(t).items() if k not in ("out", "path")}
    key = stage_key(settings, t.input)
    if not force and is_up_to_date(out, key):
        log(f"[tokenizer] up to date: {out}")
        return out
    from lmlab.tokenizer import train_tokenizer

    log(f"[tokenizer] training {t.kind} tokenizer, vocab {t.vocab_size} -> {out}")
    train_tokenizer(inputs=t.input, vocab_size=t.vocab_size, out=out, kind=t.kind, special_tokens=t.special_tokens)
    mark_done(out, key, "tokenizer")
    return out


def ensure_dataset(cfg: Config, tokenizer_dir: Path, force: bool = False, log=print) -> Path:
    """The prepared dataset folder for this recipe, preparing it first when needed."""
    p = cfg.prepare
    if not p.out:
        if not cfg.data.path:
            raise ConfigError("prepare.out: the recipe names no dataset (set prepare.out or data.path)")
        return Path(cfg.data.path)
    out = Path(p.out)
    from lmlab.tokenizer import load_tokenizer

    fingerprint = load_tokenizer(tokenizer_dir).fingerprint()
    settings = {k: v for k, v in dataclasses.asdict(p).items() if k not in ("out", "workers")}
    key = stage_key(settings, p.input, {"tokenizer": fingerprint})
    if not force and is_up_to_date(out, key):
        log(f"[data] up to date: {out}")
        return out
    from lmlab.data.prepare import format_report, prepare_dataset

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
            raise ConfigError("prepare.out: data preparation needs a tokenizer (tokenizer.out or tokenizer.path)")
        cfg.data.path = str(ensure_dataset(cfg, tok_dir, force, log))
    if tok_dir is not None and not cfg.data.tokenizer:
        cfg.data.tokenizer = str(tok_dir)
    if not cfg.data.path:
        raise ConfigError("data.path: the recipe names no dataset (set data.path or a [prepare] stage)")
    return cfg


def run_status(run_dir: Path) -> dict[str, Any] | None:
    """The newest complete checkpoint's state.json of a run, or None."""
    latest = Path(run_dir) / "checkpoints" / "latest"
    if not latest.is_file():
        return None
    ckpt = Path(run_dir) / "checkpoints" / latest.read_text(encoding="utf-8").strip()
    state = ckpt / "state.json"
    return read_json(state) if state.is_file() else None


def _finished(run_dir: Path, state: dict[str, Any], cfg: Config) -> bool:
    """The run reached max_steps, or stopped normally (early stop, time budget) at its last checkpoint."""
    if int(state.get("step", 0)) >= cfg.train.max_steps:
        return True
    result = Path(run_dir) / "result.json"
    res = read_json(result) if result.is_file() else {}
    return (isinstance(res, dict) and res.get("stop_reason") in ("early_stop", "time_budget")
            and int(res.get("steps", -1)) == int(state.get("step", -2)))


def _train_stage(cfg: Config, train_fn: Any, force: bool, log) -> bool:
    """Train, unless a finished run of the same config is there; resume a partial one.

    The run's saved config is compared with the recipe's resolved the same way (vocab size
    from the dataset, absolute paths: :func:`lmlab.runs.same_run_config`). A run of another
    config is trained over only with ``force``. True when the stage was up to date.
    """
    from lmlab.runs import config_differences, holds_run, same_run_config

    run_dir = Path(cfg.train.out)
    state = run_status(run_dir)
    same = same_run_config(run_dir, cfg)
    if state is not None and same and not force and _finished(run_dir, state, cfg):
        log(f"[train] up to date: {run_dir} (step {state.get('step')})")
        return True
    if holds_run(run_dir) and not same and not force:
        diffs = config_differences(run_dir, cfg)
        raise CheckpointError(f"{run_dir}: holds a run of another config ({'; '.join(diffs) or 'its config.toml differs'}); "
                              "pass --force to train it over, or set train.out to another folder")
    resume = state is not None and same and not force
    log(f"[train] {'resuming' if resume else 'training'} -> {run_dir}")
    train_fn(cfg, resume=resume, force=not resume)
    return False


EVAL_FILE = "eval.json"


def _eval_stage(run_dir: Path, batches: int | None, log) -> dict[str, Any]:
    """The final metrics of the run's latest checkpoint, reused from eval.json when they are of it."""
    from lmlab.eval.metrics import evaluate_path, format_metrics
    from lmlab.train.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(run_dir).name
    cached = run_dir / EVAL_FILE
    if cached.is_file():
        old = read_json(cached)
        if isinstance(old, dict) and old.get("checkpoint") == ckpt and old.get("batches") == batches:
            log("[eval] up to date: " + format_metrics(old["metrics"]))
            return old["metrics"]
    metrics = evaluate_path(str(run_dir), data=None, batches=batches)
    write_json(cached, {"checkpoint": ckpt, "batches": batches, "metrics": metrics})
    log("[eval] " + format_metrics(metrics))
    return metrics


def run_recipe(path: Path, overrides: list[str] | None = None, force: bool = False, log=print) -> dict[str, Any]:
    """Run every stage of a recipe; returns the final eval metrics."""
    cfg = load_config(path, overrides)
    if cfg.phase:  # a curriculum: its phases' data, runs and forgetting table
        from lmlab.train.curriculum import run_curriculum

        return run_curriculum(cfg, force, log)
    if cfg.model.arch == "encdec":  # pairs, not token shards: a tokenizer stage, then training
        from lmlab.train.encdec import run_encdec

        if cfg.tokenizer.out or cfg.tokenizer.path:
            cfg.data.tokenizer = str(Path(ensure_tokenizer(cfg, force, log)).resolve())
        cfg.validate()
        _train_stage(cfg, run_encdec, force, log)
        return read_json(Path(cfg.train.out) / "encdec.json")
    cfg = resolve_training_inputs(cfg, force, log)
    cfg.validate()
    from lmlab.train.loop import train

    run_dir = Path(cfg.train.out)
    _train_stage(cfg, train, force, log)
    return _eval_stage(run_dir, cfg.eval.batches or None, log)
