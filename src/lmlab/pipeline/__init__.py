"""Recipes end to end: the data stages (:mod:`.stages`), ``lmlab run`` (:mod:`.recipe`) and
curricula of ``[[phase]]`` tables (:mod:`.curriculum`); each asks :func:`lmlab.runs.plan_run`
whether a run is skipped, resumed or started."""

from lmlab.pipeline.recipe import run_recipe
from lmlab.pipeline.stages import (
    STAGE_FILE,
    ensure_dataset,
    ensure_tokenizer,
    is_up_to_date,
    mark_done,
    resolve_training_inputs,
    stage_key,
)
from lmlab.runs import run_status

__all__ = [
    "STAGE_FILE",
    "ensure_dataset",
    "ensure_tokenizer",
    "is_up_to_date",
    "mark_done",
    "resolve_training_inputs",
    "run_recipe",
    "run_status",
    "stage_key",
]
