"""FSDP2 under torchrun on CPU (gloo): train.parallel = "fsdp" against one process.

Tolerance: as in test_ddp.py, one process runs the global batch of 8 as 2 micro-batches of 4
and each of the two FSDP ranks one micro-batch of 4, so every forward is the same float32
computation on the same rows; what differs is the order the gradients are summed in (two
micro-batches in one buffer vs a reduce-scatter that averages two ranks), a few float32 ulps
(2**-23 ~ 1.2e-7 relative) per step. AdamW divides by sqrt(v), so such differences pass into
the weights at about the same relative size, and 20 steps of them stay within about 1e-6 of
the loss (measured: 1.1e-7, one ulp, at worst): 1e-5 leaves a margin, while a wrong reduction
(a sum instead of a mean, a rank's shard missing) moves the loss by 1e-2 or more from the
second step on.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.config import to_toml
from lmlab_train_fixtures import losses, make_text, tiny_config, write_dataset

TORCHRUN = Path(sys.executable).with_name("torchrun")
HAVE_TORCHRUN = TORCHRUN.exists() or shutil.which("torchrun") is not None
STEPS = 20
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun() -> str:
    return str(TORCHRUN) if TORCHRUN.exists() else str(shutil.which("torchrun"))


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def _train(toml: Path, out: Path, procs: int, *extra: str) -> subprocess.CompletedProcess:
    lm = ["-m", "lmlab", "train", str(toml), *extra, "--out", str(out)]
    if procs == 1:
        return _run([sys.executable, *lm])
    return _run([_torchrun(), "--standalone", f"--nproc_per_node={procs}", *lm])


def _rewind(src: Path, dst: Path, step: int) -> None:
    """A copy of run ``src`` as if it had been stopped right after checkpoint ``step``."""
    shutil.copytree(src, dst)
    for p in (dst / "checkpoints").glob("step_*"):
        if int(p.name.split("_")[1]) > step:
            shutil.rmtree(p)
    (dst / "checkpoints" / "latest").write_text(f"step_{step:06d}\n")


def _state_bytes(run: Path) -> int:
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "state_bytes" in rec:
            return rec["state_bytes"]
    raise AssertionError(f"{run}: no state_bytes record")


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TORCHRUN, reason="torchrun not installed")
def test_fsdp_matches_one_process_checkpoints_and_resumes(tmp_path):
    data = write_dataset(tmp_path / "ds", make_text(40))
    # global batch 8: one process does 2 micro-batches of 4, each of two FSDP ranks one of 4
    cfg = tiny_config(
        data,
        tmp_path / "one",
        model__d_model=64,
        train__max_steps=STEPS,
        train__batch_size=8,
        train__micro_batch_size=4,
        train__eval_every=10,
        train__checkpoint_every=10,
        eval__samples=1,
    )
    toml = tmp_path / "cfg.toml"
    toml.write_text(to_toml(cfg))
    one, two = tmp_path / "one", tmp_path / "two"
    _train(toml, one, 1)
    proc = _train(toml, two, 2, "--train.parallel=fsdp")
    assert "sharded over 2" in proc.stdout

    # 1) the same losses as one process
    l1, l2 = losses(one), losses(two)
    assert sorted(l2) == list(range(1, STEPS + 1))
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-5, abs=0), step
    v1, v2 = losses(one, "val_loss"), losses(two, "val_loss")
    assert sorted(v2) == [10, 20]
    for step in v1:
        assert v2[step] == pytest.approx(v1[step], rel=1e-5)

    # 2) parameters + gradients + optimizer state per rank: half of one process's (every
    # tensor's first dimension is even here, so the shards are exact halves, up to AdamW's
    # 4-byte step counters)
    ratio = _state_bytes(two) / _state_bytes(one)
    assert 0.49 < ratio < 0.51, ratio

    # 3) one ordinary checkpoint: the same files and tensor names as one process's
    from safetensors.torch import load_file

    w1 = load_file(str(one / "checkpoints" / "step_000020" / "model.safetensors"))
    w2 = load_file(str(two / "checkpoints" / "step_000020" / "model.safetensors"))
    assert sorted(w1) == sorted(w2)
    import torch

    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    state = json.loads((two / "checkpoints" / "step_000020" / "state.json").read_text())
    assert state["world_size"] == 2

    # 4) --resume under FSDP from step 10 continues exactly as the uninterrupted FSDP run
    _rewind(two, tmp_path / "two_resumed", 10)
    _train(toml, tmp_path / "two_resumed", 2, "--train.parallel=fsdp", "--resume")
    lr2 = losses(tmp_path / "two_resumed")
    assert sorted(lr2) == list(range(1, STEPS + 1))
    for step in range(11, STEPS + 1):
        assert lr2[step] == l2[step], step

    # 5) one process resumes the FSDP checkpoint (weights and AdamW moments) as if it were its own
    _rewind(two, tmp_path / "one_from_fsdp", 10)
    _train(toml, tmp_path / "one_from_fsdp", 1, "--resume")
    lr1 = losses(tmp_path / "one_from_fsdp")
    for step in range(11, STEPS + 1):
        assert lr1[step] == pytest.approx(l1[step], rel=1e-5), step

    # 6) eval, sample and export read it unchanged
    ev1 = json.loads(_run([sys.executable, "-m", "lmlab", "eval", str(one), "--json"]).stdout)
    ev2 = json.loads(_run([sys.executable, "-m", "lmlab", "eval", str(two), "--json"]).stdout)
    assert ev2["val_loss"] == pytest.approx(ev1["val_loss"], rel=1e-4)
    s = _run(
        [
            sys.executable,
            "-m",
            "lmlab",
            "sample",
            str(two),
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
        ]
    )
    assert s.stdout.strip()
    _run(
        [
            sys.executable,
            "-m",
            "lmlab",
            "export",
            str(two),
            "--format",
            "hf",
            "--out",
            str(tmp_path / "hf"),
        ]
    )
    assert (tmp_path / "hf" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TORCHRUN, reason="torchrun not installed")
def test_fsdp_bf16_mixed_precision_with_activation_checkpointing(tmp_path):
    # bf16 parameters for compute with fp32 reductions over gloo, blocks recomputed in backward
    data = write_dataset(tmp_path / "ds", make_text(40))
    cfg = tiny_config(
        data,
        tmp_path / "r",
        train__max_steps=6,
        train__batch_size=8,
        train__eval_every=0,
        eval__samples=0,
        train__dtype="bfloat16",
        train__parallel="fsdp",
        train__activation_checkpointing=True,
    )
    toml = tmp_path / "cfg.toml"
    toml.write_text(to_toml(cfg))
    _train(toml, tmp_path / "fsdp", 2)
    ref = copy.deepcopy(cfg)
    toml32 = tmp_path / "cfg32.toml"
    ref.train.dtype = "float32"
    ref.train.activation_checkpointing = False
    toml32.write_text(to_toml(ref))
    _train(toml32, tmp_path / "fp32", 1)
    lb, lf = losses(tmp_path / "fsdp"), losses(tmp_path / "fp32")
    assert sorted(lb) == list(range(1, 7))
    # bf16 keeps 8 bits of mantissa (relative error 2**-9 ~ 2e-3 per rounding); over a few
    # steps the loss stays within 2% of fp32, while training still makes it fall
    for step in lf:
        assert lb[step] == pytest.approx(lf[step], rel=2e-2), step
    assert lb[6] < lb[1]
