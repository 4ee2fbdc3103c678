"""Run reports: the loss-curve plot and report.md, built from a run folder's files.

Everything here reads what training already wrote (config.toml, metrics.jsonl, samples.md),
so a report can be rebuilt at any time without touching the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lmlab.io import atomic_write_text


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, imported when a plot is first drawn."""
    # lazy: matplotlib costs ~0.5 s to import, and the backend must be set before pyplot loads
    import matplotlib  # noqa: PLC0415 (see above)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (see above)

    return plt


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl as a list of dicts; a torn last line (crash) is ignored."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def loss_series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, int | float) and "step" in r:
            steps.append(int(r["step"]))
            values.append(float(v))
    return steps, values


def plot_losses(run_dir: Path, out: Path | None = None, title: str | None = None) -> Path | None:
    """Write loss.png (train and val loss against step); None when there is nothing to plot."""
    rows = read_metrics(run_dir)
    ts, tl = loss_series(rows, "train_loss")
    vs, vl = loss_series(rows, "val_loss")
    if not ts and not vs:
        return None
    plt = pyplot()
    out = Path(out) if out else Path(run_dir) / "loss.png"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if ts:
        ax.plot(
            ts,
            [v if math.isfinite(v) else float("nan") for v in tl],
            label="train",
            lw=1.0,
            alpha=0.8,
        )
    if vs:
        ax.plot(vs, vl, label="val", lw=1.8, marker="o", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of dicts (columns: the union of keys, in order)."""
    if not rows:
        return "(none)\n"
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    run_dir: Path, sections: dict[str, str] | None = None, title: str | None = None
) -> Path:
    """Write report.md: config, loss plot, final metrics, extra sections, samples."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    plot = plot_losses(run_dir)
    parts = [f"# {title or 'Run report: ' + run_dir.name}\n"]
    _, tl = loss_series(rows, "train_loss")
    vs, vl = loss_series(rows, "val_loss")
    summary = {}
    if rows:
        summary["steps"] = max(int(r.get("step", 0)) for r in rows)
    if tl:
        summary["final train loss"] = tl[-1]
    if vl:
        summary["final val loss"] = vl[-1]
        finite = [v for v in vl if math.isfinite(v)]
        if finite:
            summary["best val loss"] = min(finite)
            summary["best val perplexity"] = math.exp(min(min(finite), 50.0))
    if summary:
        parts.append("## Summary\n\n" + markdown_table([summary]))
    if plot is not None:
        parts.append(f"## Loss\n\n![loss curve]({plot.name})\n")
    for name, body in (sections or {}).items():
        parts.append(f"## {name}\n\n{body.rstrip()}\n")
    cfg = run_dir / "config.toml"
    if cfg.is_file():
        parts.append(
            "## Config\n\n```toml\n" + cfg.read_text(encoding="utf-8").rstrip() + "\n```\n"
        )
    samples = run_dir / "samples.md"
    if samples.is_file():
        text = samples.read_text(encoding="utf-8")
        # the last eval's samples are the ones worth reading
        last = text.rsplit("\n## ", 1)
        body = ("## " + last[1]) if len(last) == 2 else text
        parts.append("## Samples (last evaluation)\n\n" + body.strip().lstrip("#").strip() + "\n")
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(parts))
    return out
