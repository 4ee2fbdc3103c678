"""Sweep points in worker subprocesses: one per device slot, each taking the next point it may.

:func:`run_parallel` starts ``python -m lmlab.experiments.worker POINT_CONFIG`` per slot ("cpu"
workers share the cores, a GPU id gets CUDA_VISIBLE_DEVICES) and records a failed point in
its ``error.txt``; :func:`resolve_devices` turns a sweep's ``devices`` into slots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmlab.config import Config, save_config
from lmlab.experiments.spec import SweepSpec
from lmlab.io import atomic_write_text, open_append
from lmlab.outputs import check_output, refuse_links, write_marker

POINT_CONFIG = "sweep_point.toml"
ERROR_FILE = "error.txt"


def record_failure(run_dir: Path, message: str) -> None:
    atomic_write_text(run_dir / ERROR_FILE, message.rstrip() + "\n")


def claim_run_dir(run_dir: Path) -> None:
    """Check a point's run folder is absent, empty or a run, and mark it, before the sweep
    writes its point config and log there (the worker's trainer checks it again)."""
    path = check_output(run_dir, "run", whole=False)
    refuse_links(path, (POINT_CONFIG, "train.log"))
    path.mkdir(parents=True, exist_ok=True)
    write_marker(path, "run", run_dir=str(path))


def _ready_job(
    pending: list[tuple[Config, bool]], prepare: Callable[[Config], Config | None]
) -> tuple[Config, bool] | None:
    """The first pending job ``prepare`` lets start, as prepared, taken off ``pending``."""
    for i, (cfg, resume) in enumerate(pending):
        ready = prepare(cfg)
        if ready is not None:
            del pending[i]
            return ready, resume
    return None


def resolve_devices(spec: SweepSpec, cfg: Config) -> list[str]:
    """Worker slots: [] means in-process; else one entry per worker ("cpu" or a GPU id)."""
    if spec.devices != "auto":
        return [d.removeprefix("cuda:") for d in spec.devices]
    if cfg.train.device not in ("auto", "cuda"):
        return []

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = (
        [v.strip() for v in visible.split(",") if v.strip()]
        if visible
        else [str(i) for i in range(torch.cuda.device_count())]
    )
    return ids[: torch.cuda.device_count()]


def _worker_env(device: str, n_cpu_workers: int) -> tuple[dict[str, str], str]:
    env = dict(os.environ)
    if device == "cpu":
        # share the cores among the CPU workers instead of each grabbing all of them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(n_cpu_workers, 1)))
        return env, "cpu"
    env["CUDA_VISIBLE_DEVICES"] = device
    return env, "cuda"


def run_parallel(
    jobs: list[tuple[Config, bool]],
    devices: list[str],
    log=print,
    prepare: Callable[[Config, set[Path]], Config | None] | None = None,
) -> None:
    """One worker subprocess per device; each takes the next pending point when it is free,
    the first one ``prepare`` (given the run folders pending or running) lets start."""
    pending = list(jobs)
    running: dict[str, tuple[subprocess.Popen, Config, Any]] = {}
    n_cpu = sum(d == "cpu" for d in devices)
    slots = [f"{d}#{i}" for i, d in enumerate(devices)]
    try:
        while pending or running:
            for slot in slots:
                if slot in running or not pending:
                    continue
                busy = {Path(c.train.out).resolve() for c, _ in pending} | {
                    Path(c.train.out).resolve() for _, c, _ in running.values()
                }
                job = _ready_job(pending, lambda c, busy=busy: prepare(c, busy) if prepare else c)
                if job is None:
                    continue  # every pending seed waits for its seed 0's precision
                cfg, resume = job
                device = slot.split("#")[0]
                env, dev = _worker_env(device, n_cpu)
                cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=dev))
                run_dir = Path(cfg.train.out)
                claim_run_dir(run_dir)
                save_config(cfg, run_dir / POINT_CONFIG)
                logf = open_append(run_dir / "train.log")  # closed on exit
                cmd = [
                    sys.executable,
                    "-m",
                    "lmlab.experiments.worker",
                    str(run_dir / POINT_CONFIG),
                ]
                if resume:
                    cmd.append("--resume")
                log(
                    f"[sweep] {run_dir.name}: {'resuming' if resume else 'starting'} on {device} (log: {run_dir / 'train.log'})"
                )
                proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
                running[slot] = (proc, cfg, logf)
            for slot, (proc, cfg, logf) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                logf.close()
                del running[slot]
                name = Path(cfg.train.out).name
                if rc != 0 and not (Path(cfg.train.out) / ERROR_FILE).exists():
                    record_failure(
                        Path(cfg.train.out), f"worker exited with status {rc}; see train.log"
                    )
                log(f"[sweep] {name}: {'done' if rc == 0 else f'failed (exit {rc})'}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        # the workers checkpoint on SIGTERM (the training loop's stop signal), then exit
        for proc, _, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc, _, logf in running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=120)
            logf.close()
        raise
