"""Seeds per point: the interval arithmetic, `sweep.seeds` / `--seeds` end to end (run
folders, resume per seed, tables, findings, bands in the plots), and `lmlab compare` on runs
that differ only in seed."""

from __future__ import annotations

import csv
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.config import load_config, save_config
from lmlab.errors import ConfigError
from lmlab.experiments import plots
from lmlab.experiments import sweep as sweep_module
from lmlab.experiments.compare import compare_runs
from lmlab.experiments.seeds import (
    Interval,
    aggregate,
    curve_band,
    finding_lines,
    interval,
    t975,
)
from lmlab.experiments.spec import load_sweep
from lmlab.experiments.sweep import run_sweep
from lmlab.train import loop
from lmlab_train_fixtures import make_text, tiny_config, write_dataset

# --- arithmetic ------------------------------------------------------------------------------


def test_t_quantiles_match_the_tables():
    # t(0.975) from standard tables; past df 30 the expansion is within 1e-4 of them
    assert t975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t975(4) == pytest.approx(2.7764, abs=1e-4)
    assert t975(30) == pytest.approx(2.0423, abs=1e-4)
    assert t975(40) == pytest.approx(2.0211, abs=1e-4)
    assert t975(60) == pytest.approx(2.0003, abs=1e-4)
    assert t975(120) == pytest.approx(1.9799, abs=1e-4)
    assert t975(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        t975(0)


def test_interval_is_a_t_interval_from_five_seeds_and_the_range_below():
    five = [4.0, 4.1, 4.3, 4.2, 4.4]
    iv = interval(five)
    half = 2.7764451051977987 * statistics.stdev(five) / math.sqrt(5)
    assert iv.kind == "t95" and iv.n == 5
    assert iv.mean == pytest.approx(4.2, abs=1e-12)
    assert iv.lo == pytest.approx(4.2 - half, abs=1e-4) and iv.hi == pytest.approx(
        4.2 + half, abs=1e-4
    )
    three = interval([4.3, 4.1, 4.2])
    assert (three.kind, three.lo, three.hi) == ("min-max", 4.1, 4.3)
    assert three.mean == pytest.approx(4.2, abs=1e-12)
    one = interval([4.0])
    assert (one.kind, one.lo, one.hi, one.n) == ("single", 4.0, 4.0, 1)
    # non-finite values (a diverged seed) are left out; none at all gives no interval
    assert interval([4.0, math.nan, 5.0, None]).n == 2
    assert interval([math.inf, None]) is None


def test_findings_say_which_points_three_seeds_can_tell_apart():
    groups = [
        ({"point": "a"}, [{"final_val_loss": v, "status": "ok"} for v in (4.10, 4.12, 4.11)]),
        ({"point": "b"}, [{"final_val_loss": v, "status": "ok"} for v in (4.11, 4.15, 4.13)]),
        ({"point": "c"}, [{"final_val_loss": v, "status": "ok"} for v in (4.30, 4.35, 4.32)]),
        (
            {"point": "d"},
            [
                {"final_val_loss": None, "status": "diverged"},
                {"final_val_loss": 5.0, "status": "ok"},
            ],
        ),
        # a partial run (stopped early) is not a result of the point: left out of the mean
        (
            {"point": "e"},
            [{"final_val_loss": 3.0, "status": "partial"}, {"final_val_loss": 4.5, "status": "ok"}],
        ),
    ]
    rows = aggregate(groups)
    assert [r["seeds"] for r in rows] == [3, 3, 3, 1, 1]
    assert rows[4]["final_val_loss"] == 4.5 and rows[4]["status"] == "1 partial, 1 ok"
    assert rows[0]["final_val_loss"] == pytest.approx(4.11) and rows[0]["final_val_loss_lo"] == 4.10
    assert rows[3]["status"] == "1 diverged, 1 ok"
    lines = finding_lines(rows, "point")
    assert lines[0].startswith("best final_val_loss: a 4.11 [4.1, 4.12]")
    assert "b:" in lines[1] and "+0.020 against a" in lines[1]
    assert lines[1].endswith("not distinguishable at 3 seeds")
    assert "c:" in lines[2] and lines[2].endswith(
        "distinguishable at 3 seeds (the intervals do not overlap)"
    )
    assert "d:" in lines[3] and "one seed" in lines[3]
    assert Interval(1, 0, 2, 3, "min-max").overlaps(Interval(3, 2, 4, 3, "min-max"))
    assert not Interval(1, 0, 1.9, 3, "min-max").overlaps(Interval(3, 2, 4, 3, "min-max"))


def test_curve_band_folds_seed_curves_on_their_shared_steps():
    a = {"step": [2, 4, 6], "tokens": [8, 16, 24], "flops": [1, 2, 3], "val_loss": [5.0, 4.0, 3.0]}
    b = {"step": [2, 4], "tokens": [8, 16], "flops": [1, 2], "val_loss": [6.0, 3.0]}
    band = curve_band([a, b])
    assert band["step"] == [2, 4] and band["val_loss"] == [5.5, 3.5]
    assert band["val_lo"] == [5.0, 3.0] and band["val_hi"] == [6.0, 4.0]


# --- the sweep -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seeds")
    data = write_dataset(root / "ds", make_text(40))
    cfg = tiny_config(data, root / "unused", eval__samples=0)
    path = root / "base.toml"
    save_config(cfg, path)
    return path


@pytest.fixture
def folder(base, tmp_path) -> Path:
    shutil.copy(base, tmp_path / "base.toml")
    return tmp_path


def write_sweep(folder: Path, body: str) -> Path:
    path = folder / "s.toml"
    path.write_text(
        f'name = "s"\nbase = "{folder / "base.toml"}"\nout = "{folder / "out"}"\n' + body
    )
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


SWEEP = (
    'seeds = 2\n[overrides]\n"train.max_steps" = 6\n"train.eval_every" = 3\n'
    '"train.checkpoint_every" = 3\n"train.min_lr" = 0.0\n[grid]\n"train.lr" = [1e-4, 1e-2]\n'
)


def test_seeds_run_each_point_in_its_own_folder_and_tabulate_mean_and_range(folder, monkeypatch):
    calls = []
    real = loop.train

    def spy(cfg, resume=False, **kw):
        calls.append((Path(cfg.train.out).name, cfg.train.seed, resume))
        return real(cfg, resume=resume, **kw)

    monkeypatch.setattr(sweep_module, "train", spy)
    res = run_sweep(write_sweep(folder, SWEEP))
    base_seed = load_config(folder / "base.toml").train.seed
    assert calls == [
        ("lr-0.0001", base_seed, False),
        ("lr-0.0001__seed-1", base_seed + 1, False),
        ("lr-0.01", base_seed, False),
        ("lr-0.01__seed-1", base_seed + 1, False),
    ]
    out = folder / "out"
    runs = out / "runs"
    assert load_config(runs / "lr-0.01__seed-1" / "config.toml").train.seed == base_seed + 1
    per_run = read_csv(out / "results.csv")
    assert [r["point"] for r in per_run] == [c[0] for c in calls]
    assert [int(r["seed"]) for r in per_run] == [c[1] for c in calls]
    losses = [float(r["final_val_loss"]) for r in per_run]
    assert losses[2] != losses[3]  # the seed changes init and batches, so the loss
    seeded = read_csv(out / "results_seeds.csv")
    assert [r["point"] for r in seeded] == ["lr-0.0001", "lr-0.01"]
    for r, pair in zip(seeded, (losses[:2], losses[2:]), strict=True):
        assert int(r["seeds"]) == 2 and r["status"] == "ok"
        assert float(r["final_val_loss"]) == pytest.approx(sum(pair) / 2, rel=1e-12)
        assert float(r["final_val_loss_lo"]) == pytest.approx(min(pair), rel=1e-12)
        assert float(r["final_val_loss_hi"]) == pytest.approx(max(pair), rel=1e-12)
    md = (out / "results.md").read_text()
    assert "mean over 2 seeds [min, max]" in md and "## Runs (one row per seed)" in md
    assert "## Findings" in md and "best final_val_loss: lr-0.01" in md
    assert res.rows and len(res.rows) == 4
    assert (out / "s_curves.png").stat().st_size > 1000 and (
        out / "s_summary.png"
    ).stat().st_size > 1000

    # resume per seed: one seed made partial continues, the other three are skipped
    part = runs / "lr-0.01__seed-1"
    (part / "result.json").unlink()
    shutil.rmtree(part / "checkpoints" / "step_000006")
    (part / "checkpoints" / "latest").write_text("step_000003\n")
    calls.clear()
    run_sweep(write_sweep(folder, SWEEP))
    assert calls == [("lr-0.01__seed-1", base_seed + 1, True)]
    # --seeds 3 adds the third seed of each point and keeps the two that exist
    calls.clear()
    res = run_sweep(write_sweep(folder, SWEEP), seeds=3)
    assert calls == [
        ("lr-0.0001__seed-2", base_seed + 2, False),
        ("lr-0.01__seed-2", base_seed + 2, False),
    ]
    assert "mean over 3 seeds" in (out / "results.md").read_text()
    assert f"lmlab sweep {folder / 's.toml'} --seeds 3" in (out / "results.md").read_text()
    assert all(int(r["seeds"]) == 3 for r in read_csv(out / "results_seeds.csv"))


def test_later_seeds_train_in_the_precision_seed_0_picked(folder, monkeypatch):
    # train.dtype = auto times fp32 against bf16 once per process: a sweep given more seeds
    # later must not let a timing under another load train the new seeds in another precision
    from lmlab.train import setup  # where the trainer looks the probe up

    picks: list[str] = []

    def timing_says(dtype: str):
        def pick(*args, **kwargs):
            picks.append(dtype)
            return {"dtype": dtype, "reason": "test"}

        return pick

    body = (
        '[overrides]\n"train.max_steps" = 4\n"train.eval_every" = 2\n'
        '"train.checkpoint_every" = 0\n"train.dtype" = "auto"\n[[points]]\nname = "p"\n'
    )
    runs = folder / "out" / "runs"
    monkeypatch.setattr(setup, "pick_cpu_train_dtype", timing_says("bfloat16"))
    run_sweep(write_sweep(folder, body), seeds=2)
    assert picks == ["bfloat16"]  # seed 0 measured; seed 1, in the same sweep, took its pick
    assert load_config(runs / "p" / "config.toml").train.dtype == "auto"
    assert load_config(runs / "p__seed-1" / "config.toml").train.dtype == "bfloat16"

    picks.clear()
    monkeypatch.setattr(setup, "pick_cpu_train_dtype", timing_says("float32"))
    run_sweep(write_sweep(folder, body), seeds=3)
    assert picks == []  # the new seed did not time again, nor train in another precision
    assert load_config(runs / "p__seed-2" / "config.toml").train.dtype == "bfloat16"

    calls = []
    monkeypatch.setattr(sweep_module, "train", lambda cfg, **kw: calls.append(cfg.train.out))
    run_sweep(write_sweep(folder, body), seeds=3)
    assert calls == []  # pinned seeds count as finished runs of the same config


def test_seeds_must_be_a_positive_whole_number(folder):
    with pytest.raises(ConfigError, match="seeds must be a whole number"):
        load_sweep(write_sweep(folder, 'seeds = 0\n[grid]\n"train.lr" = [1e-3]\n'))
    with pytest.raises(ConfigError, match="seeds must be a whole number"):
        load_sweep(write_sweep(folder, 'seeds = 2.5\n[grid]\n"train.lr" = [1e-3]\n'))
    with pytest.raises(ConfigError, match="--seeds"):
        load_sweep(write_sweep(folder, '[grid]\n"train.lr" = [1e-3]\n'), seeds=-1)
    spec = load_sweep(write_sweep(folder, '[[points]]\nname = "a"\n'), seeds=3)
    assert [(p.name, p.seed_offset, p.group) for p in spec.points] == [
        ("a", 0, "a"),
        ("a__seed-1", 1, "a"),
        ("a__seed-2", 2, "a"),
    ]


def test_plots_draw_the_seed_band(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    real = matplotlib.axes.Axes.fill_between

    def spy(self, x, y1, y2=0, **kw):
        drawn.append((list(x), list(y1), list(y2)))
        return real(self, x, y1, y2, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", spy)
    rows = [
        {
            "point": "a",
            "x": 1.0,
            "final_val_loss": 4.0,
            "final_val_loss_lo": 3.9,
            "final_val_loss_hi": 4.2,
        },
        {
            "point": "b",
            "x": 2.0,
            "final_val_loss": 3.5,
            "final_val_loss_lo": 3.4,
            "final_val_loss_hi": 3.7,
        },
    ]
    assert plots.plot_summary(rows, "x", tmp_path / "s.png", series=None)
    assert drawn == [([1.0, 2.0], [3.9, 3.4], [4.2, 3.7])]
    curve = {
        "step": [1, 2],
        "tokens": [4, 8],
        "flops": [1, 2],
        "val_loss": [5, 4],
        "val_lo": [4.5, 3.5],
        "val_hi": [5.5, 4.5],
    }
    drawn.clear()
    assert plots.plot_curves([("a", curve)], tmp_path / "c.png")
    assert drawn == [([1, 2], [4.5, 3.5], [5.5, 4.5])]
    # bars (a non-numeric x) get error bars from the same columns
    errs = []
    real_barh = matplotlib.axes.Axes.barh

    def barh(self, y, width, **kw):
        errs.append(kw.get("xerr"))
        return real_barh(self, y, width, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "barh", barh)
    assert plots.plot_summary(rows, None, tmp_path / "b.png")
    assert errs[0] == [pytest.approx([0.1, 0.1]), pytest.approx([0.2, 0.2])]


# --- compare ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory) -> list[Path]:
    """Two learning rates x two seeds, trained directly (not by a sweep)."""
    root = tmp_path_factory.mktemp("cmpseeds")
    data = write_dataset(root / "ds", make_text(30))
    out = []
    for name, lr in (("slow", 1e-4), ("fast", 1e-2)):
        for seed in (1, 2):
            cfg = tiny_config(
                data,
                root / f"{name}-s{seed}",
                train__max_steps=6,
                train__lr=lr,
                train__min_lr=0.0,
                train__seed=seed,
                train__eval_every=3,
                train__checkpoint_every=0,
                eval__samples=0,
            )
            loop.train(cfg)
            out.append(root / f"{name}-s{seed}")
    return out


def test_compare_groups_runs_that_differ_only_in_seed(seeded_runs, tmp_path):
    printed = []
    res = compare_runs(seeded_runs, out=tmp_path / "cmp", log=printed.append)
    assert len(res.rows) == 4 and "train.seed" in res.columns
    assert [r["run"] for r in res.seed_rows] == ["slow-s1", "fast-s1"]
    assert [r["train.lr"] for r in res.seed_rows] == [1e-4, 1e-2]
    assert all(r["seeds"] == 2 and "train.seed" not in r for r in res.seed_rows)
    for agg, pair in zip(res.seed_rows, (res.rows[:2], res.rows[2:]), strict=True):
        values = [r["final_val_loss"] for r in pair]
        assert agg["final_val_loss"] == pytest.approx(sum(values) / 2, rel=1e-12)
        assert (agg["final_val_loss_lo"], agg["final_val_loss_hi"]) == (min(values), max(values))
    assert res.findings[0].startswith("best final_val_loss: fast-s1")
    text = "\n".join(printed)
    assert "mean over 2 seeds [min, max]" in text and res.findings[1] in text
    md = (tmp_path / "cmp" / "results.md").read_text()
    assert "## Findings" in md and "## Runs" in md
    assert len(read_csv(tmp_path / "cmp" / "results_seeds.csv")) == 2
    # runs that differ in more than the seed stay apart: no seed table
    res = compare_runs([seeded_runs[0], seeded_runs[2]], log=lambda *_: None)
    assert res.seed_rows == [] and res.findings == []


def test_sweep_cli_takes_seeds_and_dry_run(folder):
    sweep = write_sweep(folder, '[grid]\n"train.lr" = [1e-3, 1e-2]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab", "sweep", str(sweep), "--seeds", "2", "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "lr-0.01__seed-1" in proc.stdout and "nothing trained" in proc.stdout
    assert not (folder / "out").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab", "sweep", str(sweep), "--seeds", "0", "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "lmlab: error: --seeds: seeds must be a whole number >= 1, got 0"


def test_parallel_workers_start_a_later_seed_once_seed_0_has_picked_its_precision(folder):
    """With two workers, seed 1 of a point used to start beside seed 0 and time fp32 against
    bf16 itself: one point's seeds then trained in different precisions (layernorm at width 128:
    bf16, fp32, bf16). Now a worker takes seed 1 only once seed 0 has recorded its pick (or
    has stopped without one), and takes another point's job meanwhile."""
    from lmlab.experiments.parallel import _ready_job
    from lmlab.experiments.spec import load_sweep
    from lmlab.experiments.sweep import pin_or_wait, point_config

    body = '[overrides]\n"train.dtype" = "auto"\n"train.min_lr" = 0.0\n[grid]\n"train.lr" = [1e-4, 1e-2]\n'
    spec = load_sweep(write_sweep(folder, body), seeds=2)
    configs = [(p, point_config(spec, folder / "base.toml", p, [])[0]) for p in spec.points]
    point_of = {c.train.out: p for p, c in configs}
    by_name = {Path(c.train.out).name: c for _, c in configs}
    p0, p1, q0 = by_name["lr-0.0001"], by_name["lr-0.0001__seed-1"], by_name["lr-0.01"]
    running = {Path(p0.train.out).resolve()}  # seed 0 of the first point is training

    def prepare(cfg):
        return pin_or_wait(spec, point_of[cfg.train.out], cfg, running)

    pending = [(p1, False), (q0, False)]
    job = _ready_job(pending, prepare)
    assert job is not None and job[0] is q0 and pending == [(p1, False)]  # seed 1 waits
    assert _ready_job(pending, prepare) is None  # nothing else is ready
    (Path(p0.train.out)).mkdir(parents=True, exist_ok=True)
    (Path(p0.train.out) / "precision.json").write_text('{"dtype": "bfloat16"}')
    job = _ready_job(pending, prepare)
    assert job is not None and job[0].train.dtype == "bfloat16" and pending == []
    # a seed 0 that stopped without recording a pick (not busy) does not hold seed 1 back
    (Path(p0.train.out) / "precision.json").unlink()
    assert pin_or_wait(spec, point_of[p1.train.out], p1, set()) is p1
