"""Parameters + gradients + optimizer state per process: 1 process, DDP over 2, FSDP over 2.

Trains the TinyStories shape (8 layers, width 512, SwiGLU 1408, vocab 10000, ~31M params) for
2 steps on synthetic tokens on the CPU (gloo) and reads the ``state_bytes`` the trainer
records after its first update: the bytes this process holds for parameters, gradients and
AdamW moments (its local shards under FSDP; the maximum over ranks).

    .venv/bin/python bench/fsdp_memory.py [--procs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from lmlab.config import from_dict, to_toml

MODEL = {
    "n_layer": 8,
    "n_head": 8,
    "d_model": 512,
    "d_ff": 1408,
    "context_length": 256,
    "vocab_size": 10000,
    "norm": "rmsnorm",
    "position": "rope",
    "mlp": "swiglu",
    "bias": False,
    "tie_embeddings": True,
}


def dataset(folder: Path, vocab: int, tokens: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "val"):
        rng.integers(0, vocab, size=tokens).astype("<u2").tofile(folder / f"{split}_000000.bin")
        splits[split] = {
            "tokens": tokens,
            "documents": 1,
            "bytes": 0,
            "shards": [f"{split}_000000.bin"],
        }
    meta = {
        "format": "lmlab-tokens-v1",
        "dtype": "uint16",
        "vocab_size": vocab,
        "eot_id": 0,
        "tokenizer": "",
        "splits": splits,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def state_bytes(run: Path) -> int:
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "state_bytes" in rec:
            return int(rec["state_bytes"])
    raise RuntimeError(f"{run}: no state_bytes record")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fsdp_mem_"))
    data = dataset(tmp / "data", MODEL["vocab_size"], 200_000)
    n = args.procs
    tree = {
        "model": MODEL,
        "data": {"path": str(data)},
        "train": {
            "max_steps": 2,
            "batch_size": 2 * n,
            "micro_batch_size": 2,
            "eval_every": 0,
            "checkpoint_every": 0,
            "device": "cpu",
            "log_every": 1,
            "warmup_steps": 1,
        },
        "eval": {"batches": 1, "samples": 0},
        "log": {"progress": False},
    }
    cfg = tmp / "cfg.toml"
    cfg.write_text(to_toml(from_dict(tree).validate()))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = []
    for label, launch, extra in (
        ("1 process", [sys.executable], []),
        (f"DDP, {n} processes", [torchrun, "--standalone", f"--nproc_per_node={n}"], []),
        (
            f"FSDP, {n} processes",
            [torchrun, "--standalone", f"--nproc_per_node={n}"],
            ["--train.parallel=fsdp"],
        ),
    ):
        run = tmp / label.split(",")[0].replace(" ", "_")
        cmd = [*launch, "-m", "lmlab", "train", str(cfg), *extra, "--out", str(run)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append((label, state_bytes(run)))
    base = rows[0][1]
    print("| run | params + grads + AdamW state per process | vs 1 process |")
    print("|---|---|---|")
    for label, b in rows:
        print(f"| {label} | {b / 2**20:.1f} MiB | {b / base:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
