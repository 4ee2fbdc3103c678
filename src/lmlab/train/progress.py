"""Where training progress goes: metrics.jsonl, a tqdm bar with one step line, optional sinks.

``metrics.jsonl`` gets one JSON object per logged step (``step``, ``train_loss``, ``lr``,
``grad_norm``, ``tok_per_s``, ``elapsed``, ...) and one per evaluation (``step``,
``val_loss``, ...). Non-finite numbers are written as ``null`` so the file stays valid JSON.
TensorBoard (``log.tensorboard``) and Weights & Biases (``log.wandb_project``) are imported
only when asked for, with a clear error when not installed. Only rank 0 creates a Logger.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmlab.config import Config, to_dict
from lmlab.errors import ConfigError
from lmlab.io import atomic_write_text, open_append
from lmlab.notices import progress_on_terminal


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_step_line(rec: dict[str, Any], max_steps: int) -> str:
    """``step 100/2000 | loss 2.3456 | lr 1.00e-03 | grad 0.85 | 12.3k tok/s | mfu 31.0% | eta 1m37s``."""
    parts = [
        f"step {rec['step']}/{max_steps}",
        f"loss {rec['train_loss']:.4f}",
        f"lr {rec['lr']:.2e}",
    ]
    if rec.get("grad_norm") is not None:
        parts.append(f"grad {rec['grad_norm']:.3f}")
    tps = rec.get("tok_per_s") or 0.0
    parts.append(f"{tps / 1e3:.1f}k tok/s" if tps >= 1e3 else f"{tps:.0f} tok/s")
    if rec.get("mfu") is not None:
        parts.append(f"mfu {100 * rec['mfu']:.1f}%")
    if rec.get("max_mem_gb") is not None:
        parts.append(f"mem {rec['max_mem_gb']:.1f} GB")
    if rec.get("ms_per_step") is not None:
        parts.append(f"{rec['ms_per_step']:.1f} ms/it")
    if rec.get("skipped"):
        parts.append(f"skipped {rec['skipped']}")
    if rec.get("eta_s") is not None:
        parts.append(f"eta {format_duration(rec['eta_s'])}")
    return " | ".join(parts)


class Logger:
    """Rank 0's progress output for one run."""

    def __init__(self, run_dir: Path, cfg: Config, start_step: int, resume: bool):
        self.run_dir = run_dir
        self.max_steps = cfg.train.max_steps
        self.metrics_path = run_dir / "metrics.jsonl"
        if resume:
            truncate_metrics(self.metrics_path, start_step)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        self._file = open_append(self.metrics_path)  # never through a link; closed in close()
        self.bar = None
        # a bar only on a terminal: in a log file its carriage-return frames are thousands of lines
        if cfg.log.progress and cfg.train.max_steps > start_step and progress_on_terminal():
            self.bar = tqdm(
                total=cfg.train.max_steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                leave=False,
            )
        self.tb = None
        if cfg.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (optional extra: lmlab[logging])
            except ImportError:
                raise ConfigError(
                    "log.tensorboard: the tensorboard package is not installed (pip install 'lmlab[logging]')"
                ) from None
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.wandb = None
        if cfg.log.wandb_project:
            try:
                import wandb  # noqa: PLC0415 (optional: pip install wandb)
            except ImportError:
                raise ConfigError(
                    "log.wandb_project: the wandb package is not installed (pip install wandb)"
                ) from None
            self.wandb = wandb.init(
                project=cfg.log.wandb_project,
                name=run_dir.name,
                dir=str(run_dir),
                config=to_dict(cfg),
                resume="allow",
            )

    def write(self, rec: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _clean(v) for k, v in rec.items()}) + "\n")
        self._file.flush()
        step = rec["step"]
        scalars = {
            k: v
            for k, v in rec.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        }
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def advance(self, n: int = 1, loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if loss is not None:
                self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)

    def train_step(self, rec: dict[str, Any]) -> None:
        self.write(rec)
        self.print(format_step_line(rec, self.max_steps))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step`` (written by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line)

    atomic_write_text(path, "".join(k + "\n" for k in kept))
