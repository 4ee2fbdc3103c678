"""`lmlab compare RUN... [--out DIR]`: the sweep's table and overlaid curves for existing runs.

Each run folder is read as training left it (``config.toml``, ``metrics.jsonl``,
``result.json``). The table has one row per run: its name, the config keys whose values
differ between the runs, and the metric columns of :mod:`lmlab.experiments.results`. It is
printed; with ``--out`` the folder also gets ``results.md``, ``results.csv``,
``compare_curves.png`` (val loss against step) and ``compare_summary.png`` (final val loss
per run, or against the one numeric key that differs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import CheckpointError
from lmlab.experiments import plots
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


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    columns: list[str]
    markdown: str
    out: Path | None = None
    plots: list[Path] = field(default_factory=list)


def _names(runs: list[Path]) -> list[str]:
    """Folder names, or longer path tails where two runs share a name."""
    names = [r.name for r in runs]
    depth = 1
    while len(set(names)) < len(names) and depth < 8:
        depth += 1
        names = ["/".join(r.resolve().parts[-depth:]) for r in runs]
    return names


def compare_runs(runs: list[Path], out: Path | None = None, log=print) -> CompareResult:
    """Tabulate (and with ``out``, plot) existing runs; see the module docstring."""
    runs = [Path(r) for r in runs]
    for r in runs:
        if not r.is_dir():
            raise CheckpointError(f"{r}: no such run folder")
        if not (r / "config.toml").is_file() and not (r / "metrics.jsonl").is_file():
            raise CheckpointError(f"{r}: not a run folder (no config.toml or metrics.jsonl)")
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
    if out is None:
        return result
    from lmlab.outputs import check_output, write_marker

    check_output(out, "compare", whole=False)  # never into a folder of the user's files
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "compare")
    md_table, csv_path = write_tables(rows, columns, out)
    made = []
    c = plots.plot_curves(
        [(n, val_curve(r)) for n, r in zip(names, runs, strict=True)],
        out / "compare_curves.png",
        title="validation loss",
    )
    if c:
        made.append(c)
    numeric = [
        k
        for k in keys
        if all(isinstance(r.get(k), int | float) and not isinstance(r.get(k), bool) for r in rows)
    ]
    x = numeric[0] if len(numeric) == 1 else None
    for r in rows:
        r["point"] = r["run"]  # the bar chart's label
    s = plots.plot_summary(
        rows,
        x,
        out / "compare_summary.png",
        series=None,
        title=f"final val loss against {x}" if x else "final val loss per run",
    )
    if s:
        made.append(s)
    parts = [
        "# Comparison\n",
        "Command: `lmlab compare " + " ".join(str(r) for r in runs) + f" --out {out}`\n",
        "## Results\n\n" + md_table.read_text(encoding="utf-8"),
        "Full precision in `results.csv`.\n",
    ]
    if made:
        parts.append("## Plots\n\n" + "\n\n".join(f"![{p.stem}]({p.name})" for p in made) + "\n")
    atomic_write_text(out / "results.md", "\n".join(parts))
    log(
        f"[compare] wrote {out / 'results.md'}, {csv_path.name}, {', '.join(p.name for p in made) or 'no plots'}"
    )
    result.out = out
    result.plots = made
    return result
