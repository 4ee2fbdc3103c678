"""Checkpoints, the writing half: save them atomically, prune old ones, restore training state.

Finding, reading and loading a checkpoint for inference is :mod:`lmlab.runs.read` (eval,
sample, chat and export read runs without importing the trainer); its names are re-exported
here for the trainer's modules.

Layout inside a run folder::

    checkpoints/step_000500/model.safetensors   weights (safetensors: loading runs no code)
                           optimizer.pt         {"optimizer": ..., "scaler": ...}, tensors only
                           state.json           lmlab.runs.state.TrainState.state_dict()
                           config.toml          the resolved config of the run
    checkpoints/latest                          the name of the newest complete checkpoint

A checkpoint is written into a temporary sibling folder and renamed into place, then
``latest`` is rewritten atomically, so a crash at any moment leaves the previous checkpoint
intact and ``latest`` naming a complete one. Older checkpoints beyond the newest ``keep`` are
deleted, except the one with the best validation loss.
"""

from __future__ import annotations

import base64
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_model

from lmlab.config import Config, save_config
from lmlab.errors import CheckpointError
from lmlab.io import atomic_write_text, write_json
from lmlab.outputs import atomic_dir, remove_stale_temps
from lmlab.runs.read import (
    FILES,
    complete_checkpoints,
    find_tokenizer,
    load_model,
    load_model_for_inference,
    load_weights,
    model_differences,
    read_config,
    read_state,
    read_train_state,
    resolve_checkpoint,
    unwrap,
)

# the reading half, shared with the trainer (lmlab.runs.read)
__all__ = [
    "FILES",
    "checkpoint_name",
    "clean_partial",
    "complete_checkpoints",
    "find_tokenizer",
    "load_model",
    "load_model_for_inference",
    "load_training_state",
    "load_weights",
    "model_differences",
    "prune",
    "read_config",
    "read_state",
    "read_train_state",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "unwrap",
]


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


# --- RNG state as JSON ------------------------------------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states, JSON-serialisable."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [_unb64(s) for s in state["cuda"]]
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# --- saving -----------------------------------------------------------------------------------


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scaler: Any,
    state: dict[str, Any],
    cfg: Config,
    keep: int = 2,
    best_step: int | None = None,
) -> Path:
    """Write ``root/step_NNNNNN`` atomically, point ``latest`` at it, prune old ones."""

    name = checkpoint_name(step)
    final = root / name
    try:
        with atomic_dir(final, "checkpoint") as tmp:
            save_model(unwrap(model), str(tmp / "model.safetensors"))
            torch.save(
                {
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scaler": scaler.state_dict()
                    if scaler is not None and scaler.is_enabled()
                    else None,
                },
                tmp / "optimizer.pt",
            )
            write_json(tmp / "state.json", {**state, "step": step})
            save_config(cfg, tmp / "config.toml")
        atomic_write_text(root / "latest", name + "\n")
    except (OSError, RuntimeError, SafetensorError) as e:
        # a full disk or a read-only folder: torch reports it as RuntimeError, safetensors as its own
        # error; atomic_dir has removed the partial folder and `latest` still names the last good one
        kept = complete_checkpoints(root)
        prev = f"the previous checkpoint {kept[-1]} is intact" if kept else "no earlier checkpoint"
        why = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)).splitlines()[0]
        raise CheckpointError(f"{final}: cannot write the checkpoint ({why}); {prev}") from None
    prune(root, keep, best_step)
    return final


def prune(root: Path, keep: int, best_step: int | None) -> None:
    """Delete complete checkpoints older than the newest ``keep``, sparing the best."""
    found = complete_checkpoints(root)
    best = checkpoint_name(best_step) if best_step is not None else None
    for p in found[: max(0, len(found) - keep)]:
        if p.name != best:
            shutil.rmtree(p, ignore_errors=True)


def clean_partial(root: Path) -> None:
    """Remove temporary folders left by a checkpoint write that was killed (lmlab's naming
    ``.step_NNNNNN.tmp-PID-XXXX`` with PID gone; :func:`lmlab.outputs.remove_stale_temps`)."""

    remove_stale_temps(root, r"step_\d+")


# --- loading for training -------------------------------------------------------------------


def load_training_state(ckpt: Path, optimizer: torch.optim.Optimizer | None, scaler: Any) -> None:
    """Load ``optimizer.pt`` with ``weights_only=True`` (plain tensors and containers only)."""
    f = ckpt / "optimizer.pt"
    try:
        blob = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{f}: cannot read optimizer state ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(blob, dict) or "optimizer" not in blob:
        raise CheckpointError(f"{f}: not an lmlab optimizer state")
    try:
        if optimizer is not None and blob["optimizer"] is not None:
            optimizer.load_state_dict(blob["optimizer"])
        if scaler is not None and scaler.is_enabled() and blob.get("scaler"):
            scaler.load_state_dict(blob["scaler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{f}: optimizer state does not fit this model ({e})") from None
