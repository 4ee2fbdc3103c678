"""Launched by test_multinode.py under torchrun: save this rank's training rows for a few steps.

python dist_batches_probe.py DATASET OUT_DIR GLOBAL_BATCH SEQ_LEN SEED STEPS -> OUT_DIR/rank_R.npy,
shape (STEPS, GLOBAL_BATCH / WORLD, SEQ_LEN + 1), read through the trainer's own loader with
the rank and world size torchrun gave this process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lmlab.data.loader import BatchLoader, TokenSplit
from lmlab.train import distributed as dd

if __name__ == "__main__":
    data, out, batch, seq_len, seed, steps = (
        sys.argv[1],
        Path(sys.argv[2]),
        *map(int, sys.argv[3:7]),
    )
    info = dd.from_env()
    loader = BatchLoader(
        TokenSplit(data, "train"), seq_len, batch, batch // info.world, seed, info.rank, info.world
    )
    rows = np.stack([loader.rank_windows(s) for s in range(steps)])
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"rank_{info.rank}.npy", rows)
    (out / f"world_{info.rank}.txt").write_text(f"{info.world} {info.local_rank}\n")
