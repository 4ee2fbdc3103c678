"""One results row per run folder, and the tables (Markdown and CSV) built from the rows.

Everything is read from what training wrote (``config.toml``, ``metrics.jsonl``,
``result.json``), so a table can be rebuilt at any time, for a sweep or for runs that
already exist (``lmlab compare``). Columns:

- ``params``: parameters of the model (accounting, or ``result.json``);
- ``tokens``/``steps``: trained so far; ``flops``: training FLOPs, ``tokens`` x 3 x the
  forward matmul FLOPs per token of :mod:`lmlab.accounting`;
- ``final_val_loss``/``best_val_loss`` (nats per token), ``perplexity`` (exp of the final
  val loss), ``bits_per_byte`` (at the final eval; comparable across tokenizers);
- ``tok_per_s``: median training throughput over the logged steps; ``wall_s``: the run's
  wall time including evals;
- ``status``: ok | diverged | failed | partial (stopped early by a crash or Ctrl-C) |
  missing (no metrics at all).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import tomllib
from pathlib import Path
from typing import Any

from lmlab.accounting import count_params, training_flops_per_token
from lmlab.config import from_dict
from lmlab.io import atomic_write_text
from lmlab.report import markdown_table, read_metrics
from lmlab.runs.plan import read_result

METRIC_COLUMNS = [
    "params",
    "steps",
    "tokens",
    "flops",
    "final_val_loss",
    "best_val_loss",
    "perplexity",
    "bits_per_byte",
    "tok_per_s",
    "wall_s",
    "status",
]

DONE_REASONS = ("max_steps", "early_stop", "time_budget", "diverged")


def read_config_dict(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The run's config.toml as nested dicts ({} when missing or unreadable)."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def is_finished(run_dir: Path) -> bool:
    """True when training ended by itself (max steps, early stop, time budget or divergence)."""
    res = read_result(run_dir)
    return res is not None and res.get("stop_reason") in DONE_REASONS


def _finite(v: Any) -> float | None:
    return (
        float(v)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        else None
    )


def _model_numbers(cfg: dict[str, Any]) -> tuple[int | None, float | None]:
    """(params, training FLOPs per token) from a config dict via accounting; None if unknown."""
    try:
        c = from_dict({k: v for k, v in cfg.items() if k == "model"})
        if c.model.vocab_size <= 0:
            return None, None
        return int(count_params(c.model)["total"]), float(training_flops_per_token(c.model))
    except Exception:  # a config from another version: leave the columns empty
        return None, None


def run_row(run_dir: Path) -> dict[str, Any]:
    """The metrics columns (see the module docstring) for one run folder."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    cfg = read_config_dict(run_dir)
    result = read_result(run_dir)
    params, fpt = _model_numbers(cfg)
    train_recs = [r for r in rows if "train_loss" in r]
    val_recs = [r for r in rows if "val_loss" in r]
    steps = max((int(r.get("step", 0)) for r in rows), default=0)
    tokens = max((int(r.get("tokens", 0)) for r in train_recs), default=0)
    if result:
        steps = int(result.get("steps") or steps)
        tokens = int(result.get("tokens") or tokens)
        params = params or result.get("params")
    vals = [_finite(r.get("val_loss")) for r in val_recs]
    finite_vals = [v for v in vals if v is not None]
    final_val = vals[-1] if vals else None
    bpb = _finite(val_recs[-1].get("bits_per_byte")) if val_recs else None
    rates = [_finite(r.get("tok_per_s")) for r in train_recs[1:] or train_recs]
    rates = [r for r in rates if r]
    wall = _finite(result.get("wall_time_s")) if result else None
    if wall is None and rows:
        wall = max((_finite(r.get("elapsed")) or 0.0 for r in rows), default=None)
    diverged = bool(result and result.get("diverged")) or any(r.get("diverged") for r in rows)
    if not result and train_recs and train_recs[-1].get("train_loss") is None:
        diverged = True  # a non-finite loss is written as null
    if diverged:
        status = "diverged"
    elif result and result.get("stop_reason") in DONE_REASONS:
        status = "ok"
    elif rows:
        status = "partial"
    else:
        status = "missing"
    return {
        "params": params,
        "steps": steps,
        "tokens": tokens,
        "flops": tokens * fpt if fpt and tokens else None,
        "final_val_loss": final_val,
        "best_val_loss": min(finite_vals) if finite_vals else None,
        "perplexity": math.exp(final_val) if final_val is not None and final_val < 700 else None,
        "bits_per_byte": bpb,
        "tok_per_s": statistics.median(rates) if rates else None,
        "wall_s": wall,
        "status": status,
    }


def val_curve(run_dir: Path) -> dict[str, list[float]]:
    """The run's val losses with their step, tokens and training FLOPs (same length lists)."""
    rows = read_metrics(run_dir)
    cfg = read_config_dict(run_dir)
    _, fpt = _model_numbers(cfg)
    per_step = None
    for r in rows:
        if r.get("tokens") and r.get("step"):
            per_step = int(r["tokens"]) / int(r["step"])
            break
    out: dict[str, list[float]] = {"step": [], "tokens": [], "flops": [], "val_loss": []}
    for r in rows:
        v = _finite(r.get("val_loss"))
        if v is None or "step" not in r:
            continue
        s = int(r["step"])
        out["step"].append(s)
        out["tokens"].append(s * per_step if per_step else math.nan)
        out["flops"].append(s * per_step * fpt if per_step and fpt else math.nan)
        out["val_loss"].append(v)
    return out


# --- tables -------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 1_000_000:
        return f"{v:.3g}"
    return str(v)


def table_markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    shown = [{c: _cell(r.get(c)) or "-" for c in columns} for r in rows]
    return markdown_table(shown, columns)


def table_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    return buf.getvalue()


def write_tables(
    rows: list[dict[str, Any]], columns: list[str], out_dir: Path
) -> tuple[Path, Path]:
    """results.csv (full precision) and results_table.md (rounded); returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "results.csv"
    md_path = out_dir / "results_table.md"
    atomic_write_text(csv_path, table_csv(rows, columns))
    atomic_write_text(md_path, table_markdown(rows, columns))
    return md_path, csv_path


def differing_config_keys(
    configs: list[dict[str, dict[str, Any]]], skip_sections: tuple[str, ...] = ("log",)
) -> list[str]:
    """``section.key`` names whose value differs between configs (paths of outputs excluded)."""
    keys: list[str] = []
    for c in configs:
        for section, body in c.items():
            if section in skip_sections or not isinstance(body, dict):
                continue
            keys += [f"{section}.{k}" for k in body if f"{section}.{k}" not in keys]
    ignore = {"train.out"}
    out = []
    for k in keys:
        if k in ignore:
            continue
        section, name = k.split(".", 1)
        values = {repr(c.get(section, {}).get(name)) for c in configs}
        if len(values) > 1:
            out.append(k)
    return out


def config_value(cfg: dict[str, dict[str, Any]], key: str) -> Any:
    section, name = key.split(".", 1)
    return cfg.get(section, {}).get(name)
