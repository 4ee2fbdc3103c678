"""`lmlab compare`: the table and curves for runs that already exist."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.errors import CheckpointError
from lmlab.experiments.compare import compare_runs
from lmlab.train.loop import train
from lmlab_train_fixtures import make_text, tiny_config, write_dataset


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("cmp")
    data = write_dataset(root / "ds", make_text(30))
    out = []
    for name, lr in (("slow", 1e-4), ("fast", 1e-2)):
        cfg = tiny_config(
            data,
            root / name,
            train__max_steps=6,
            train__lr=lr,
            train__min_lr=0.0,
            train__eval_every=3,
            train__checkpoint_every=0,
            eval__samples=0,
        )
        train(cfg)
        out.append(root / name)
    return out


def test_compare_tables_and_plots_existing_runs(runs, tmp_path):
    printed = []
    res = compare_runs(runs, out=tmp_path / "cmp", log=printed.append)
    # the only config key that differs is the learning rate
    assert res.columns[:2] == ["run", "train.lr"]
    assert [r["run"] for r in res.rows] == ["slow", "fast"]
    assert [r["train.lr"] for r in res.rows] == [1e-4, 1e-2]
    assert all(r["status"] == "ok" and r["steps"] == 6 for r in res.rows)
    # the same numbers as the runs' own metrics
    vals = [
        json.loads(line)["val_loss"]
        for line in (runs[1] / "metrics.jsonl").read_text().splitlines()
        if "val_loss" in line
    ]
    assert res.rows[1]["final_val_loss"] == pytest.approx(vals[-1]) and res.rows[1][
        "best_val_loss"
    ] == pytest.approx(min(vals))
    assert (
        res.rows[1]["final_val_loss"] < res.rows[0]["final_val_loss"]
    )  # the higher lr learns faster in 6 steps
    assert "| run | train.lr |" in printed[0]
    with open(tmp_path / "cmp" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert math.isclose(
        float(rows[0]["final_val_loss"]), res.rows[0]["final_val_loss"], rel_tol=1e-12
    )
    for name in ("compare_curves.png", "compare_summary.png", "results.md"):
        assert (tmp_path / "cmp" / name).stat().st_size > 100
    assert "![compare_curves](compare_curves.png)" in (tmp_path / "cmp" / "results.md").read_text()


def test_compare_marks_a_diverged_run_and_a_partial_one(runs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.toml").write_text((runs[0] / "config.toml").read_text())
    lines = (runs[0] / "metrics.jsonl").read_text().splitlines()[:2]
    (broken / "metrics.jsonl").write_text(
        "\n".join(lines + ['{"step": 3, "train_loss": null, "diverged": true}']) + "\n"
    )
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.toml").write_text((runs[0] / "config.toml").read_text())
    (partial / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    res = compare_runs([runs[0], broken, partial], log=lambda s: None)
    assert [r["status"] for r in res.rows] == ["ok", "diverged", "partial"]
    assert res.columns[1] == "params"  # identical configs: no differing keys


def test_compare_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(CheckpointError, match="not a run folder"):
        compare_runs([tmp_path])
    with pytest.raises(CheckpointError, match="no such run folder"):
        compare_runs([tmp_path / "nope"])


def test_compare_cli(runs, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab", "compare", *map(str, runs), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| run | train.lr |" in proc.stdout and (tmp_path / "o" / "results.csv").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "lmlab", "compare", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "lmlab: error:" in bad.stderr and "missing" in bad.stderr
