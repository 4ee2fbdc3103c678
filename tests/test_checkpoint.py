"""Checkpoints: exact resume, SIGKILL and Ctrl-C recovery, corrupt files, pruning, loading."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab.config import ModelConfig, to_toml
from lmlab.errors import CheckpointError
from lmlab.model import build_model
from lmlab.train import checkpoint as ck
from lmlab.train.loop import train
from lmlab_train_fixtures import losses, make_text, tiny_config, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", make_text())


def ref_config(dataset: Path, out: Path):
    # dropout > 0, so an exact resume also needs the torch RNG state back
    return tiny_config(
        dataset,
        out,
        model__dropout=0.1,
        train__checkpoint_every=3,
        train__keep_checkpoints=10,
        train__eval_every=6,
    )


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    train(ref_config(dataset, run))
    return run


def _rewind(reference: Path, dest: Path, step: int) -> Path:
    """A copy of the reference run as if it had stopped right after checkpoint ``step``."""
    shutil.copytree(reference, dest)
    for p in (dest / "checkpoints").glob("step_*"):
        if int(p.name[5:]) > step:
            shutil.rmtree(p)
    (dest / "checkpoints" / "latest").write_text(ck.checkpoint_name(step) + "\n")
    return dest


def test_resume_is_exact(dataset, reference, tmp_path):
    run = _rewind(reference, tmp_path / "run", 6)
    result = train(ref_config(dataset, run), resume=True)
    assert result.steps == 12
    ref, got = losses(reference), losses(run)
    # the metrics file continues where the checkpoint stopped, without repeated steps
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [
        json.loads(line)["step"] for line in (reference / "metrics.jsonl").read_text().splitlines()
    ]
    for step in range(7, 13):
        assert got[step] == ref[step], step  # bit for bit
    assert losses(run, "val_loss") == losses(reference, "val_loss")
    # resuming a finished run does nothing more
    again = train(ref_config(dataset, run), resume=True)
    assert again.steps == 12 and (run / "metrics.jsonl").read_text().count("\n") == len(steps)


def test_resume_depends_on_restored_rng(dataset, reference, tmp_path):
    # control: with another torch RNG state the dropout masks, hence the losses, differ
    run = _rewind(reference, tmp_path / "run", 6)
    state_path = run / "checkpoints" / "step_000006" / "state.json"
    state = json.loads(state_path.read_text())
    torch.manual_seed(12345)
    state["rng"][0]["torch"] = ck._b64(torch.get_rng_state())
    state_path.write_text(json.dumps(state))
    train(ref_config(dataset, run), resume=True)
    assert losses(run)[7] != losses(reference)[7]


def test_resume_with_another_model_shape_fails(dataset, reference, tmp_path):
    run = _rewind(reference, tmp_path / "run", 6)
    cfg = ref_config(dataset, run)
    cfg.model.d_model = 64
    with pytest.raises(CheckpointError, match=r"model\.d_model: checkpoint 32, config 64"):
        train(cfg, resume=True)


def _env() -> dict[str, str]:
    # same thread count as this process, so float results match the in-process reference
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"training exited early ({proc.returncode}): {err[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the training subprocess")
        time.sleep(0.01)


def test_sigkill_resumes_from_last_complete_checkpoint(dataset, tmp_path):
    cfg = tiny_config(
        dataset,
        tmp_path / "killed",
        train__max_steps=24,
        train__checkpoint_every=3,
        train__eval_every=0,
        eval__samples=0,
    )
    toml = tmp_path / "cfg.toml"
    toml.write_text(to_toml(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmlab", "train", str(toml)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = tmp_path / "killed"
    _wait_for(lambda: (run / "checkpoints" / "latest").exists(), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "result.json").exists()  # it really died mid-run
    killed_at = ck.resolve_checkpoint(run).name
    result = train(cfg, resume=True)
    assert result.steps == 24 and not result.diverged
    ref = train(
        tiny_config(
            dataset,
            tmp_path / "ref",
            train__max_steps=24,
            train__checkpoint_every=3,
            train__eval_every=0,
            eval__samples=0,
        )
    )
    got, want = losses(run), losses(Path(ref.run_dir))
    assert sorted(got) == list(range(1, 25)), killed_at
    assert got == want


def test_ctrl_c_saves_a_checkpoint_and_exits(dataset, tmp_path):
    cfg = tiny_config(
        dataset,
        tmp_path / "run",
        train__max_steps=100000,
        train__checkpoint_every=0,
        train__eval_every=0,
        eval__samples=0,
    )
    toml = tmp_path / "cfg.toml"
    toml.write_text(to_toml(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmlab", "train", str(toml)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, proc)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in out + err
    state = ck.read_state(ck.resolve_checkpoint(tmp_path / "run"))
    assert state["step"] >= 3
    assert max(losses(tmp_path / "run")) == state["step"]


def test_load_model_for_inference(reference):
    model, cfg, tok = ck.load_model_for_inference(reference)
    assert cfg.model.vocab_size == tok.vocab_size and not model.training
    same, _, _ = ck.load_model_for_inference(reference / "checkpoints" / "step_000012")
    x = torch.tensor([tok.encode("the cat sat")])
    torch.testing.assert_close(model(x), same(x), rtol=0, atol=0)
    assert tok.decode(tok.encode("the dog")) == "the dog"


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "state.json", "config.toml"])
def test_corrupt_checkpoint_names_the_file(reference, tmp_path, name):
    ckpt = tmp_path / "step_000012"
    shutil.copytree(reference / "checkpoints" / "step_000012", ckpt)
    (ckpt / name).write_bytes(b"\x00garbage" * 3)
    model = build_model(ck.read_config(reference / "checkpoints" / "step_000012").model)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        if name == "optimizer.pt":
            ck.load_training_state(ckpt, opt, None)
        elif name == "state.json":
            ck.read_state(ckpt)
        else:
            ck.load_model_for_inference(ckpt)
    (ckpt / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name}: missing"):
        ck.resolve_checkpoint(ckpt)


def test_missing_run_and_empty_run(tmp_path):
    with pytest.raises(CheckpointError, match="no such run"):
        ck.resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        ck.load_model_for_inference(tmp_path / "empty")


def test_keep_last_n_plus_best_and_partial_folders(tmp_path):
    from lmlab.config import Config

    cfg = Config()
    cfg.model = ModelConfig(vocab_size=16, n_layer=1, n_head=1, d_model=8, context_length=4)
    model = build_model(cfg.model)
    root = tmp_path / "checkpoints"
    for step in range(1, 6):
        ck.save_checkpoint(root, step, model, None, None, {"rng": []}, cfg, keep=2, best_step=2)
    assert sorted(p.name for p in root.glob("step_*")) == [
        "step_000002",
        "step_000004",
        "step_000005",
    ]
    assert (root / "latest").read_text().strip() == "step_000005"
    # a half-written folder from a killed save is never picked, and is cleaned up
    (root / ".step_000006.tmp-99999999-abc").mkdir()  # lmlab's naming, its process (pid) gone
    (root / ".step_000008.tmp-x1y2z3w4").mkdir()  # the older mkdtemp naming
    (root / ".step_notes").mkdir()  # not lmlab's naming: kept
    (root / "step_000007").mkdir()  # incomplete: no files
    (root / "latest").unlink()
    assert ck.resolve_checkpoint(tmp_path).name == "step_000005"
    ck.clean_partial(root)
    assert not (root / ".step_000006.tmp-99999999-abc").exists()
    assert not (root / ".step_000008.tmp-x1y2z3w4").exists()
    assert (root / ".step_notes").is_dir()
