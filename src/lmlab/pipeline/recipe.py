"""`lmlab run RECIPE`: every stage a recipe declares, each skipped when already up to date.

The data stages are :mod:`lmlab.pipeline.stages`; whether training skips, resumes or starts
is :func:`lmlab.runs.plan.plan_run`, the decision curricula and sweeps share. Stages:

1. tokenizer: train into ``tokenizer.out`` (or use ``tokenizer.path`` as it is);
2. data: ``lmlab data prepare`` into ``prepare.out``;
3. train: into ``train.out``; a finished run with the same config is kept, a partial one
   resumes;
4. eval: the final metrics, printed and added to the report.

A recipe with ``[[phase]]`` tables is a curriculum: :func:`lmlab.pipeline.curriculum.run_curriculum`
runs it instead (per-phase data stages and runs, then the forgetting table). A recipe with
``model.arch = "encdec"`` trains on ``[encdec]`` pairs (:func:`lmlab.train.encdec.run_encdec`)
after its tokenizer stage, and returns its ``encdec.json`` (pairs, result, parse rate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.config import Config, load_config
from lmlab.errors import CheckpointError
from lmlab.eval.metrics import evaluate_path, format_metrics
from lmlab.io import read_json, write_json
from lmlab.pipeline.curriculum import run_curriculum
from lmlab.pipeline.stages import ensure_tokenizer, resolve_training_inputs
from lmlab.runs import config_differences, plan_run, resolve_checkpoint
from lmlab.train.encdec import run_encdec
from lmlab.train.loop import train


def _train_stage(cfg: Config, train_fn: Any, force: bool, log) -> bool:
    """Train, unless a finished run of the same config is there; resume a partial one.

    The run's saved config is compared with the recipe's resolved the same way (vocab size
    from the dataset, absolute paths, logging and device aside: :func:`lmlab.runs.plan_run`). A run of another
    config is trained over only with ``force``. True when the stage was up to date.
    """
    run_dir = Path(cfg.train.out)
    plan = plan_run(run_dir, cfg, force=force)
    if plan.action == "skip":
        log(f"[train] up to date: {run_dir} (step {plan.step})")
        return True
    if plan.holds_run and not plan.same_config and not force:
        diffs = config_differences(run_dir, cfg)
        raise CheckpointError(
            f"{run_dir}: holds a run of another config ({'; '.join(diffs) or 'its config.toml differs'}); "
            "pass --force to train it over, or set train.out to another folder"
        )
    log(f"[train] {'resuming' if plan.resume else 'training'} -> {run_dir}")
    train_fn(cfg, resume=plan.resume, force=not plan.resume)
    return False


EVAL_FILE = "eval.json"


def _eval_stage(run_dir: Path, batches: int | None, log) -> dict[str, Any]:
    """The final metrics of the run's latest checkpoint, reused from eval.json when they are of it."""

    ckpt = resolve_checkpoint(run_dir).name
    cached = run_dir / EVAL_FILE
    if cached.is_file():
        old = read_json(cached)
        if (
            isinstance(old, dict)
            and old.get("checkpoint") == ckpt
            and old.get("batches") == batches
        ):
            log("[eval] up to date: " + format_metrics(old["metrics"]))
            return old["metrics"]
    metrics = evaluate_path(str(run_dir), data=None, batches=batches)
    write_json(cached, {"checkpoint": ckpt, "batches": batches, "metrics": metrics})
    log("[eval] " + format_metrics(metrics))
    return metrics


def run_recipe(
    path: Path, overrides: list[str] | None = None, force: bool = False, log=print
) -> dict[str, Any]:
    """Run every stage of a recipe; returns the final eval metrics."""
    cfg = load_config(path, overrides)
    if cfg.phase:  # a curriculum: its phases' data, runs and forgetting table
        return run_curriculum(cfg, force, log)
    if cfg.model.arch == "encdec":  # pairs, not token shards: a tokenizer stage, then training
        if cfg.tokenizer.out or cfg.tokenizer.path:
            cfg.data.tokenizer = str(Path(ensure_tokenizer(cfg, force, log)).resolve())
        cfg.validate()
        _train_stage(cfg, run_encdec, force, log)
        return read_json(Path(cfg.train.out) / "encdec.json")
    cfg = resolve_training_inputs(cfg, force, log)
    cfg.validate()

    run_dir = Path(cfg.train.out)
    _train_stage(cfg, train, force, log)
    return _eval_stage(run_dir, cfg.eval.batches or None, log)
