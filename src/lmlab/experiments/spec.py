"""Sweep files: a base recipe plus a grid and/or a list of override points.

A sweep file is TOML::

    name = "lr"                          # used in titles; default: the file's stem
    base = "../recipes/tiny.toml"        # a recipe path (relative to this file or the cwd)
                                         # or a shipped recipe's name ("shakespeare-char")
    out = "runs/sweeps/lr"               # the sweep folder; default runs/sweeps/<name>
    devices = "auto"                     # auto | a list such as ["0", "1"] or ["cpu", "cpu"]
    seeds = 3                            # runs per point, train.seed + 0..N-1 (default 1)

    [overrides]                          # applied to every point
    "train.max_steps" = 300

    [grid]                               # the cartesian product of these values
    "train.lr" = [1e-3, 3e-3, 1e-2]

    [[points]]                           # explicit points (each a table of overrides)
    name = "post-norm"                   # optional run-folder name
    series = "pre vs post"               # optional: points of one series share a plot line
    "model.norm_position" = "post"

    [plot]                               # optional; see lmlab.experiments.plots
    x = "train.lr"                       # the swept key on the x axis of the summary plot
    log_x = true
    curves_x = "step"                    # step | tokens | flops
    hide = ["train.eval_every"]          # swept keys left out of the table

Keys may be quoted (``"train.lr"``) or dotted (``train.lr``, which TOML nests). With both
``[grid]`` and ``[[points]]`` the sweep is every point combined with every grid combination.
Two sweep-only keys set ``train.max_steps`` from a budget, after every other override:
``budget_tokens`` (tokens seen) and ``budget_flops`` (training FLOPs from
:mod:`lmlab.accounting`, 3x the forward matmul FLOPs per token).

With ``seeds = N`` every point runs N times, with ``train.seed`` offset by 0..N-1 (after
every override, the command line's included); seed offset 0 keeps the point's folder name,
offset k runs in ``<point>__seed-<k>``, so raising N later adds runs and keeps the old one.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.config import find_recipe
from lmlab.errors import ConfigError

BUDGET_KEYS = ("budget_tokens", "budget_flops")
TOP_KEYS = {"name", "base", "out", "devices", "overrides", "grid", "points", "plot", "description"}
TOP_KEYS |= {"seeds"}  # runs per point (see expand_seeds)
PLOT_KEYS = {"x", "log_x", "curves_x", "metric", "group", "hide"}


@dataclass
class Point:
    """One run of a sweep: its folder name and the overrides that make it."""

    name: str
    overrides: dict[str, Any]  # section.key (or a budget key) -> value, in file order
    series: str | None = None  # a line label for plots (the point's ``series`` key)
    seed_offset: int = 0  # added to train.seed (sweep.seeds > 1)
    group: str = ""  # the point's name without its seed suffix (its row in the seed table)

    def __post_init__(self) -> None:
        self.group = self.group or self.name

    def label(self) -> str:
        return (
            ", ".join(f"{short_key(k)}={format_value(v)}" for k, v in self.overrides.items())
            or self.name
        )


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    path: Path
    name: str
    base: str
    out: Path
    overrides: dict[str, Any]
    points: list[Point]
    devices: str | list[str] = "auto"
    plot: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    seeds: int = 1

    @property
    def swept_keys(self) -> list[str]:
        """Keys whose value differs between points, in first-seen order."""
        keys: list[str] = []
        for p in self.points:
            keys += [k for k in p.overrides if k not in keys]
        varying = []
        for k in keys:
            values = {repr(p.overrides.get(k)) for p in self.points}
            if len(values) > 1:
                varying.append(k)
        return varying


def short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def format_value(v: Any) -> str:
    """A compact, stable text for a swept value (``0.001``, ``1e+06``, ``true``, ``a,b``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:g}"
    if isinstance(v, list):
        return ",".join(format_value(x) for x in v)
    return str(v)


def override_text(key: str, value: Any) -> str:
    """``section.key=value`` as :func:`lmlab.config.apply_overrides` reads it back."""
    if isinstance(value, list):
        items = ", ".join(f'"{x}"' if isinstance(x, str) else format_value(x) for x in value)
        return f"{key}=[{items}]"
    if isinstance(value, float):
        return f"{key}={value!r}"
    return f"{key}={format_value(value)}"


_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def folder_name(overrides: dict[str, Any]) -> str:
    """A run-folder name from overrides: ``lr-0.001__batch_size-8`` (filesystem-safe)."""
    if not overrides:
        return "base"
    shorts = [short_key(k) for k in overrides]
    parts = []
    for (k, v), s in zip(overrides.items(), shorts, strict=True):
        label = s if shorts.count(s) == 1 else k  # full key when the short name is ambiguous
        parts.append(f"{label}-{format_value(v)}")
    return _SAFE.sub("_", "__".join(parts))[:150]


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` and ``{"train.lr": 1}`` both -> ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _check_key(key: str, where: str) -> None:
    if key in BUDGET_KEYS:
        return
    if key.count(".") != 1:
        raise ConfigError(
            f"{where}: {key!r}: override keys look like section.name (e.g. train.lr) or {'|'.join(BUDGET_KEYS)}"
        )


def _check_budget(key: str, value: Any, where: str) -> None:
    if key in BUDGET_KEYS and (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{where}: {key} must be a positive number, got {value!r}")


def seed_folder(name: str, offset: int) -> str:
    """The run folder of seed offset ``offset`` of point ``name``."""
    return name if offset == 0 else f"{name}__seed-{offset}"


def expand_seeds(points: list[Point], seeds: int) -> list[Point]:
    """Each point ``seeds`` times, seed offsets 0..seeds-1 (point order, then seed order)."""
    return [
        Point(seed_folder(p.name, k), p.overrides, p.series, seed_offset=k, group=p.name)
        for p in points
        for k in range(seeds)
    ]


def _check_seeds(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: seeds must be a whole number >= 1, got {value!r}")
    return value


def _read_sweep_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(TOP_KEYS))})"
        )
    return data


def _common_overrides(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """[overrides]: what every point sets."""
    common = _flatten(_table(data, "overrides", path))
    for k, v in common.items():
        _check_key(k, f"{path}: [overrides]")
        _check_budget(k, v, f"{path}: [overrides]")
    return common


def _grid(data: dict[str, Any], path: Path) -> dict[str, list[Any]]:
    """[grid]: each key's list of values (the points are their product)."""
    grid = _flatten(_table(data, "grid", path))
    for k, values in grid.items():
        _check_key(k, f"{path}: [grid]")
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{path}: [grid] {k}: expected a non-empty list of values, got {values!r}"
            )
        for v in values:
            _check_budget(k, v, f"{path}: [grid]")
    return grid


def _listed_points(
    raw_points: list[dict[str, Any]], path: Path
) -> list[tuple[str | None, str | None, dict[str, Any]]]:
    """[[points]]: (name, series, overrides) of each listed point."""
    listed: list[tuple[str | None, str | None, dict[str, Any]]] = []
    for i, p in enumerate(raw_points):
        where = f"{path}: [[points]] #{i + 1}"
        p = dict(p)
        pname = p.pop("name", None)
        series = p.pop("series", None)
        if series is not None and not isinstance(series, str):
            raise ConfigError(f"{where}: series must be a string, got {series!r}")
        if pname is not None and (not isinstance(pname, str) or not pname or _SAFE.search(pname)):
            raise ConfigError(
                f"{where}: name must be a plain folder name (letters, digits, . _ + -), got {pname!r}"
            )
        flat = _flatten(p)
        for k, v in flat.items():
            _check_key(k, where)
            _check_budget(k, v, where)
        listed.append((pname, series, flat))
    return listed


def _grid_times_listed(
    grid: dict[str, list[Any]], listed: list[tuple[str | None, str | None, dict[str, Any]]]
) -> list[Point]:
    """Every listed point (or one empty point) with every grid combination, named by folder."""
    combos = (
        [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
        if grid
        else [{}]
    )
    points: list[Point] = []
    for pname, series, flat in listed or [(None, None, {})]:
        for combo in combos:
            ov = {**flat, **combo}
            if pname and combo:
                folder = f"{pname}__{folder_name(combo)}"
            else:
                folder = pname or folder_name(ov)
            points.append(Point(folder, ov, series))
    return points


def _check_distinct_folders(points: list[Point], path: Path) -> None:
    seen: set[str] = set()
    for p in points:
        if p.name in seen:
            raise ConfigError(
                f"{path}: two points would share the run folder {p.name!r}; give them distinct names"
            )
        seen.add(p.name)


def _devices(data: dict[str, Any], path: Path) -> str | list[str]:
    devices = data.get("devices", "auto")
    if devices != "auto" and (
        not isinstance(devices, list) or not devices or not all(isinstance(d, str) for d in devices)
    ):
        raise ConfigError(
            f'{path}: devices: expected "auto" or a list such as ["0", "1"] or ["cpu", "cpu"]'
        )
    return devices


def _plot_settings(data: dict[str, Any], path: Path) -> dict[str, Any]:
    plot = _table(data, "plot", path)
    bad = sorted(set(plot) - PLOT_KEYS)
    if bad:
        raise ConfigError(
            f"{path}: [plot] unknown key(s) {', '.join(bad)} (known: {', '.join(sorted(PLOT_KEYS))})"
        )
    hide = plot.get("hide", [])
    if not isinstance(hide, list) or not all(isinstance(h, str) for h in hide):
        raise ConfigError(f"{path}: [plot] hide: expected a list of keys, got {hide!r}")
    if plot.get("curves_x", "step") not in ("step", "tokens", "flops"):
        raise ConfigError(
            f"{path}: [plot] curves_x: expected step|tokens|flops, got {plot['curves_x']!r}"
        )
    return plot


def load_sweep(path: str | Path, seeds: int | None = None) -> SweepSpec:
    """Parse and expand a sweep file; errors name the file and the key.

    ``seeds`` (the command line's ``--seeds``) replaces the file's ``seeds``.
    """
    path = Path(path)
    data = _read_sweep_file(path)
    name = data.get("name", path.stem)
    base = data.get("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: name the base recipe (a path or a shipped recipe name)")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: name: expected a non-empty string")
    out = Path(data.get("out") or f"runs/sweeps/{name}")
    common = _common_overrides(data, path)
    grid = _grid(data, path)
    raw_points = data.get("points", [])
    if not isinstance(raw_points, list) or not all(isinstance(p, dict) for p in raw_points):
        raise ConfigError(f"{path}: points: expected [[points]] tables")
    listed = _listed_points(raw_points, path)
    if not grid and not raw_points:
        raise ConfigError(f"{path}: a sweep needs a [grid] or [[points]]")
    points = _grid_times_listed(grid, listed)
    n_seeds = _check_seeds(data.get("seeds", 1), str(path))
    if seeds is not None:
        n_seeds = _check_seeds(seeds, "--seeds")
    points = expand_seeds(points, n_seeds)
    _check_distinct_folders(points, path)
    return SweepSpec(
        path=path,
        name=name,
        base=base,
        out=out,
        overrides=common,
        points=points,
        devices=_devices(data, path),
        plot=_plot_settings(data, path),
        description=str(data.get("description", "")),
        seeds=n_seeds,
    )


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: expected a [{key}] table")
    return value


def resolve_base(spec: SweepSpec) -> Path:
    """The base recipe: relative to the sweep file, else the cwd, else a shipped name."""
    beside = spec.path.parent / spec.base
    if beside.is_file():
        return beside
    return find_recipe(spec.base)
