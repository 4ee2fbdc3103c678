"""Run folders: claim and compare them (:mod:`.folder`), read them (:mod:`.read`), plan what
training a config into one needs (:mod:`.plan`). Nothing here trains, so eval, sample, chat
and export read runs without importing :mod:`lmlab.train`."""

from lmlab.runs.folder import (
    RUN_FILES,
    RUN_RESULTS,
    absolutize,
    check_run_dir,
    config_differences,
    expected_config,
    holds_run,
    load_run_config,
    open_run_dir,
    recorded_run_dir,
    relocate,
    resolve_run_config,
    run_folder_of,
    same_run_config,
    saved_config,
)
from lmlab.runs.plan import RunPlan, plan_run
from lmlab.runs.read import (
    complete_checkpoints,
    find_tokenizer,
    load_model,
    load_model_for_inference,
    read_config,
    read_state,
    resolve_checkpoint,
    run_status,
)

__all__ = [
    "RUN_FILES",
    "RUN_RESULTS",
    "RunPlan",
    "plan_run",
    "absolutize",
    "complete_checkpoints",
    "config_differences",
    "expected_config",
    "find_tokenizer",
    "holds_run",
    "load_model",
    "load_model_for_inference",
    "load_run_config",
    "check_run_dir",
    "open_run_dir",
    "read_config",
    "read_state",
    "recorded_run_dir",
    "relocate",
    "resolve_checkpoint",
    "resolve_run_config",
    "run_folder_of",
    "run_status",
    "same_run_config",
    "saved_config",
]
