"""`lmlab sweep SWEEP.toml`: run every point of a sweep, then tabulate and plot the results.

1. Parse the sweep file (:mod:`lmlab.experiments.spec`) and build each point's config:
   base recipe < the sweep's ``[overrides]`` < the point's overrides < command-line
   overrides; ``train.out`` becomes ``<out>/runs/<point name>``.
2. Run the shared data stages (tokenizer, dataset) once per distinct stage setting, before
   any training, so points never race on them (:mod:`lmlab.pipeline` skips stages that are
   up to date). Budget keys then set ``train.max_steps``.
3. Run the points: a point whose run folder holds a finished result for the same config is
   skipped; one with a checkpoint of the same config resumes from it; others start fresh.
   One device: in this process, one after another. Several GPUs (``devices = "auto"`` with
   more than one visible, or an explicit list): one worker subprocess per device, each
   pinned with ``CUDA_VISIBLE_DEVICES``. A divergence is a result (status ``diverged``); an
   exception in a point is recorded (status ``failed``, ``error.txt``) and the sweep goes on.
4. Write ``results.csv``, ``results.md`` (table, command, plots) and the plots into
   ``<out>``: val-loss curves overlaid, and the summary metric against the swept value.
   On Ctrl-C the running points checkpoint, the table is written for what exists, and the
   interrupt propagates; running the same command again resumes.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.accounting import training_flops_per_token
from lmlab.config import (
    Config,
    apply_overrides,
    load_config,
    resolve_vocab_size,
)
from lmlab.data.shards import read_meta
from lmlab.errors import ConfigError, LmlabError
from lmlab.experiments import plots
from lmlab.experiments import seeds as seed_stats
from lmlab.experiments.parallel import (
    ERROR_FILE,
    record_failure,
    resolve_devices,
    run_parallel,
)
from lmlab.experiments.results import (
    METRIC_COLUMNS,
    is_finished,
    run_row,
    val_curve,
    write_tables,
)
from lmlab.experiments.spec import (
    BUDGET_KEYS,
    Point,
    SweepSpec,
    format_value,
    load_sweep,
    override_text,
    resolve_base,
    seed_folder,
)
from lmlab.io import atomic_write_text, read_json, write_json
from lmlab.outputs import check_output, write_marker
from lmlab.pipeline import resolve_training_inputs
from lmlab.runs import plan_run
from lmlab.runs.folder import saved_config
from lmlab.train.loop import train


@dataclass
class SweepResult:
    """What a sweep wrote: its folder, one row per point, the table files and the plots."""

    out: Path
    rows: list[dict[str, Any]]
    markdown: Path
    csv: Path
    plots: list[Path] = field(default_factory=list)


# --- configs ------------------------------------------------------------------------------


def point_config(
    spec: SweepSpec, base: Path, point: Point, cli: list[str]
) -> tuple[Config, dict[str, float]]:
    """The point's config (before data stages) and its budget keys."""
    cfg = load_config(base)
    budget: dict[str, float] = {}
    for where, ov in (("[overrides]", spec.overrides), (f"point {point.name}", point.overrides)):
        texts = []
        for k, v in ov.items():
            if k in BUDGET_KEYS:
                budget = {k: float(v)}  # a later budget replaces an earlier one of either kind
            else:
                texts.append(override_text(k, v))
        try:
            apply_overrides(cfg, texts)
        except ConfigError as e:
            raise ConfigError(f"{spec.path}: {where}: {e}") from None
    apply_overrides(cfg, cli)
    cfg.train.seed += point.seed_offset  # sweep.seeds: seed k of a point trains at seed + k
    cfg.train.out = str(spec.out / "runs" / point.name)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{spec.path}: point {point.name}: {e}") from None
    return cfg, budget


def seed_precision(spec: SweepSpec, point: Point, cfg: Config) -> Config:
    """Seed k > 0 of a point trains in the precision its seed 0 picked (``train.dtype = auto``).

    On a CPU, auto times fp32 against bf16 once per process; a sweep resumed or given more
    seeds later times them again, under another load, and near a tie would train one point's
    seeds in different precisions (a 1.9M-parameter scaling point ended 0.025 nats apart in
    the two, as much as the seeds' spread). So seed k > 0 takes the dtype seed 0 recorded in
    its ``precision.json``; a seed whose folder already holds a run started with auto keeps it.
    """
    if point.seed_offset == 0 or cfg.train.dtype != "auto":
        return cfg
    own = saved_config(Path(cfg.train.out))
    if own is not None and own.train.dtype == "auto":
        return cfg
    ref = spec.out / "runs" / seed_folder(point.group or point.name, 0) / "precision.json"
    try:
        dtype = read_json(ref).get("dtype") if ref.is_file() else None
    except (OSError, ValueError, LmlabError):
        return cfg
    if dtype not in ("float32", "bfloat16"):
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, dtype=dtype))


def pin_or_wait(spec: SweepSpec, point: Point, cfg: Config, busy: set[Path]) -> Config | None:
    """:func:`seed_precision` for a worker about to start ``cfg``; None to wait while seed 0 of
    its point is pending or running (``busy``: resolved run folders) and has not recorded its
    pick yet. Without the wait, parallel workers started a point's seeds 0 and 1 together, each
    timing fp32 against bf16 itself, and one point's seeds trained in different precisions."""
    pinned = seed_precision(spec, point, cfg)
    if pinned is not cfg or point.seed_offset == 0 or cfg.train.dtype != "auto":
        return pinned
    seed0 = spec.out / "runs" / seed_folder(point.group or point.name, 0)
    if (seed0 / "precision.json").is_file() or seed0.resolve() not in busy:
        return cfg  # its pick is known (and does not apply here), or it will never record one
    return None


def _stage_settings(cfg: Config) -> str:
    return json.dumps(
        {
            "tokenizer": dataclasses.asdict(cfg.tokenizer),
            "prepare": dataclasses.asdict(cfg.prepare),
        },
        sort_keys=True,
    )


def prepare_data(spec: SweepSpec, configs: list[tuple[Point, Config]], log=print) -> None:
    """Run the tokenizer/data stages once per distinct setting; fill data.path everywhere.

    Two points that write the same tokenizer or dataset folder with different settings
    would overwrite each other's input, so that is an error naming both points.
    """
    owners: dict[tuple[str, str], tuple[str, str]] = {}
    for point, cfg in configs:
        for kind, folder, settings in (
            (
                "tokenizer.out",
                cfg.tokenizer.out,
                json.dumps(dataclasses.asdict(cfg.tokenizer), sort_keys=True),
            ),
            ("prepare.out", cfg.prepare.out, _stage_settings(cfg)),
        ):
            if not folder:
                continue
            prev = owners.setdefault((kind, str(Path(folder).resolve())), (point.name, settings))
            if prev[1] != settings:
                raise ConfigError(
                    f"{spec.path}: {kind}: points {prev[0]} and {point.name} write {folder} with different "
                    f"settings; give each setting its own {kind}"
                )
    done: dict[str, tuple[str, str]] = {}
    for _, cfg in configs:
        key = _stage_settings(cfg) + "|" + cfg.data.path + "|" + cfg.data.tokenizer
        if key not in done:
            resolved = resolve_training_inputs(cfg, log=log)
            done[key] = (resolved.data.path, resolved.data.tokenizer)
        cfg.data.path, cfg.data.tokenizer = done[key]


def finalize(cfg: Config, budget: dict[str, float]) -> None:
    """Take vocab_size from the dataset (as training would) and turn a budget into max_steps."""
    meta = read_meta(cfg.data.path)
    resolve_vocab_size(cfg.model, meta["vocab_size"])
    apply_budget(cfg, budget)
    cfg.validate()


def apply_budget(cfg: Config, budget: dict[str, float]) -> None:
    """Set ``train.max_steps`` from a budget_tokens or budget_flops (needs model.vocab_size)."""
    if not budget:
        return

    tokens_per_step = cfg.batch_shape(1)[0] * cfg.model.context_length
    ((kind, amount),) = budget.items()
    per_step = (
        tokens_per_step
        if kind == "budget_tokens"
        else tokens_per_step * training_flops_per_token(cfg.model)
    )
    cfg.train.max_steps = max(1, round(amount / per_step))


def plan(run_dir: Path, cfg: Config) -> str:
    """skip (finished, same config) | resume (checkpoint of the same config) | fresh: the
    decision :func:`lmlab.runs.plan_run` makes for every trainer; a diverged point is a result."""
    return plan_run(run_dir, cfg, diverged_is_final=True).action


# --- running points -------------------------------------------------------------------------


def _run_inline(cfg: Config, resume: bool, log=print) -> None:
    """Train one point in this process; exceptions other than Ctrl-C become a failure record."""
    run_dir = Path(cfg.train.out)
    try:
        train(cfg, resume=resume, force=not resume)  # the sweep owns its point runs
    except KeyboardInterrupt:
        raise
    except LmlabError as e:
        record_failure(run_dir, f"{type(e).__name__}: {e}")
        log(f"[sweep] {run_dir.name}: failed: {e}")
    except Exception as e:  # noqa: BLE001 - a crash in one point must not end the sweep
        record_failure(run_dir, "".join(traceback.format_exception(e)))
        log(f"[sweep] {run_dir.name}: failed: {type(e).__name__}: {e}")


# --- the sweep ----------------------------------------------------------------------------------


def _config_value(cfg: Config, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def sweep_rows(
    spec: SweepSpec, configs: list[tuple[Point, Config]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The table rows (point, swept values, metrics) and their column order."""
    # output folders (tokenizer.out, prepare.out, ...) only repeat the point's name
    hidden = set(spec.plot.get("hide", []))
    swept = [k for k in spec.swept_keys if not k.endswith((".out", ".path")) and k not in hidden]
    has_series = any(p.series for p, _ in configs)
    rows = []
    for point, cfg in configs:
        run_dir = Path(cfg.train.out)
        row: dict[str, Any] = {"point": point.name}
        if spec.seeds > 1:
            row["seed"] = cfg.train.seed
        if has_series:
            row["series"] = point.series or ""
        for k in swept:
            # the value the run used (a point that leaves the key alone shows the base's)
            row[k] = point.overrides.get(k) if k in BUDGET_KEYS else _config_value(cfg, k)
        row.update(run_row(run_dir))
        if (run_dir / ERROR_FILE).is_file() and not is_finished(run_dir):
            row["status"] = "failed"
            row["error"] = (
                (run_dir / ERROR_FILE).read_text(encoding="utf-8").strip().splitlines()[-1][:300]
            )
        rows.append(row)
    columns = (
        ["point"]
        + (["seed"] if spec.seeds > 1 else [])
        + (["series"] if has_series else [])
        + swept
        + METRIC_COLUMNS
    )
    return rows, columns


def seed_groups(
    configs: list[tuple[Point, Config]], rows: list[dict[str, Any]], label_columns: list[str]
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(label, rows of its seeds) per point, in point order; the label names the group."""
    groups: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for (point, _), row in zip(configs, rows, strict=True):
        if point.group not in groups:
            label = {c: row.get(c) for c in label_columns}
            label["point"] = point.group
            groups[point.group] = (label, [])
        groups[point.group][1].append(row)
    return list(groups.values())


def summary_x(spec: SweepSpec, rows: list[dict[str, Any]]) -> str | None:
    """The summary plot's x: [plot] x, else the first swept key whose values are all numbers."""
    if spec.plot.get("x"):
        return str(spec.plot["x"])
    for k in spec.swept_keys:
        if k in rows[0] and all(
            isinstance(r.get(k), int | float) and not isinstance(r.get(k), bool) for r in rows
        ):
            return k
    return None


def _seed_summary(
    spec: SweepSpec,
    configs: list[tuple[Point, Config]],
    rows: list[dict[str, Any]],
    columns: list[str],
    metric: str,
) -> tuple[list[dict[str, Any]], list[str], list[tuple[str, Any]]]:
    """With several seeds: one row per point (mean and interval), its results.md sections
    (table and findings) and one val-curve band per point; else the rows and one curve per run."""
    if spec.seeds <= 1:
        return rows, [], [(p.name, val_curve(Path(c.train.out))) for p, c in configs]
    label_columns = [c for c in columns if c not in METRIC_COLUMNS and c != "seed"]
    groups = seed_groups(configs, rows, label_columns)
    summary_rows = seed_stats.aggregate(groups)
    seed_md = seed_stats.write_seed_tables(summary_rows, label_columns, spec.out)
    findings = seed_stats.finding_lines(summary_rows, "point", metric)
    seed_section = [
        f"## Results: {seed_stats.describe_kind(spec.seeds)}\n\n{seed_md}\n"
        "One row per seed below; the seed table in full precision in `results_seeds.csv`.\n"
    ]
    if findings:
        seed_section.append("## Findings\n\n" + "\n".join(f"- {f}" for f in findings) + "\n")
    by_group: dict[str, list[Path]] = {}
    for p, c in configs:
        by_group.setdefault(p.group, []).append(Path(c.train.out))
    # the band of the finished seeds (a partial run would cut every seed's curve short)
    curves = [
        (
            g,
            seed_stats.curve_band(
                [val_curve(r) for r in ([r for r in rs if is_finished(r)] or rs)]
            ),
        )
        for g, rs in by_group.items()
    ]
    return summary_rows, seed_section, curves


def _sweep_plots(
    spec: SweepSpec, curves: list[tuple[str, Any]], summary_rows: list[dict[str, Any]], metric: str
) -> list[Path]:
    """The val curves (against spec.plot.curves_x) and the metric against the swept key."""
    out = spec.out
    made: list[Path] = []
    curves_x = str(spec.plot.get("curves_x", "step"))
    x = summary_x(spec, summary_rows)
    c = plots.plot_curves(
        curves, out / f"{spec.name}_curves.png", x=curves_x, title=f"{spec.name}: validation loss"
    )
    if c:
        made.append(c)
    series = str(spec.plot.get("group", "series"))
    s = plots.plot_summary(
        summary_rows,
        x,
        out / f"{spec.name}_summary.png",
        metric=metric,
        series=series,
        log_x=spec.plot.get("log_x"),
        title=f"{spec.name}: {metric} against {x or 'point'}",
    )
    if s:
        made.append(s)
    return made


def _results_markdown(
    spec: SweepSpec,
    cmd: str,
    rows: list[dict[str, Any]],
    seed_section: list[str],
    runs_md: str,
    made: list[Path],
) -> str:
    """results.md: the command and base, the seed sections, the runs with their status,
    the failures and the plots."""
    parts = [f"# Sweep: {spec.name}\n"]
    if spec.description:
        parts.append(spec.description.strip() + "\n")
    parts.append(f"Command: `{cmd}`\n")
    if spec.overrides:
        common = ", ".join(f"`{k}={format_value(v)}`" for k, v in spec.overrides.items())
        parts.append(f"Base recipe `{spec.base}` with {common}.\n")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    parts += seed_section
    runs_title = "## Runs (one row per seed)" if spec.seeds > 1 else "## Results"
    parts.append(f"{runs_title}\n\n" + runs_md)
    parts.append(
        "Status: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + ". Full precision in `results.csv`.\n"
    )
    failures = [r for r in rows if r.get("error")]
    if failures:
        parts.append(
            "## Failures\n\n" + "\n".join(f"- {r['point']}: {r['error']}" for r in failures) + "\n"
        )
    if made:
        parts.append("## Plots\n\n" + "\n\n".join(f"![{p.stem}]({p.name})" for p in made) + "\n")
    return "\n".join(parts)


def write_outputs(
    spec: SweepSpec,
    configs: list[tuple[Point, Config]],
    cli: list[str],
    seeds_arg: int | None = None,
) -> SweepResult:
    """Tables, plots and results.md for the sweep as it stands on disk.

    With several seeds per point, results.csv keeps one row per run and
    results_seeds.csv / results.md / the plots show one row per point: the mean and the
    interval of :mod:`lmlab.experiments.seeds`, with finding lines against the best point.
    """
    out = spec.out
    rows, columns = sweep_rows(spec, configs)
    md_table, csv_path = write_tables(rows, columns, out)
    metric = str(spec.plot.get("metric", "final_val_loss"))
    summary_rows, seed_section, curves = _seed_summary(spec, configs, rows, columns, metric)
    made = _sweep_plots(spec, curves, summary_rows, metric)
    seeds_flag = [f"--seeds {seeds_arg}"] if seeds_arg is not None else []
    cmd = " ".join(["lmlab sweep", str(spec.path), *seeds_flag] + [f"--{o}" for o in cli])
    runs_md = md_table.read_text(encoding="utf-8")
    md = out / "results.md"
    atomic_write_text(md, _results_markdown(spec, cmd, rows, seed_section, runs_md, made))
    write_json(
        out / "sweep.json",
        {
            "name": spec.name,
            "sweep_file": str(spec.path),
            "command": cmd,
            "points": [
                {"name": r["point"], "status": r["status"], "run": str(Path(cfg.train.out))}
                for r, (_, cfg) in zip(rows, configs, strict=True)
            ],
        },
    )
    return SweepResult(out=out, rows=rows, markdown=md, csv=csv_path, plots=made)


def run_sweep(
    path: Path, overrides: list[str] | None = None, log=print, seeds: int | None = None
) -> SweepResult:
    """Run (or resume) the sweep in ``path``; see the module docstring.

    ``seeds`` (``--seeds N``) replaces the sweep file's ``seeds``.
    """
    spec = load_sweep(path, seeds=seeds)
    base = resolve_base(spec)
    cli = [o[2:] if o.startswith("--") else o for o in (overrides or [])]
    swept = set(spec.swept_keys)
    for o in cli:
        key = o.split("=", 1)[0].strip()
        if key in swept:
            raise ConfigError(
                f"{key}: swept by {spec.path}; it cannot be overridden on the command line"
            )
    built = [(p, *point_config(spec, base, p, cli)) for p in spec.points]
    configs = [(p, cfg) for p, cfg, _ in built]
    log(f"[sweep] {spec.name}: {len(configs)} points -> {spec.out}")

    check_output(
        spec.out, "sweep", whole=False
    )  # its tables and runs/ never go into a folder of the user's
    Path(spec.out).mkdir(parents=True, exist_ok=True)
    write_marker(Path(spec.out), "sweep")
    prepare_data(spec, configs, log=log)
    for _, cfg, budget in built:
        finalize(cfg, budget)

    configs = [(p, seed_precision(spec, p, c)) for p, c in configs]
    point_of = {c.train.out: p for p, c in configs}
    jobs: list[tuple[Config, bool]] = []
    for point, cfg in configs:
        run_dir = Path(cfg.train.out)
        action = plan(run_dir, cfg)
        if action == "skip":
            log(f"[sweep] {point.name}: finished already, skipped")
            continue
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        jobs.append((cfg, action == "resume"))
    devices = resolve_devices(spec, configs[0][1])
    try:
        if devices and jobs:
            run_parallel(
                jobs,
                devices,
                log,
                prepare=lambda c, busy: pin_or_wait(spec, point_of[c.train.out], c, busy),
            )
        else:
            for i, (cfg, resume) in enumerate(jobs):
                cfg = seed_precision(spec, point_of[cfg.train.out], cfg)  # seed 0 ran just now
                log(
                    f"[sweep] {Path(cfg.train.out).name} ({i + 1}/{len(jobs)}): {'resuming' if resume else 'training'}"
                )
                _run_inline(cfg, resume, log)
    finally:
        # on Ctrl-C too: the table shows what exists, and rerunning resumes
        result = write_outputs(spec, configs, cli, seeds)
    log(
        f"[sweep] table: {result.markdown} ({result.csv.name}); plots: {', '.join(p.name for p in result.plots) or 'none'}"
    )
    return result
