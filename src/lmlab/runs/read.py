"""Reading a run: find its checkpoint, read its state and config, load its model for inference.

Everything here only reads: eval, sample, chat, export and the planners use it, and the
trainer (:mod:`lmlab.train.checkpoint`, the writing half) shares it. Layout of a checkpoint::

    RUN/checkpoints/step_000500/model.safetensors   weights (safetensors: loading runs no code)
                               optimizer.pt         optimizer and scaler state (the trainer's)
                               state.json           step, tokens, RNG states, loader and guard state
                                                    (lmlab.runs.state.TrainState)
                               config.toml          the resolved config of the run
    RUN/checkpoints/latest                          the name of the newest complete checkpoint
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from lmlab.config import Config, ModelConfig, load_config
from lmlab.errors import CheckpointError, LmlabError
from lmlab.io import read_json
from lmlab.model import build_model
from lmlab.model.layout import pick_decode_layout
from lmlab.runs.folder import relocate, run_folder_of
from lmlab.runs.state import TrainState
from lmlab.tokenizer import load_tokenizer

STEP_RE = re.compile(r"^step_(\d+)$")
FILES = ("model.safetensors", "optimizer.pt", "state.json", "config.toml")
# model settings that may differ between a checkpoint and the config resuming from it
_MODEL_FREE = {"dropout", "init_std"}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# --- finding checkpoints ------------------------------------------------------------------------


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete ``step_*`` folders under ``root`` (all files present), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
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
        if STEP_RE.match(name) and target.is_dir():
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


# --- loading ----------------------------------------------------------------------------------


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        state = read_json(ckpt / "state.json")
    except LmlabError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{ckpt / 'state.json'}: not a checkpoint state (no 'step')")
    return state


def read_train_state(ckpt: Path) -> TrainState:
    """The checkpoint's state.json as a :class:`~lmlab.runs.state.TrainState` (what resume
    restores); CheckpointError naming the file when a key is missing or malformed."""
    return TrainState.from_state_dict(read_state(ckpt), ckpt / "state.json")


def read_config(ckpt: Path) -> Config:
    """The checkpoint's config; its paths follow the run folder if the project was moved."""
    try:
        cfg = load_config(ckpt / "config.toml")
    except LmlabError as e:
        raise CheckpointError(f"{ckpt / 'config.toml'}: {e}") from None
    run = run_folder_of(ckpt)
    return relocate(cfg, run) if run is not None else cfg


def load_weights(model: torch.nn.Module, ckpt: Path, device: str | torch.device = "cpu") -> None:
    """Load ``model.safetensors`` into ``model`` (CheckpointError naming the file if corrupt)."""
    f = ckpt / "model.safetensors"
    try:
        missing, unexpected = safetensors.torch.load_model(
            unwrap(model), str(f), strict=False, device=str(device)
        )
    except Exception as e:  # safetensors raises its own error types for bad headers/truncation
        raise CheckpointError(f"{f}: cannot read weights ({type(e).__name__}: {e})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{f}: weights do not fit the model (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )


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


def load_model(
    path: str | Path, device: str | torch.device = "cpu", encdec_ok: bool = False
) -> tuple[torch.nn.Module, Config, Path]:
    """Build the model from a checkpoint's config.toml and load its weights (eval mode).

    An encoder-decoder run is refused unless ``encdec_ok``: eval, sample and chat feed token
    ids alone, and it needs source text for its encoder.
    """

    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt)
    if cfg.model.arch == "encdec" and not encdec_ok:
        raise CheckpointError(
            f"{ckpt}: an encoder-decoder run (model.arch=encdec) reads source text; this command "
            "takes decoder-only runs (its held-out loss is in metrics.jsonl, its parse rate in encdec.json)"
        )
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


def load_model_for_inference(
    path: str | Path, device: str | torch.device = "cpu", decode_batch: int = 0
):
    """``(model, cfg, tokenizer)`` from a run folder (its ``latest``) or a checkpoint folder.

    The model is rebuilt from the saved config.toml, weights come from safetensors and nothing
    in the checkpoint is executed. ``decode_batch`` > 0: the model will generate that many
    sequences at a time, so on the CPU its linear weights take the layout that decodes faster
    here (:func:`lmlab.model.layout.pick_decode_layout`). Raises CheckpointError when files are
    missing or corrupt, or when no tokenizer can be found for the run.
    """

    model, cfg, ckpt = load_model(path, device)
    if decode_batch > 0:
        pick_decode_layout(model, decode_batch)
    tok_path = find_tokenizer(ckpt, cfg)
    if tok_path is None:
        raise CheckpointError(
            f"{ckpt}: no tokenizer found (run/tokenizer, data.tokenizer or the dataset's meta.json)"
        )
    try:
        tokenizer = load_tokenizer(tok_path)
    except LmlabError as e:
        raise CheckpointError(f"{tok_path}: cannot load the run's tokenizer ({e})") from None
    return model, cfg, tokenizer


def run_status(run_dir: Path) -> dict[str, Any] | None:
    """The newest complete checkpoint's state.json of a run, or None."""
    latest = Path(run_dir) / "checkpoints" / "latest"
    if not latest.is_file():
        return None
    ckpt = Path(run_dir) / "checkpoints" / latest.read_text(encoding="utf-8").strip()
    state = ckpt / "state.json"
    return read_json(state) if state.is_file() else None
