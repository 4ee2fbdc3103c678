"""`lmlab sweep`: a tiny sweep end to end (table, CSV, plots), resume, divergence, failures,
budgets, worker subprocesses, and the sweep file's errors."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from lmlab.config import save_config
from lmlab.errors import ConfigError
from lmlab.experiments import sweep as sweep_module
from lmlab.experiments.spec import folder_name, load_sweep
from lmlab.experiments.sweep import run_sweep
from lmlab.train import loop
from lmlab_train_fixtures import make_text, tiny_config, write_dataset


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A base recipe: the tiny 2-layer model on a tiny char dataset (12 steps)."""
    root = tmp_path_factory.mktemp("sweep")
    data = write_dataset(root / "ds", make_text(40))
    cfg = tiny_config(data, root / "unused", eval__samples=0)
    path = root / "base.toml"
    save_config(cfg, path)
    return path


def write_sweep(folder: Path, body: str, name: str = "s") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nbase = "{folder / "base.toml"}"\nout = "{folder / "out"}"\n' + body
    )
    return path


@pytest.fixture
def folder(base, tmp_path) -> Path:
    shutil.copy(base, tmp_path / "base.toml")
    return tmp_path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_sweep_writes_table_csv_plots_and_records_divergence(folder):
    sweep = write_sweep(
        folder,
        '[overrides]\n"train.max_steps" = 6\n"train.eval_every" = 3\n"train.checkpoint_every" = 0\n"train.min_lr" = 0.0\n'
        '[[points]]\n"train.lr" = 1e-3\n[[points]]\n"train.lr" = 1e-2\n'
        '[[points]]\nname = "boom"\n"train.lr" = 1e6\n',
    )
    res = run_sweep(sweep)
    out = folder / "out"
    assert [r["point"] for r in res.rows] == ["lr-0.001", "lr-0.01", "boom"]
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "diverged"]
    assert list(rows[0])[:2] == ["point", "train.lr"]
    for r in rows[:2]:
        assert int(r["steps"]) == 6 and int(r["tokens"]) == 6 * 4 * 16
        assert int(r["params"]) > 0 and float(r["flops"]) > 0 and float(r["tok_per_s"]) > 0
        assert math.isclose(
            float(r["perplexity"]), math.exp(float(r["final_val_loss"])), rel_tol=1e-9
        )
        assert float(r["best_val_loss"]) <= float(r["final_val_loss"])
        assert float(r["bits_per_byte"]) > 0
    assert float(rows[1]["final_val_loss"]) < math.log(64)  # it learned something
    assert rows[2]["final_val_loss"] == ""  # diverged before its first eval
    md = (out / "results.md").read_text()
    assert "| point | train.lr |" in md and "diverged" in md and f"lmlab sweep {sweep}" in md
    assert (out / "s_curves.png").stat().st_size > 1000 and (
        out / "s_summary.png"
    ).stat().st_size > 1000
    assert "![s_curves](s_curves.png)" in md
    status = {
        p["name"]: p["status"] for p in json.loads((out / "sweep.json").read_text())["points"]
    }
    assert status == {"lr-0.001": "ok", "lr-0.01": "ok", "boom": "diverged"}


def test_resume_skips_finished_points_and_continues_a_partial_one(folder, monkeypatch):
    sweep = write_sweep(
        folder, '[overrides]\n"train.max_steps" = 8\n[grid]\n"train.lr" = [1e-3, 3e-3]\n'
    )
    run_sweep(sweep)
    runs = folder / "out" / "runs"
    first_val = (runs / "lr-0.001" / "metrics.jsonl").read_text()
    # make lr-0.003 half done: drop its result and its final checkpoint (step 4 remains)
    part = runs / "lr-0.003"
    (part / "result.json").unlink()
    shutil.rmtree(part / "checkpoints" / "step_000008")
    (part / "checkpoints" / "latest").write_text("step_000004\n")
    calls = []
    real = loop.train

    def spy(cfg, resume=False, **kw):
        calls.append((Path(cfg.train.out).name, resume))
        return real(cfg, resume=resume, **kw)

    monkeypatch.setattr(sweep_module, "train", spy)
    res = run_sweep(sweep)
    assert calls == [("lr-0.003", True)]
    assert (runs / "lr-0.001" / "metrics.jsonl").read_text() == first_val
    assert [r["status"] for r in res.rows] == ["ok", "ok"] and res.rows[1]["steps"] == 8
    steps = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == list(range(1, 9))  # steps 1-4 kept, 5-8 trained after resuming
    # a third run trains nothing
    calls.clear()
    run_sweep(sweep)
    assert calls == []
    # changing a point's config (via a command-line override) retrains it from scratch
    run_sweep(sweep, overrides=["train.max_steps=2"])
    assert calls == [("lr-0.001", False), ("lr-0.003", False)]


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(folder, monkeypatch):
    sweep = write_sweep(
        folder, '[overrides]\n"train.max_steps" = 2\n[grid]\n"model.d_model" = [16, 32]\n'
    )
    real = loop.train

    def flaky(cfg, resume=False, **kw):
        if cfg.model.d_model == 16:
            raise RuntimeError("simulated out of memory")
        return real(cfg, resume=resume, **kw)

    monkeypatch.setattr(sweep_module, "train", flaky)
    res = run_sweep(sweep)
    assert [r["status"] for r in res.rows] == ["failed", "ok"]
    assert "simulated out of memory" in res.rows[0]["error"]
    assert "simulated out of memory" in (folder / "out" / "results.md").read_text()
    # a rerun retries the failed point only
    monkeypatch.setattr(sweep_module, "train", real)
    res = run_sweep(sweep)
    assert [r["status"] for r in res.rows] == ["ok", "ok"]
    assert not (folder / "out" / "runs" / "d_model-16" / "error.txt").exists()


def test_budgets_set_max_steps_and_series_group_points(folder):
    from lmlab.accounting import training_flops_per_token
    from lmlab.config import load_config

    sweep = write_sweep(
        folder,
        '[[points]]\nname = "t16"\nseries = "tokens"\n"model.d_model" = 16\nbudget_tokens = 320\n'
        '[[points]]\nname = "f16"\nseries = "flops"\n"model.d_model" = 16\nbudget_flops = 2e7\n'
        '[[points]]\nname = "f32"\nseries = "flops"\n"model.d_model" = 32\nbudget_flops = 2e7\n'
        '[plot]\nx = "params"\n',
    )
    res = run_sweep(sweep)
    steps = {r["point"]: r["steps"] for r in res.rows}
    assert steps["t16"] == 5  # 320 tokens / (4 x 16 per step)
    for name in ("f16", "f32"):
        cfg = load_config(folder / "out" / "runs" / name / "config.toml")
        assert steps[name] == round(2e7 / (64 * training_flops_per_token(cfg.model)))
    assert steps["f16"] > steps["f32"]
    assert [r["series"] for r in res.rows] == ["tokens", "flops", "flops"]
    assert (folder / "out" / "s_summary.png").is_file()


def test_worker_subprocesses_run_points_on_listed_devices(folder):
    sweep = write_sweep(
        folder,
        'devices = ["cpu", "cpu"]\n[overrides]\n"train.max_steps" = 2\n[grid]\n"train.seed" = [1, 2]\n',
    )
    res = run_sweep(sweep)
    assert [r["status"] for r in res.rows] == ["ok", "ok"]
    for name in ("seed-1", "seed-2"):
        assert (
            "done: max_steps at step 2"
            in (folder / "out" / "runs" / name / "train.log").read_text()
        )


def test_sweep_file_errors_name_the_key(folder):
    with pytest.raises(ConfigError, match="unknown key"):
        load_sweep(write_sweep(folder, 'gird = 1\n[grid]\n"train.lr" = [1e-3]\n'))
    with pytest.raises(ConfigError, match="non-empty list"):
        load_sweep(write_sweep(folder, '[grid]\n"train.lr" = 1e-3\n'))
    with pytest.raises(ConfigError, match="needs a"):
        load_sweep(write_sweep(folder, ""))
    with pytest.raises(ConfigError, match="section.name"):
        load_sweep(write_sweep(folder, "[grid]\nlr = [1, 2]\n"))
    with pytest.raises(ConfigError, match="train.lr: swept"):
        run_sweep(
            write_sweep(folder, '[grid]\n"train.lr" = [1e-3, 2e-3]\n'), overrides=["--train.lr=1"]
        )
    with pytest.raises(ConfigError, match="train.nope"):
        run_sweep(write_sweep(folder, '[grid]\n"train.nope" = [1, 2]\n'))
    # dotted (nested) keys read the same as quoted ones; grid x points is the product
    spec = load_sweep(
        write_sweep(
            folder, '[[points]]\nname = "a"\nmodel.n_layer = 1\n[grid]\ntrain.lr = [1e-3, 2e-3]\n'
        )
    )
    assert [p.name for p in spec.points] == ["a__lr-0.001", "a__lr-0.002"]
    assert spec.points[1].overrides == {"model.n_layer": 1, "train.lr": 2e-3}
    assert folder_name({"model.norm": "none", "train.lr": 1e6}) == "norm-none__lr-1e+06"


def test_sweep_cli_reports_a_bad_sweep_file_in_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text('base = "shakespeare-char"\n[grid]\n"train.lr" = 3\n')
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab", "sweep", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lmlab: error: {bad}: [grid] train.lr: expected a non-empty list of values, got 3"
    ]
