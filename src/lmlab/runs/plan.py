"""Skip, resume or start: the one decision every driver of training makes about a run folder.

``lmlab run`` (:mod:`lmlab.pipeline.recipe`), the curriculum's phases
(:mod:`lmlab.pipeline.curriculum`) and the sweep's points (:mod:`lmlab.experiments.sweep`) all
ask :func:`plan_run`:

- **skip** when the folder holds a run of the same config (:func:`lmlab.runs.same_run_config`:
  resolved as the trainer saves it, logging and device aside) that ended by itself at its
  newest checkpoint (max steps, early stop or time budget; a sweep also keeps a diverged point,
  which is a result, not a failure);
- **resume** when it holds a checkpoint of the same config;
- **fresh** otherwise, or whenever ``force`` is given.

Whether a fresh start may train over a run of another config is the caller's policy: the
pipeline refuses it without ``--force``, a curriculum and a sweep own their run folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmlab.config import Config
from lmlab.errors import LmlabError
from lmlab.io import read_json
from lmlab.runs.folder import holds_run, same_run_config
from lmlab.runs.read import complete_checkpoints, read_state, resolve_checkpoint

FINISHED_REASONS = ("max_steps", "early_stop", "time_budget")

Action = Literal["skip", "resume", "fresh"]


@dataclass(frozen=True)
class RunPlan:
    """What to do with a run folder, and what the decision saw there."""

    action: Action
    same_config: bool  # the folder's config.toml is this config
    holds_run: bool  # the folder holds checkpoints or metrics
    step: int | None  # the newest complete checkpoint's step

    @property
    def resume(self) -> bool:
        return self.action == "resume"


def newest_state(run_dir: Path) -> dict[str, Any] | None:
    """The newest complete checkpoint's state.json, or None when the run has no checkpoint.

    A checkpoint that ``latest`` names but that lacks a file raises CheckpointError: starting
    over would delete it, and it is the user's to look at."""
    root = Path(run_dir) / "checkpoints"
    latest = root / "latest"
    named = latest.is_file() and (root / latest.read_text(encoding="utf-8").strip()).is_dir()
    if not named and not complete_checkpoints(root):
        return None
    return read_state(resolve_checkpoint(run_dir))


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """``result.json`` of a run that ended (or was interrupted), or None."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        res = read_json(path)
    except (LmlabError, OSError):  # a torn, foreign or unreadable file: the run did not end
        return None
    return res if isinstance(res, dict) else None


def is_finished(
    run_dir: Path, cfg: Config, state: dict[str, Any] | None, diverged_is_final: bool = False
) -> bool:
    """The run ended by itself: its result.json says so and names the newest checkpoint's step
    (or that step reached ``train.max_steps``); a diverged run counts when ``diverged_is_final``
    (it has no checkpoint at its last step)."""
    res = read_result(run_dir)
    if res is None:
        return False
    reason = res.get("stop_reason")
    if reason == "diverged":
        return diverged_is_final
    if state is None:
        return False
    step = int(state.get("step", -1))
    return step >= cfg.train.max_steps or (
        reason in FINISHED_REASONS and int(res.get("steps", -2)) == step
    )


def plan_run(
    run_dir: Path, cfg: Config, *, force: bool = False, diverged_is_final: bool = False
) -> RunPlan:
    """Skip, resume or start training ``cfg`` into ``run_dir`` (see the module docstring)."""
    run_dir = Path(run_dir)
    same = same_run_config(run_dir, cfg)
    held = holds_run(run_dir)
    state = newest_state(run_dir) if same else None
    step = int(state["step"]) if state is not None else None
    if force or not same:
        action: Action = "fresh"
    elif is_finished(run_dir, cfg, state, diverged_is_final):
        action = "skip"
    elif state is not None:
        action = "resume"
    else:
        action = "fresh"
    return RunPlan(action=action, same_config=same, holds_run=held, step=step)
