"""DDP under torchrun on CPU (gloo): 2 processes give the losses of 1 with the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.config import to_toml
from lmlab_train_fixtures import losses, make_text, tiny_config, write_dataset

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.slow
@pytest.mark.skipif(
    not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed"
)
def test_two_processes_match_one(tmp_path):
    data = write_dataset(tmp_path / "ds", make_text(40))
    # global batch 8: one process does 2 micro-batches of 4, each of two processes one of 4
    cfg = tiny_config(
        data,
        tmp_path / "one",
        train__max_steps=4,
        train__batch_size=8,
        train__micro_batch_size=4,
        train__eval_every=2,
        train__checkpoint_every=2,
        eval__samples=0,
    )
    toml = tmp_path / "cfg.toml"
    toml.write_text(to_toml(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    # in float64: one process and two sum the gradients in a different order, which in float32
    # moves the losses by CPU-dependent amounts (Adam amplifies them); in float64 by ~1e-15
    entry = tmp_path / "lmlab_f64.py"
    entry.write_text(
        "import sys, torch\ntorch.set_default_dtype(torch.float64)\n"
        "from lmlab.cli import main\nsys.exit(main())\n"
    )
    for cmd in (
        [sys.executable, str(entry), "train", str(toml), "--out", str(tmp_path / "one")],
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            str(entry),
            "train",
            str(toml),
            "--out",
            str(tmp_path / "two"),
        ],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    for run in ("one", "two"):  # the runs really were in float64
        weights = load_file(
            str(tmp_path / run / "checkpoints" / "step_000004" / "model.safetensors")
        )
        assert {str(w.dtype) for w in weights.values()} == {"torch.float64"}
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-10, abs=0)
    v1, v2 = losses(tmp_path / "one", "val_loss"), losses(tmp_path / "two", "val_loss")
    assert sorted(v2) == [2, 4]
    for step in v1:
        assert v2[step] == pytest.approx(v1[step], rel=1e-10, abs=0)
    # rank 0 alone wrote the run folder; the checkpoint holds both ranks' RNG states
    import json

    state = json.loads(
        (tmp_path / "two" / "checkpoints" / "step_000004" / "state.json").read_text()
    )
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert "2 process(es)" in proc.stdout


def test_a_refused_run_folder_stops_every_rank(tmp_path):
    """Rank 0 refuses a folder that holds a run (no --resume/--force): every rank stops with
    one line and status 2. Launched without torchrun (RANK/WORLD_SIZE set by hand, as a cluster
    launcher does): rank 1 used to go on to its first collective and die there with gloo's
    traceback and status 1 when rank 0 left (or wait, where the peer's exit goes unnoticed)."""
    import socket

    data = write_dataset(tmp_path / "ds", make_text(40))
    cfg = tiny_config(data, tmp_path / "run", train__max_steps=2, eval__samples=0)
    toml = tmp_path / "cfg.toml"
    toml.write_text(to_toml(cfg))
    first = subprocess.run(
        [sys.executable, "-m", "lmlab", "train", str(toml)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lmlab", "train", str(toml)],
            env={
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [2, 2], outs
    assert "holds a run" in outs[0][1] and "refused by rank 0" in outs[1][1]
