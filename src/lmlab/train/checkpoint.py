"""Checkpoints: write them atomically, find the newest, load them for training or inference.

Layout inside a run folder::

    checkpoints/step_000500/model.safetensors   weights (safetensors: loading runs no code)
                           optimizer.pt         {"optimizer": ..., "scaler": ...}, tensors only
                           state.json           step, tokens, RNG states, loader and guard state
                           config.toml          the resolved config of the run
    checkpoints/latest                          the name of the newest complete checkpoint

A checkpoint is written into a temporary sibling folder and renamed into place, then
``latest`` is rewritten atomically, so a crash at any moment leaves the previous checkpoint
intact and ``latest`` naming a complete one. Older checkpoints beyond the newest ``keep`` are
deleted, except the one with the best validation loss.
"""

from __future__ import annotations

import base64
import contextlib
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.config import Config, ModelConfig, load_config, save_config
from lmlab.errors import CheckpointError, LmlabError
from lmlab.io import atomic_dir, atomic_write_text, read_json, write_json

_STEP_RE = re.compile(r"^step_(\d+)$")
FILES = ("model.safetensors", "optimizer.pt", "state.json", "config.toml")
# model settings that may differ between a checkpoint and the config resuming from it
_MODEL_FREE = {"dropout", "init_std"}


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


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
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
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


# --- finding checkpoints ------------------------------------------------------------------------


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete ``step_*`` folders under ``root`` (all files present), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and all((p / f).is_file() for f in FILES):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (-> its ``latest`` checkpoint) or a checkpoint folder -> checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint folder")
    if (path / "state.json").is_file() or (path / "model.safetensors").is_file():
        _check_files(path)
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = root / "latest"
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        target = root / name
        if _STEP_RE.match(name) and target.is_dir():
            _check_files(target)
            return target
    # `latest` missing or stale (e.g. folder deleted by hand): newest complete one
    found = complete_checkpoints(root)
    if not found:
        raise CheckpointError(f"{path}: no checkpoint found (expected {root}/step_NNNNNN/)")
    return found[-1]


def _check_files(ckpt: Path) -> None:
    for f in FILES:
        if not (ckpt / f).is_file():
            raise CheckpointError(f"{ckpt / f}: missing from checkpoint")


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
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    name = checkpoint_name(step)
    final = root / name
    try:
        with atomic_dir(final, "checkpoint") as tmp:
            save_model(unwrap(model), str(tmp / "model.safetensors"))
            torch.save(
                {
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
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
    from lmlab.outputs import remove_stale_temps

    remove_stale_temps(root, r"step_\d+")


# --- loading ----------------------------------------------------------------------------------


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        state = read_json(ckpt / "state.json")
    except LmlabError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{ckpt / 'state.json'}: not a checkpoint state (no 'step')")
    return state


def read_config(ckpt: Path) -> Config:
    """The checkpoint's config; its paths follow the run folder if the project was moved."""
    from lmlab.runs import relocate, run_folder_of

    try:
        cfg = load_config(ckpt / "config.toml")
    except LmlabError as e:
        raise CheckpointError(f"{ckpt / 'config.toml'}: {e}") from None
    run = run_folder_of(ckpt)
    return relocate(cfg, run) if run is not None else cfg


def load_weights(model: torch.nn.Module, ckpt: Path, device: str | torch.device = "cpu") -> None:
    """Load ``model.safetensors`` into ``model`` (CheckpointError naming the file if corrupt)."""
    from safetensors.torch import load_model

    f = ckpt / "model.safetensors"
    try:
        missing, unexpected = load_model(unwrap(model), str(f), strict=False, device=str(device))
    except Exception as e:  # safetensors raises its own error types for bad headers/truncation
        raise CheckpointError(f"{f}: cannot read weights ({type(e).__name__}: {e})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{f}: weights do not fit the model (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )


def load_training_state(ckpt: Path, optimizer: torch.optim.Optimizer | None, scaler: Any) -> None:
    """Load ``optimizer.pt`` with ``weights_only=True`` (plain tensors and containers only)."""
    f = ckpt / "optimizer.pt"
    try:
        blob = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{f}: cannot read optimizer state ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict) or "optimizer" not in blob:
        raise CheckpointError(f"{f}: not an lmlab optimizer state")
    try:
        if optimizer is not None and blob["optimizer"] is not None:
            optimizer.load_state_dict(blob["optimizer"])
        if scaler is not None and scaler.is_enabled() and blob.get("scaler"):
            scaler.load_state_dict(blob["scaler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{f}: optimizer state does not fit this model ({e})") from None


def model_differences(saved: ModelConfig, current: ModelConfig) -> list[str]:
    """``model.key: checkpoint X, config Y`` for every architecture setting that differs."""
    out = []
    for key, value in vars(saved).items():
        if key in _MODEL_FREE:
            continue
        now = getattr(current, key)
        if now != value:
            out.append(f"model.{key}: checkpoint {value!r}, config {now!r}")
    return out


def load_model(path: str | Path, device: str | torch.device = "cpu", encdec_ok: bool = False) -> tuple[torch.nn.Module, Config, Path]:
    """Build the model from a checkpoint's config.toml and load its weights (eval mode).

    An encoder-decoder run is refused unless ``encdec_ok``: eval, sample and chat feed token
    ids alone, and it needs source text for its encoder.
    """
    from lmlab.model import build_model

    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt)
    if cfg.model.arch == "encdec" and not encdec_ok:
        raise CheckpointError(f"{ckpt}: an encoder-decoder run (model.arch=encdec) reads source text; this command "
                              "takes decoder-only runs (its held-out loss is in metrics.jsonl, its parse rate in encdec.json)")
    model = build_model(cfg.model)
    load_weights(model, ckpt, "cpu")
    model.to(device)
    model.eval()
    return model, cfg, ckpt


def find_tokenizer(ckpt: Path, cfg: Config) -> Path | None:
    """The run's own tokenizer copy, else data.tokenizer, else the one the dataset names."""
    candidates = [ckpt.parent.parent / "tokenizer"]
    if cfg.data.tokenizer:
        candidates.append(Path(cfg.data.tokenizer))
    if cfg.data.path:
        with contextlib.suppress(LmlabError, OSError):
            meta = read_json(Path(cfg.data.path) / "meta.json")
            if isinstance(meta, dict) and meta.get("tokenizer"):
                candidates.append(Path(meta["tokenizer"]))
    for c in candidates:
        if c.exists():
            return c
    return None


def load_model_for_inference(path: str | Path, device: str | torch.device = "cpu", decode_batch: int = 0):
    """``(model, cfg, tokenizer)`` from a run folder (its ``latest``) or a checkpoint folder.

    The model is rebuilt from the saved config.toml, weights come from safetensors and nothing
    in the checkpoint is executed. ``decode_batch`` > 0: the model will generate that many
    sequences at a time, so on the CPU its linear weights take the layout that decodes faster
    here (:func:`lmlab.model.layout.pick_decode_layout`). Raises CheckpointError when files are
    missing or corrupt, or when no tokenizer can be found for the run.
    """
    from lmlab.tokenizer import load_tokenizer

    model, cfg, ckpt = load_model(path, device)
    if decode_batch > 0:
        from lmlab.model.layout import pick_decode_layout

        pick_decode_layout(model, decode_batch)
    tok_path = find_tokenizer(ckpt, cfg)
    if tok_path is None:
        raise CheckpointError(f"{ckpt}: no tokenizer found (run/tokenizer, data.tokenizer or the dataset's meta.json)")
    try:
        tokenizer = load_tokenizer(tok_path)
    except LmlabError as e:
        raise CheckpointError(f"{tok_path}: cannot load the run's tokenizer ({e})") from None
    return model, cfg, tokenizer
