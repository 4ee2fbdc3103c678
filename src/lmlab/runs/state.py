"""A checkpoint's training state (``state.json``) as one dataclass, packed and unpacked in one place.

The trainer keeps its progress in a :class:`TrainState`, saves ``state_dict()`` into every
checkpoint (:mod:`lmlab.train.checkpoint`) and resumes through ``load_state_dict``; readers of a
run (:mod:`lmlab.runs.read`) unpack the same keys. The keys are those lmlab has always written,
so older checkpoints load unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import CheckpointError


def _no_best() -> dict[str, Any]:
    return {"step": None, "val_loss": None}


@dataclass
class TrainState:
    """Everything besides weights and optimizer that exact resume restores."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # input tokens trained on
    loader: dict[str, int] = field(default_factory=dict)  # the batch source's state_dict
    rng: list[dict[str, Any]] = field(default_factory=list)  # each rank's generator states
    best_val: float = math.inf  # best val loss so far (inf: no eval yet)
    best_step: int | None = None
    evals_since_best: int = 0  # early stopping's count
    last_val: float | None = None
    best_checkpoint: dict[str, Any] = field(default_factory=_no_best)  # {"step", "val_loss"}
    spike_history: list[float] = field(default_factory=list)  # the spike guard's recent norms
    skipped_steps: int = 0
    elapsed_s: float = 0.0  # wall time of the run so far, over every resume
    world_size: int = 1
    global_batch: int = 0
    fitted_max_steps: int | None = None  # train.fit_to_time's refit, kept over a resume

    def state_dict(self) -> dict[str, Any]:
        """state.json's content (its historical key names; ``step`` last)."""
        return {
            "tokens": self.tokens,
            "loader": dict(self.loader),
            "rng": list(self.rng),
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "best_step": self.best_step,
            "evals_since_best": self.evals_since_best,
            "last_val_loss": self.last_val,
            "best_checkpoint": dict(self.best_checkpoint),
            "spike_history": list(self.spike_history),
            "skipped_steps": self.skipped_steps,
            "elapsed_s": self.elapsed_s,
            "world_size": self.world_size,
            "global_batch": self.global_batch,
            # only a refitted run has it, so an older state.json round-trips unchanged
            **({"fitted_max_steps": self.fitted_max_steps} if self.fitted_max_steps else {}),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any], where: Path | str = "state.json") -> None:
        """Take a state.json's values; CheckpointError naming ``where`` if one is missing or bad.
        ``world_size``, ``global_batch`` and ``fitted_max_steps`` were added later: absent, they keep
        their values."""
        try:
            best = state["best_val_loss"]
            new = dataclasses.replace(
                self,
                step=int(state["step"]),
                tokens=int(state["tokens"]),
                loader=dict(state["loader"]),
                rng=list(state["rng"]),
                best_val=float(best) if best is not None else math.inf,
                best_step=state["best_step"],
                evals_since_best=int(state["evals_since_best"]),
                last_val=state["last_val_loss"],
                best_checkpoint=dict(state["best_checkpoint"]),
                spike_history=[float(v) for v in state["spike_history"]],
                skipped_steps=int(state["skipped_steps"]),
                elapsed_s=float(state["elapsed_s"]),
                world_size=int(state.get("world_size", self.world_size)),
                global_batch=int(state.get("global_batch", self.global_batch)),
                fitted_max_steps=int(state["fitted_max_steps"])
                if state.get("fitted_max_steps")
                else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: incomplete training state ({e})") from None
        self.__dict__.update(dataclasses.asdict(new))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], where: Path | str = "state.json") -> TrainState:
        out = cls()
        out.load_state_dict(state, where)
        return out
