"""`lmlab compare RUN... [--out DIR]`: the sweep's table and overlaid curves for existing runs.

Each run folder is read as training left it (``config.toml``, ``metrics.jsonl``,
``result.json``). The table has one row per run: its name, the config keys whose values
differ between the runs, and the metric columns of :mod:`lmlab.experiments.results`. It is
printed; with ``--out`` the folder also gets ``results.md``, ``results.csv``,
``compare_curves.png`` (val loss against step) and ``compare_summary.png`` (final val loss
per run, or against the one numeric key that differs).

Runs whose configs differ only in ``train.seed`` (and where they were written: ``train.out``,
``train.device``, ``[log]``) are seeds of one point: the comparison then also has one row
per point with the mean and interval of :mod:`lmlab.experiments.seeds` (printed, and in
``results_seeds.csv``), finding lines that say which points the seeds can tell apart, and
plots of the means with their bands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import CheckpointError
from lmlab.experiments import plots
from lmlab.experiments import seeds as seed_stats
from lmlab.experiments.results import (
    METRIC_COLUMNS,
    config_value,
    differing_config_keys,
    read_config_dict,
    run_row,
    table_markdown,
    val_curve,
    write_tables,
)
from lmlab.io import atomic_write_text
from lmlab.outputs import check_output, write_marker


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    columns: list[str]
    markdown: str
    out: Path | None = None
    plots: list[Path] = field(default_factory=list)
    seed_rows: list[dict[str, Any]] = field(default_factory=list)  # one per point, when seeded
    findings: list[str] = field(default_factory=list)


SEED_BLIND = {("train", "seed"), ("train", "out"), ("train", "device")}


def seed_group_key(cfg: dict[str, Any]) -> str:
    """The config with the seed (and where the run was written) left out, as text."""
    kept = {
        section: {k: v for k, v in body.items() if (section, k) not in SEED_BLIND}
        for section, body in cfg.items()
        if section != "log" and isinstance(body, dict)
    }
    return json.dumps(kept, sort_keys=True, default=str)


def group_by_seed(names: list[str], configs: list[dict[str, Any]]) -> list[list[int]]:
    """Indices of the runs, grouped by config minus seed, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(seed_group_key(cfg) if cfg else f"?{names[i]}", []).append(i)
    return list(groups.values())


def _group_labels(names: list[str], groups: list[list[int]]) -> list[str]:
    labels = [seed_stats.strip_seed_suffix(names[g[0]]) for g in groups]
    if len(set(labels)) < len(labels):
        labels = [f"{lab}#{i + 1}" for i, lab in enumerate(labels)]
    return labels


def _names(runs: list[Path]) -> list[str]:
    """Folder names, or longer path tails where two runs share a name."""
    names = [r.name for r in runs]
    depth = 1
    while len(set(names)) < len(names) and depth < 8:
        depth += 1
        names = ["/".join(r.resolve().parts[-depth:]) for r in runs]
    return names


def _check_run_folders(runs: list[Path]) -> None:
    for r in runs:
        if not r.is_dir():
            raise CheckpointError(f"{r}: no such run folder")
        if not (r / "config.toml").is_file() and not (r / "metrics.jsonl").is_file():
            raise CheckpointError(f"{r}: not a run folder (no config.toml or metrics.jsonl)")


def _seed_summary(
    result: CompareResult,
    names: list[str],
    groups: list[list[int]],
    label_columns: list[str],
    log: Any,
) -> str:
    """Runs that differ only in seed, as one row each (mean and interval): fills
    ``result.seed_rows`` and ``result.findings``; the table's markdown ('' when no group)."""
    if not any(len(g) > 1 for g in groups):
        return ""
    rows = result.rows
    labelled = []
    for label, g in zip(_group_labels(names, groups), groups, strict=True):
        head = {c: rows[g[0]].get(c) for c in label_columns}
        head["run"] = label
        labelled.append((head, [rows[i] for i in g]))
    result.seed_rows = seed_stats.aggregate(labelled)
    result.findings = seed_stats.finding_lines(result.seed_rows, "run")
    n = max(len(g) for g in groups)
    shown, cols = seed_stats.display_rows(result.seed_rows, label_columns)
    seed_md = table_markdown(shown, cols)
    log(f"\n{seed_stats.describe_kind(n)}:\n{seed_md.rstrip()}")
    for line in result.findings:
        log(f"- {line}")
    return seed_md


def _compare_plots(
    result: CompareResult,
    runs: list[Path],
    names: list[str],
    groups: list[list[int]],
    keys: list[str],
    label_columns: list[str],
    out: Path,
) -> list[Path]:
    """The overlaid val curves (bands for seed groups) and the final-loss summary plot."""
    made = []
    if result.seed_rows:
        curves = [
            (row["run"], seed_stats.curve_band([val_curve(runs[i]) for i in g]))
            for row, g in zip(result.seed_rows, groups, strict=True)
        ]
    else:
        curves = [(n, val_curve(r)) for n, r in zip(names, runs, strict=True)]
    c = plots.plot_curves(curves, out / "compare_curves.png", title="validation loss")
    if c:
        made.append(c)
    summary = result.seed_rows or result.rows
    numeric = [
        k
        for k in (label_columns[1:] if result.seed_rows else keys)
        if all(
            isinstance(r.get(k), int | float) and not isinstance(r.get(k), bool) for r in summary
        )
    ]
    x = numeric[0] if len(numeric) == 1 else None
    for r in summary:
        r["point"] = r["run"]  # the bar chart's label
    s = plots.plot_summary(
        summary,
        x,
        out / "compare_summary.png",
        series=None,
        title=f"final val loss against {x}" if x else "final val loss per run",
    )
    if s:
        made.append(s)
    return made


def _results_markdown(
    result: CompareResult,
    runs: list[Path],
    out: Path,
    seeds_per_group: int,
    seed_md: str,
    runs_md: str,
    made: list[Path],
) -> str:
    """results.md: the command, the seed table and findings (if any), the runs, the plots."""
    parts = [
        "# Comparison\n",
        "Command: `lmlab compare " + " ".join(str(r) for r in runs) + f" --out {out}`\n",
    ]
    if result.seed_rows:
        parts.append(
            f"## Results: {seed_stats.describe_kind(seeds_per_group)}\n\n{seed_md}\n"
            "Full precision in `results_seeds.csv`.\n"
        )
        parts.append("## Findings\n\n" + "\n".join(f"- {f}" for f in result.findings) + "\n")
    parts += [
        ("## Runs\n\n" if result.seed_rows else "## Results\n\n") + runs_md,
        "Full precision in `results.csv`.\n",
    ]
    if made:
        parts.append("## Plots\n\n" + "\n\n".join(f"![{p.stem}]({p.name})" for p in made) + "\n")
    return "\n".join(parts)


def compare_runs(runs: list[Path], out: Path | None = None, log=print) -> CompareResult:
    """Tabulate (and with ``out``, plot) existing runs; see the module docstring."""
    runs = [Path(r) for r in runs]
    _check_run_folders(runs)
    configs = [read_config_dict(r) for r in runs]
    keys = differing_config_keys(configs) if len(runs) > 1 else []
    names = _names(runs)
    rows = []
    for name, run, cfg in zip(names, runs, configs, strict=True):
        row: dict[str, Any] = {"run": name}
        for k in keys:
            row[k] = config_value(cfg, k)
        row.update(run_row(run))
        rows.append(row)
    columns = ["run", *keys, *METRIC_COLUMNS]
    md = table_markdown(rows, columns)
    log(md.rstrip())
    result = CompareResult(rows=rows, columns=columns, markdown=md)
    groups = group_by_seed(names, configs)
    label_columns = ["run", *[k for k in keys if k != "train.seed"]]
    seed_md = _seed_summary(result, names, groups, label_columns, log)
    if out is None:
        return result

    check_output(out, "compare", whole=False)  # never into a folder of the user's files
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "compare")
    md_table, csv_path = write_tables(rows, columns, out)
    if result.seed_rows:
        seed_stats.write_seed_tables(result.seed_rows, label_columns, out)
    made = _compare_plots(result, runs, names, groups, keys, label_columns, out)
    runs_md = md_table.read_text(encoding="utf-8")
    n = max((len(g) for g in groups), default=1)
    text = _results_markdown(result, runs, out, n, seed_md, runs_md, made)
    atomic_write_text(out / "results.md", text)
    log(
        f"[compare] wrote {out / 'results.md'}, {csv_path.name}, {', '.join(p.name for p in made) or 'no plots'}"
    )
    result.out = out
    result.plots = made
    return result
