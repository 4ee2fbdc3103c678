"""lmlab.runs.plan_run: the one skip / resume / start decision of `lmlab run`, curricula and sweeps.

Run folders are laid out by hand (config.toml, a checkpoint's four files, result.json) so each
case is what the decision reads, without training.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from lmlab.config import Config, save_config
from lmlab.errors import CheckpointError
from lmlab.experiments import sweep
from lmlab.runs import expected_config, plan_run


def config(run: Path, max_steps: int = 8) -> Config:
    cfg = Config()
    cfg.model.vocab_size = 40  # no dataset: the vocabulary is the config's
    cfg.train.out = str(run)
    cfg.train.max_steps = max_steps
    return cfg.validate()


def lay_out(run: Path, cfg: Config, step: int | None = None, result: dict | None = None) -> None:
    """A run of ``cfg`` in ``run``: its config.toml, a checkpoint at ``step``, its result.json."""
    run.mkdir(parents=True, exist_ok=True)
    save_config(expected_config(cfg), run / "config.toml")
    if step is not None:
        ckpt = run / "checkpoints" / f"step_{step:06d}"
        ckpt.mkdir(parents=True)
        for name in ("model.safetensors", "optimizer.pt", "config.toml"):
            (ckpt / name).write_bytes(b"x")
        (ckpt / "state.json").write_text(json.dumps({"step": step}))
        (run / "checkpoints" / "latest").write_text(ckpt.name + "\n")
    if result is not None:
        (run / "result.json").write_text(json.dumps(result))


def test_an_empty_folder_starts_fresh(tmp_path):
    plan = plan_run(tmp_path / "r", config(tmp_path / "r"))
    assert (plan.action, plan.same_config, plan.holds_run, plan.step) == (
        "fresh",
        False,
        False,
        None,
    )


def test_a_partial_run_of_the_same_config_resumes_at_its_newest_checkpoint(tmp_path):
    run = tmp_path / "r"
    cfg = config(run)
    lay_out(run, cfg, step=4)
    plan = plan_run(run, cfg)
    assert (plan.action, plan.resume, plan.step, plan.holds_run) == ("resume", True, 4, True)
    assert plan_run(run, cfg, force=True).action == "fresh"


@pytest.mark.parametrize("reason", ["max_steps", "early_stop", "time_budget"])
def test_a_run_that_ended_by_itself_at_its_checkpoint_is_skipped(tmp_path, reason):
    run = tmp_path / "r"
    cfg = config(run)
    step = 8 if reason == "max_steps" else 5
    lay_out(run, cfg, step=step, result={"stop_reason": reason, "steps": step})
    assert plan_run(run, cfg).action == "skip"
    assert plan_run(run, cfg, force=True).action == "fresh"


def test_a_result_of_a_later_step_than_the_checkpoint_resumes(tmp_path):
    # interrupted after an early stop was recorded at step 6 but the checkpoint is step 4
    run = tmp_path / "r"
    cfg = config(run)
    lay_out(run, cfg, step=4, result={"stop_reason": "early_stop", "steps": 6})
    assert plan_run(run, cfg).action == "resume"
    lay_out(
        tmp_path / "i",
        config(tmp_path / "i"),
        step=4,
        result={"stop_reason": "interrupted", "steps": 4},
    )
    assert plan_run(tmp_path / "i", config(tmp_path / "i")).action == "resume"


def test_a_diverged_run_is_final_only_for_a_sweep(tmp_path):
    run = tmp_path / "r"
    cfg = config(run)
    lay_out(run, cfg, step=4, result={"stop_reason": "diverged", "steps": 6})
    assert plan_run(run, cfg).action == "resume"
    assert plan_run(run, cfg, diverged_is_final=True).action == "skip"
    assert sweep.plan(run, cfg) == "skip"


def test_another_config_starts_fresh_and_says_the_folder_holds_a_run(tmp_path):
    run = tmp_path / "r"
    cfg = config(run)
    lay_out(run, cfg, step=8, result={"stop_reason": "max_steps", "steps": 8})
    other = config(run, max_steps=9)
    plan = plan_run(run, other)
    assert (plan.action, plan.same_config, plan.holds_run) == ("fresh", False, True)
    assert sweep.plan(run, other) == "fresh"


def test_logging_and_device_do_not_make_a_run_another_run(tmp_path):
    run = tmp_path / "r"
    cfg = config(run)
    lay_out(run, cfg, step=8, result={"stop_reason": "max_steps", "steps": 8})
    watched = copy.deepcopy(cfg)
    watched.log.progress = not cfg.log.progress
    watched.train.device = "cpu" if cfg.train.device != "cpu" else "auto"
    assert plan_run(run, watched).action == "skip"
    assert sweep.plan(run, watched) == "skip"
    changed = copy.deepcopy(cfg)
    changed.train.lr = cfg.train.lr / 2
    assert plan_run(run, changed).action == "fresh"


def test_a_broken_newest_checkpoint_is_reported_not_started_over(tmp_path):
    run = tmp_path / "r"
    cfg = config(run)
    lay_out(run, cfg, step=4)
    (run / "checkpoints" / "step_000004" / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match=r"step_000004/optimizer\.pt: missing"):
        plan_run(run, cfg)
    # `latest` naming a folder deleted by hand, no other checkpoint: nothing to resume
    lay_out(tmp_path / "s", config(tmp_path / "s"))
    (tmp_path / "s" / "checkpoints").mkdir()
    (tmp_path / "s" / "checkpoints" / "latest").write_text("step_000009\n")
    assert plan_run(tmp_path / "s", config(tmp_path / "s")).action == "fresh"
