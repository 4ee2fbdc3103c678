"""Training speed on the shakespeare-char setup: lmlab's loop vs a bare nanoGPT-style loop.

Config (nanoGPT's shakespeare_char baby GPT, CPU-sized): 4 layers, 4 heads, width 128,
context 64, batch 12, AdamW lr 1e-3. nanoGPT's figure for this on 2 CPU cores is ~52 ms/iter.

Both loops use the same model (lmlab.model), the same token windows from the same memmap, the
same optimizer settings; the peer is the minimal loop (fancy-index a batch, forward, loss,
backward, clip, step) with no logging, guards or checkpointing. The ratio lmlab/peer is
lmlab's per-step overhead. Rounds alternate the two loops so background load hits both. CPU
time (process_time, all threads) is printed beside wall time: on a machine shared with other
jobs it is the steadier figure (run with OMP_NUM_THREADS=1 there, so it holds no spin-waiting).

    .venv/bin/python bench/train_speed.py [--steps 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.config import from_dict
from lmlab.model import build_model
from lmlab.train.loop import train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def make_dataset(folder: Path) -> Path:
    """Char-level tokens of tinyshakespeare (random tokens if the shared data is absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    if SHARED.exists():
        text = SHARED.read_text(encoding="utf-8")
        chars = sorted(set(text))
        ids = np.array([chars.index(c) for c in text[:300_000]], dtype=np.uint16)
        vocab = len(chars)
    else:
        vocab = 65
        ids = np.random.default_rng(0).integers(0, vocab, 300_000).astype(np.uint16)
    n_val = len(ids) // 10
    ids[n_val:].tofile(folder / "train_000000.bin")
    ids[:n_val].tofile(folder / "val_000000.bin")
    meta = {
        "format": "lmlab-tokens-v1", "dtype": "uint16", "vocab_size": vocab, "eot_id": None,
        "splits": {
            "train": {"tokens": len(ids) - n_val, "documents": 1, "bytes": len(ids) - n_val, "shards": ["train_000000.bin"]},
            "val": {"tokens": n_val, "documents": 1, "bytes": n_val, "shards": ["val_000000.bin"]},
        },
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def config(data: Path, out: Path, steps: int):
    return from_dict(
        {
            "model": {"n_layer": 4, "n_head": 4, "d_model": 128, "context_length": 64, "dropout": 0.0},
            "data": {"path": str(data)},
            "optim": {"beta2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0},
            "train": {
                "max_steps": steps, "batch_size": 12, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10,
                "eval_every": 0, "checkpoint_every": 0, "log_every": steps, "device": "cpu", "out": str(out),
            },
            "eval": {"batches": 1, "samples": 0},
            "log": {"progress": False},
        }
    ).validate()


def lmlab_ms_per_step(data: Path, tmp: Path, steps: int) -> tuple[float, float]:
    """(wall, CPU) ms per step of train(), minus its fixed start/end cost (a 1-step run)."""
    def timed(n: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        train(config(data, tmp / f"run{n}", n))
        return time.perf_counter() - t0, time.process_time() - c0

    timed(5)  # warm caches
    base = timed(1)
    full = timed(steps + 1)
    return 1000.0 * (full[0] - base[0]) / steps, 1000.0 * (full[1] - base[1]) / steps


def peer_ms_per_step(data: Path, steps: int) -> tuple[float, float]:
    cfg = config(data, Path("unused"), steps)
    meta = json.loads((data / "meta.json").read_text())
    cfg.model.vocab_size = meta["vocab_size"]
    torch.manual_seed(0)
    model = build_model(cfg.model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))
    mm = np.memmap(data / "train_000000.bin", dtype=np.uint16, mode="r")
    rng = np.random.default_rng(0)
    T, B = 64, 12
    offs = np.arange(T + 1)

    def step() -> None:
        ix = rng.integers(0, len(mm) - T - 1, B)
        w = torch.from_numpy(mm[ix[:, None] + offs].astype(np.int64))
        x, y = w[:, :-1], w[:, 1:]
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return 1000.0 * (time.perf_counter() - t0) / steps, 1000.0 * (time.process_time() - c0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, data: {'tinyshakespeare' if SHARED.exists() else 'random'}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = make_dataset(tmp / "ds")
        ours, peer = [], []
        for r in range(args.rounds):
            peer.append(peer_ms_per_step(data, args.steps))
            ours.append(lmlab_ms_per_step(data, tmp / f"r{r}", args.steps))
            print(f"round {r + 1}: lmlab {ours[-1][0]:.1f} ms/iter wall, {ours[-1][1]:.1f} CPU; "
                  f"bare loop {peer[-1][0]:.1f} wall, {peer[-1][1]:.1f} CPU", flush=True)
    for i, kind in enumerate(("wall", "CPU")):
        o, p = statistics.median(x[i] for x in ours), statistics.median(x[i] for x in peer)
        print(f"{kind}: median over {args.rounds} rounds of {args.steps} steps: lmlab {o:.1f} ms/iter, "
              f"bare loop {p:.1f} ms/iter, ratio {o / p:.2f}x; best lmlab {min(x[i] for x in ours):.1f}, "
              f"best bare {min(x[i] for x in peer):.1f} (nanoGPT: ~52 ms/iter wall on 2 cores)")
        assert math.isfinite(o)


if __name__ == "__main__":
    main()
