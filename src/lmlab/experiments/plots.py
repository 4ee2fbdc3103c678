"""Plots for sweeps and comparisons: overlaid val-loss curves, and a summary metric
against the swept value (a line per series, log x for learning rates and wide ranges, bars
when the swept value is not a number).

Where the rows or curves carry an interval over seeds (``<metric>_lo``/``_hi`` columns,
``val_lo``/``val_hi`` curve lists, from :mod:`lmlab.experiments.seeds`), the plots draw it:
a shaded band around each line, an error bar on each bar.

Each function writes one PNG atomically and returns its path, or None when there is
nothing to draw. matplotlib is imported inside (Agg backend), never at import time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lmlab.report import pyplot

CURVE_X_LABELS = {"step": "step", "tokens": "tokens seen", "flops": "training FLOPs (accounting)"}
METRIC_LABELS = {
    "final_val_loss": "final val loss (nats/token)",
    "best_val_loss": "best val loss (nats/token)",
    "bits_per_byte": "val bits per byte",
    "perplexity": "val perplexity",
}


def _save(fig: Any, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    pyplot().close(fig)
    tmp.replace(out)
    return out


def plot_curves(
    curves: list[tuple[str, dict[str, list[float]]]], out: Path, x: str = "step", title: str = ""
) -> Path | None:
    """Val loss against ``x`` (step | tokens | flops), one line per (label, curve)."""
    drawable = [(label, c) for label, c in curves if c.get("val_loss")]
    if not drawable:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for label, c in drawable:
        xs = c[x]
        pts = [(a, b) for a, b in zip(xs, c["val_loss"], strict=True) if math.isfinite(a)]
        if not pts:
            continue
        line = ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], marker="o", ms=2.5, lw=1.4, label=label
        )
        if c.get("val_lo") and c.get("val_hi"):
            band = [
                (a, lo, hi)
                for a, lo, hi in zip(xs, c["val_lo"], c["val_hi"], strict=True)
                if math.isfinite(a)
            ]
            ax.fill_between(
                [b[0] for b in band],
                [b[1] for b in band],
                [b[2] for b in band],
                color=line[0].get_color(),
                alpha=0.2,
                lw=0,
            )
    if x in ("tokens", "flops"):
        ax.set_xscale("log")
    ax.set_xlabel(CURVE_X_LABELS.get(x, x))
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title(title or "validation loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2 if len(drawable) > 8 else 1)
    fig.tight_layout()
    return _save(fig, out)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def wants_log_x(key: str, values: list[float]) -> bool:
    """Log axis for learning rates, budgets/sizes, and any positive range spanning >= 10x."""
    if key.endswith("lr") or key in ("flops", "tokens", "params") or key.startswith("budget_"):
        return all(v > 0 for v in values)
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) >= 10


def _bar_chart(
    plt: Any, rows: list[dict[str, Any]], have: list[dict[str, Any]], metric: str, top: float
) -> tuple[Any, Any]:
    """A bar per row (labelled by its ``point``), intervals as error bars, failures in red."""
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.5), dpi=110)
    labels = [str(r.get("point") or r.get("run") or i) for i, r in enumerate(rows)]
    values = [r[metric] if _is_number(r.get(metric)) else 0.0 for r in rows]
    err = None
    if any(_is_number(r.get(f"{metric}_lo")) for r in rows):
        err = [
            [
                v - r[f"{metric}_lo"] if _is_number(r.get(f"{metric}_lo")) else 0.0
                for v, r in zip(values, rows, strict=True)
            ],
            [
                r[f"{metric}_hi"] - v if _is_number(r.get(f"{metric}_hi")) else 0.0
                for v, r in zip(values, rows, strict=True)
            ],
        ]
    lo = min(r[metric] for r in have)
    left = max(0.0, lo - 0.25 * (top - lo + 0.1))
    bars = ax.barh(range(len(rows)), values, color="tab:blue", xerr=err, capsize=3)
    for i, r in enumerate(rows):
        text = f"{r[metric]:.4f}" if _is_number(r.get(metric)) else str(r.get("status", "n/a"))
        at = r.get(f"{metric}_hi") if _is_number(r.get(f"{metric}_hi")) else values[i]
        if not _is_number(r.get(metric)):
            at = left  # a run with no value: its status at the axis' left edge, in view
        ax.text(at, i, " " + text, va="center", fontsize=8)
        if not _is_number(r.get(metric)):
            bars[i].set_color("tab:red")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(METRIC_LABELS.get(metric, metric))
    ax.set_xlim(left, top + 0.3 * (top - lo + 0.1))
    return fig, ax


def _line_chart(
    plt: Any,
    rows: list[dict[str, Any]],
    x: str,
    metric: str,
    series: str | None,
    log_x: bool | None,
    top: float,
) -> tuple[Any, Any]:
    """A line per ``series`` against ``x``, intervals as bands, failures as an x at the top."""
    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=110)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get(series) or "") if series else "", []).append(r)
    for name, members in groups.items():
        members = sorted(members, key=lambda r: r[x])
        ok = [r for r in members if _is_number(r.get(metric))]
        line = ax.plot(
            [r[x] for r in ok], [r[metric] for r in ok], marker="o", lw=1.5, label=name or None
        )
        banded = [r for r in ok if _is_number(r.get(f"{metric}_lo"))]
        if banded and line:
            ax.fill_between(
                [r[x] for r in banded],
                [r[f"{metric}_lo"] for r in banded],
                [r[f"{metric}_hi"] for r in banded],
                color=line[0].get_color(),
                alpha=0.2,
                lw=0,
            )
        bad = [r for r in members if not _is_number(r.get(metric))]
        if bad:
            color = line[0].get_color() if line else "tab:red"
            ax.scatter(
                [r[x] for r in bad],
                [top] * len(bad),
                marker="x",
                s=60,
                color=color,
                label=f"{name + ': ' if name else ''}diverged/failed",
            )
    xs = sorted({r[x] for r in rows})
    if log_x if log_x is not None else wants_log_x(x, xs):
        ax.set_xscale("log")
    if len(xs) <= 8 and x not in ("flops", "tokens", "params"):
        # a tick at each swept value, written as in the sweep file (0.003, 64)
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel(CURVE_X_LABELS.get(x, x))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(alpha=0.3, which="both")
    if any(groups) or any(not _is_number(r.get(metric)) for r in rows):
        ax.legend(fontsize=8)
    return fig, ax


def plot_summary(
    rows: list[dict[str, Any]],
    x: str | None,
    out: Path,
    metric: str = "final_val_loss",
    series: str | None = "series",
    log_x: bool | None = None,
    title: str = "",
) -> Path | None:
    """``metric`` of each row against column ``x``; a line per value of column ``series``.

    Rows whose metric is missing (diverged or failed runs) are marked with an x at the top
    of the axis so the reader sees them. With ``x`` None or not numeric: a bar per row,
    labelled by its ``point`` column.
    """
    have = [r for r in rows if _is_number(r.get(metric))]
    if not have:
        return None
    plt = pyplot()
    numeric = x is not None and all(_is_number(r.get(x)) for r in rows)
    # the top of the axis clears the intervals' upper ends too
    top = max(max(r[metric], r.get(f"{metric}_hi") or r[metric]) for r in have)
    if not numeric:
        fig, ax = _bar_chart(plt, rows, have, metric, top)
    else:
        fig, ax = _line_chart(plt, rows, x, metric, series, log_x, top)
    ax.set_title(title or f"{metric} against {x or 'run'}")
    fig.tight_layout()
    return _save(fig, out)
