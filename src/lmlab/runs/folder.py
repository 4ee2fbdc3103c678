"""A run folder: claim it for a run, record its paths so it works from anywhere, compare configs.

1. :func:`open_run_dir` is the guard every trainer calls before writing a run folder: the
   folder must be absent, empty or an lmlab run (:mod:`lmlab.outputs`); one that holds a run
   is continued only with ``resume`` and started over only with ``force`` (which removes
   lmlab's own run files and nothing else); a symbolic link where lmlab writes is refused.
   It writes the marker ``meta.json`` with the run folder's absolute path.
2. :func:`resolve_run_config` is what the trainer saves: ``model.vocab_size`` taken from the
   dataset and every path made absolute, so ``config.toml`` reads the same from any working
   directory. :func:`relocate` maps those paths into a project folder that was moved whole
   (a path recorded inside the old location of the run's project, missing now, is looked up
   at the same place relative to the run folder's new location).
3. :func:`same_run_config` compares a run's saved config with a config resolved the same way
   (the recipe says ``vocab_size = 0``, the run 66), logging and device aside;
   :func:`lmlab.runs.plan.plan_run` builds on it to skip, resume or start a run.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

from lmlab.config import Config, load_config, resolve_vocab_size, to_dict
from lmlab.data.shards import read_meta
from lmlab.errors import CheckpointError, LmlabError
from lmlab.outputs import check_output, read_marker, refuse_links, write_marker
from lmlab.tokenizer import load_tokenizer

# what lmlab writes into a run folder (links there are refused; --force removes the first group)
RUN_RESULTS = (
    "checkpoints",
    "metrics.jsonl",
    "samples.md",
    "result.json",
    "report.md",
    "loss.png",
    "eval.json",
    "precision.json",
)
RUN_FILES = (
    *RUN_RESULTS,
    "config.toml",
    "tokenizer",
    "meta.json",
    "sft.json",
    "template.json",
    "mined.jsonl",
    "encdec.json",
    "train.log",
    "error.txt",
    "stage.json",
    "sweep_point.toml",
)


def holds_run(run_dir: Path) -> bool:
    """True when ``run_dir`` holds training results (checkpoints or metrics)."""
    run_dir = Path(run_dir)
    return (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file()


def _steps(run_dir: Path) -> str:
    latest = run_dir / "checkpoints" / "latest"
    try:
        return f" (checkpoint {latest.read_text(encoding='utf-8').strip()})"
    except OSError:
        return ""


def check_run_dir(run_dir: Path, *, resume: bool, force: bool) -> Path:
    """What :func:`open_run_dir` refuses, refused without touching anything: trainers call it
    before building a model or measuring, so a refusal comes first and costs nothing."""

    path = check_output(run_dir, "run", whole=False)
    refuse_links(path, RUN_FILES)
    if holds_run(path) and not resume and not force:
        raise CheckpointError(
            f"{run_dir}: holds a run{_steps(path)}; pass --resume to continue it "
            "or --force to start it over (its checkpoints and metrics are then deleted)"
        )
    return path


def open_run_dir(run_dir: Path, *, resume: bool, force: bool, log=print) -> Path:
    """Claim ``run_dir`` for a run (see the module docstring); return it, absolute."""

    path = check_run_dir(run_dir, resume=resume, force=force)
    if holds_run(path) and not resume:
        log(
            f"{run_dir}: starting the run over: removing its checkpoints and metrics (other files stay)"
        )
        for name in RUN_RESULTS:
            p = path / name
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    write_marker(path, "run", run_dir=str(path))
    return path


# --- paths ------------------------------------------------------------------------------------


def _abs(p: str) -> str:
    return os.path.abspath(os.path.expanduser(p)) if p else p


def _map_paths(cfg: Config, fn) -> None:
    """Apply ``fn`` to every path a run reads back (data, tokenizer, mix, run, init, encoder)."""
    d, t = cfg.data, cfg.train
    d.path, d.tokenizer = fn(d.path), fn(d.tokenizer)
    mix = []
    for item in d.mix:
        path, sep, frac = item.rpartition(":")
        mix.append(f"{fn(path)}{sep}{frac}" if sep and path else item)
    d.mix = mix
    t.out, t.init_from = fn(t.out), _map_init(t.init_from, fn)
    enc = getattr(cfg.model, "encoder", "")
    if enc and (
        os.path.isabs(enc) or Path(os.path.expanduser(enc)).exists()
    ):  # a local folder, not a hub name
        cfg.model.encoder = fn(enc)


def _map_init(init: str, fn) -> str:
    """``train.init_from``: a run path, or ``hf:FOLDER`` (mapped) / ``hf:HUB_NAME`` (kept)."""
    if init.startswith("hf:"):
        rest = init[len("hf:") :]
        local = os.path.isabs(rest) or Path(os.path.expanduser(rest)).exists()
        return "hf:" + fn(rest) if local and rest else init
    return fn(init)


def absolutize(cfg: Config) -> Config:
    """Make the run's paths absolute (in place), as seen from the working directory now."""
    _map_paths(cfg, _abs)
    return cfg


def resolve_run_config(cfg: Config, meta: dict[str, Any]) -> Config:
    """The config a run saves (in place): vocab size from the dataset ``meta``, absolute paths."""
    resolve_vocab_size(cfg.model, meta["vocab_size"])
    absolutize(cfg)
    cfg.validate()
    return cfg


def recorded_run_dir(run_dir: Path) -> str | None:

    rec = read_marker(Path(run_dir)).get("run_dir")
    return rec if isinstance(rec, str) else None


def relocate(cfg: Config, run_dir: Path) -> Config:
    """Point ``cfg``'s missing paths into the run's project after it was moved (in place)."""
    was = recorded_run_dir(run_dir)
    now = _abs(str(run_dir))
    if not was or was == now:
        return cfg

    def move(p: str) -> str:
        if not p or not os.path.isabs(p) or os.path.exists(p):
            return p
        cand = os.path.normpath(os.path.join(now, os.path.relpath(p, was)))
        return cand if os.path.exists(cand) else p

    _map_paths(cfg, move)
    cfg.train.out = now
    return cfg


def run_folder_of(ckpt: Path) -> Path | None:
    """The run folder a checkpoint folder sits in (``RUN/checkpoints/step_N``), or None."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """``load_config``; a run folder's own config.toml is also relocated with the folder."""
    cfg = load_config(path, overrides)
    p = Path(path)
    if p.name == "config.toml" and recorded_run_dir(p.parent):
        relocate(cfg, p.parent)
    return cfg


# --- comparing -------------------------------------------------------------------------------


def expected_config(cfg: Config) -> Config | None:
    """``cfg`` resolved as the trainer will save it, or None when its dataset cannot be read."""

    out = copy.deepcopy(cfg)
    try:
        if out.data.path and out.model.arch != "encdec":
            meta = read_meta(out.data.path)
        elif (
            out.data.tokenizer and out.model.vocab_size == 0
        ):  # pairs: the decoder tokenizer's vocabulary
            meta = {"vocab_size": load_tokenizer(out.data.tokenizer).vocab_size}
        else:
            meta = {"vocab_size": out.model.vocab_size}
        return resolve_run_config(out, meta)
    except (LmlabError, OSError, KeyError):
        return None


def saved_config(run_dir: Path) -> Config | None:
    """The run's config.toml (relocated), or None when absent or unreadable."""

    p = Path(run_dir) / "config.toml"
    if not p.is_file():
        return None
    try:
        # a run written before paths were recorded absolute kept them relative to where it started
        return absolutize(relocate(load_config(p), Path(run_dir)))
    except (LmlabError, OSError):
        return None


# settings that change how a run is watched or where it runs, not what it learns: a run that
# differs only in them is the same run (a sweep point moved to another GPU resumes)
IGNORED_SECTIONS = ("log",)
IGNORED_KEYS = (("train", "device"),)


def comparable(cfg: Config) -> dict[str, Any]:
    """``cfg`` as a dict, without the settings that do not change what a run learns."""
    tree = to_dict(cfg)
    for section in IGNORED_SECTIONS:
        tree.pop(section, None)
    for section, key in IGNORED_KEYS:
        tree[section].pop(key, None)
    return tree


def same_run_config(run_dir: Path, cfg: Config) -> bool:
    """True when the run at ``run_dir`` was trained with ``cfg`` (resolved the same way,
    logging and device aside)."""
    saved, want = saved_config(run_dir), expected_config(cfg)
    return saved is not None and want is not None and comparable(saved) == comparable(want)


def config_differences(run_dir: Path, cfg: Config, limit: int = 3) -> list[str]:
    """``section.key: run X, now Y`` for the first keys where the run's config differs."""
    saved, want = saved_config(run_dir), expected_config(cfg)
    if saved is None or want is None:
        return []
    a, b = comparable(saved), comparable(want)
    out = []
    for section in b:
        sa, sb = a.get(section), b.get(section)
        if isinstance(sa, dict) and isinstance(sb, dict):
            out += [
                f"{section}.{k}: run {sa.get(k)!r}, now {v!r}"
                for k, v in sb.items()
                if sa.get(k) != v
            ]
        elif sa != sb:
            out.append(f"{section}: differs")
    return out[:limit]
