"""Several seeds per point: the mean and a 95% interval of each metric, and finding lines.

A sweep with ``seeds = N`` (or ``lmlab compare`` on runs that differ only in
``train.seed``) gives N rows per point. :func:`aggregate` folds them into one row per
point: ``<metric>`` becomes the mean over the seeds, with ``<metric>_lo`` and
``<metric>_hi`` beside it:

- N >= 5: the 95% t-interval of the mean, ``mean -/+ t(0.975, N-1) * sd / sqrt(N)``;
- 2 <= N < 5: the min and max over the seeds (a t-interval from 2-4 values is so wide, and
  so dependent on the normality assumption, that the range says more);
- N = 1: no interval (lo = hi = the value).

Two points whose intervals overlap are "not distinguishable at N seeds"
(:func:`finding_lines`). Overlap of two 95% intervals is a conservative test (two means
can differ at the 5% level while their intervals still overlap a little): a finding that
passes it is safe to call, one that fails it needs more seeds.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.experiments.results import table_csv, table_markdown
from lmlab.io import atomic_write_text

# metrics that get a mean and an interval; the other numeric columns are taken from the
# first seed when all seeds agree (params, steps, tokens, flops) or averaged (speed, time)
INTERVAL_METRICS = ("final_val_loss", "best_val_loss", "bits_per_byte", "perplexity")
MEAN_ONLY = ("tok_per_s", "wall_s")
SEED_SUFFIX = re.compile(r"__seed-\d+$")

# t(0.975, df) for df = 1..30 (two-sided 95%)
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
T_INTERVAL_FROM = 5  # seeds from which the interval is a t-interval rather than min-max


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    # Cornish-Fisher expansion around the normal quantile: below 1e-4 off from df 31 up
    z = 1.959963984540054
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values and a 95% interval (``kind``: t95 | min-max | single)."""

    mean: float
    lo: float
    hi: float
    n: int
    kind: str

    def overlaps(self, other: Interval) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def text(self, digits: int = 4) -> str:
        """``4.104 [4.091, 4.117]`` (just the mean for one seed)."""
        if self.n < 2:
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} [{self.lo:.{digits}g}, {self.hi:.{digits}g}]"


def interval_kind(n: int) -> str:
    return "single" if n < 2 else ("t95" if n >= T_INTERVAL_FROM else "min-max")


def describe_kind(n: int) -> str:
    """The sentence a table prints under itself to say what its brackets are."""
    kind = interval_kind(n)
    if kind == "t95":
        return f"mean over {n} seeds [95% t-interval of the mean]"
    if kind == "min-max":
        return f"mean over {n} seeds [min, max] (fewer than {T_INTERVAL_FROM} seeds: the range, not a t-interval)"
    return "one seed per point (no interval)"


def interval(values: list[float]) -> Interval | None:
    """Mean and 95% interval of the finite ``values`` (None when there are none)."""
    xs = [float(v) for v in values if _number(v)]
    if not xs:
        return None
    n = len(xs)
    mean = math.fsum(xs) / n
    kind = interval_kind(n)
    if kind == "single":
        return Interval(mean, mean, mean, 1, kind)
    if kind == "min-max":
        return Interval(mean, min(xs), max(xs), n, kind)
    half = t975(n - 1) * statistics.stdev(xs) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, kind)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _status(members: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in members:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    if list(counts) == ["ok"]:
        return "ok"
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def aggregate(
    groups: list[tuple[dict[str, Any], list[dict[str, Any]]]],
) -> list[dict[str, Any]]:
    """One row per group: its label columns, ``seeds``, and each metric's mean/lo/hi.

    ``groups`` pairs the columns that name a group (point, swept values) with the rows of
    its seeds. A metric's mean and interval are over the finished seeds (status ``ok``)
    where it is finite: a partial run's loss is not the point's, a diverged one has none.
    ``seeds`` counts the seeds in ``final_val_loss``'s interval; ``status`` is ``ok`` or
    the count of each status (``2 ok, 1 partial``).
    """
    out = []
    for label, members in groups:
        row: dict[str, Any] = dict(label)
        done = [r for r in members if r.get("status") == "ok"]
        for key in ("params", "steps", "tokens", "flops"):
            values = {r.get(key) for r in done or members}
            row[key] = (done or members)[0].get(key) if len(values) == 1 else None
        for key in INTERVAL_METRICS:
            iv = interval([r.get(key) for r in done])
            row[key] = iv.mean if iv else None
            row[f"{key}_lo"] = iv.lo if iv else None
            row[f"{key}_hi"] = iv.hi if iv else None
            if key == "final_val_loss":
                row["seeds"] = iv.n if iv else 0
        for key in MEAN_ONLY:
            iv = interval([r.get(key) for r in done])
            row[key] = iv.mean if iv else None
        row["runs"] = len(members)
        row["status"] = _status(members)
        out.append(row)
    return out


def row_interval(row: dict[str, Any], metric: str) -> Interval | None:
    """The interval :func:`aggregate` stored in ``row`` for ``metric``."""
    mean, lo, hi, n = (
        row.get(metric),
        row.get(f"{metric}_lo"),
        row.get(f"{metric}_hi"),
        row.get("seeds", 1),
    )
    if not (_number(mean) and _number(lo) and _number(hi)):
        return None
    return Interval(float(mean), float(lo), float(hi), int(n or 1), interval_kind(int(n or 1)))


def aggregate_columns(label_columns: list[str]) -> list[str]:
    """Column order of an aggregated table (CSV: with the _lo/_hi columns)."""
    cols = [*label_columns, "seeds", "params", "steps", "tokens", "flops"]
    for key in INTERVAL_METRICS:
        cols += [key, f"{key}_lo", f"{key}_hi"]
    return [*cols, *MEAN_ONLY, "status"]


def display_rows(
    rows: list[dict[str, Any]], label_columns: list[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for the Markdown table: each interval metric as one ``mean [lo, hi]`` cell."""
    shown = []
    for r in rows:
        d = {c: r.get(c) for c in label_columns}
        d.update({k: r.get(k) for k in ("seeds", "params", "steps", "tokens", "flops")})
        for key in INTERVAL_METRICS:
            iv = row_interval(r, key)
            d[key] = iv.text() if iv else None
        d.update({k: r.get(k) for k in MEAN_ONLY})
        d["status"] = r.get("status")
        shown.append(d)
    columns = [
        *label_columns,
        "seeds",
        "params",
        "steps",
        "tokens",
        "flops",
        *INTERVAL_METRICS,
        *MEAN_ONLY,
        "status",
    ]
    return shown, columns


def write_seed_tables(rows: list[dict[str, Any]], label_columns: list[str], out_dir: Path) -> str:
    """results_seeds.csv (mean, lo, hi in full precision); returns the Markdown table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "results_seeds.csv", table_csv(rows, aggregate_columns(label_columns))
    )
    shown, columns = display_rows(rows, label_columns)
    return table_markdown(shown, columns)


def finding_lines(
    rows: list[dict[str, Any]], label: str, metric: str = "final_val_loss"
) -> list[str]:
    """One line per point against the best one (lowest mean ``metric``).

    ``best: a 4.104 [4.09, 4.12]``, then ``b: 4.350 [..], +0.246 against a`` with either
    "distinguishable" (the intervals do not overlap) or "not distinguishable at N seeds".
    """
    have = [(r, row_interval(r, metric)) for r in rows]
    have = [(r, iv) for r, iv in have if iv is not None]
    if not have:
        return []
    best_row, best = min(have, key=lambda x: x[1].mean)
    lines = [f"best {metric}: {best_row.get(label)} {best.text()}"]
    for r, iv in have:
        if r is best_row:
            continue
        n = min(iv.n, best.n)
        if n < 2:
            verdict = "one seed: no interval to tell noise from a difference"
        elif iv.overlaps(best):
            verdict = f"not distinguishable at {n} seeds"
        else:
            verdict = f"distinguishable at {n} seeds (the intervals do not overlap)"
        lines.append(
            f"{r.get(label)}: {iv.text()}, {iv.mean - best.mean:+.3f} against {best_row.get(label)}; {verdict}"
        )
    for r in rows:
        if row_interval(r, metric) is None:
            lines.append(f"{r.get(label)}: no {metric} ({r.get('status')})")
    return lines


def compare_pair(a: Interval, b: Interval) -> str:
    """``distinguishable`` / ``not distinguishable at N seeds`` for two intervals."""
    n = min(a.n, b.n)
    if n < 2:
        return "one seed: no interval"
    return f"not distinguishable at {n} seeds" if a.overlaps(b) else f"distinguishable at {n} seeds"


def curve_band(curves: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """The seeds' val-loss curves folded into one: mean and interval at each shared step."""
    if not curves:
        return {}
    if len(curves) == 1:
        return curves[0]
    by_step: list[dict[int, int]] = [{int(s): i for i, s in enumerate(c["step"])} for c in curves]
    steps = sorted(set.intersection(*(set(m) for m in by_step))) if by_step else []
    ref = curves[0]
    ref_index = by_step[0]
    out: dict[str, list[float]] = {
        "step": [],
        "tokens": [],
        "flops": [],
        "val_loss": [],
        "val_lo": [],
        "val_hi": [],
    }
    for s in steps:
        iv = interval([c["val_loss"][m[s]] for c, m in zip(curves, by_step, strict=True)])
        if iv is None:
            continue
        i = ref_index[s]
        out["step"].append(s)
        out["tokens"].append(ref["tokens"][i])
        out["flops"].append(ref["flops"][i])
        out["val_loss"].append(iv.mean)
        out["val_lo"].append(iv.lo)
        out["val_hi"].append(iv.hi)
    return out


def strip_seed_suffix(name: str) -> str:
    return SEED_SUFFIX.sub("", name)
