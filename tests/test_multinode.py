"""Past one machine: torchrun's c10d rendezvous, 2 "nodes" of 1 process each on 127.0.0.1.

Each node is its own torchrun (``--nnodes=2 --node-rank=R --rdzv-backend=c10d
--rdzv-endpoint=127.0.0.1:PORT``), as on two machines; the data each rank reads follows from
the global RANK and WORLD_SIZE alone, so it is disjoint and together the global batch for any
number of nodes and processes per node.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmlab.config import to_toml
from lmlab.data.loader import BatchLoader, TokenSplit
from lmlab_train_fixtures import losses, make_text, tiny_config, write_dataset

TORCHRUN = Path(sys.executable).with_name("torchrun")
HAVE_TORCHRUN = TORCHRUN.exists() or shutil.which("torchrun") is not None
PROBE = Path(__file__).with_name("dist_batches_probe.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(args: list[str], tmp_path: Path, tag: str) -> list[subprocess.CompletedProcess]:
    """Run ``args`` (after torchrun's own flags) as 2 nodes x 1 process; both must succeed."""
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else str(shutil.which("torchrun"))
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node in (0, 1):
        cmd = [
            torchrun,
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node-rank={node}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id=lmlab-{tag}",
            *args,
        ]
        log = open(tmp_path / f"{tag}_node{node}.log", "w+")
        procs.append(
            (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log)
        )
    out = []
    try:
        for p, log in procs:
            rc = p.wait(timeout=300)
            log.seek(0)
            text = log.read()
            assert rc == 0, text[-3000:]
            out.append(subprocess.CompletedProcess(p.args, rc, text, ""))
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    return out


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_rank_shares_partition_the_global_batch(tmp_path, world):
    data = write_dataset(tmp_path / "ds", make_text(40))
    split = TokenSplit(data, "train")
    batch = 24
    for step in (0, 1, 7):
        full = BatchLoader(split, 16, batch, batch, 5).global_windows(step)
        shares = [
            BatchLoader(split, 16, batch, batch // world, 5, r, world).rank_windows(step)
            for r in range(world)
        ]
        # rank r reads rows [r*B/W, (r+1)*B/W) of the global batch: disjoint, and all of it together
        assert [len(s) for s in shares] == [batch // world] * world
        np.testing.assert_array_equal(np.concatenate(shares), full)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TORCHRUN, reason="torchrun not installed")
def test_two_nodes_over_c10d_match_one_process(tmp_path):
    data = write_dataset(tmp_path / "ds", make_text(40))
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
    one = subprocess.run(
        [sys.executable, "-m", "lmlab", "train", str(toml), "--out", str(tmp_path / "one")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    runs = _two_nodes(
        ["-m", "lmlab", "train", str(toml), "--out", str(tmp_path / "two")], tmp_path, "train"
    )
    assert any("2 process(es)" in r.stdout for r in runs)
    l1, l2 = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(l2) == [1, 2, 3, 4]
    for step in l1:  # the same global batch, split over the nodes (tolerance: see test_fsdp.py)
        assert l2[step] == pytest.approx(l1[step], rel=1e-5)

    # what each node's rank read: disjoint halves that together are the 1-process global batch
    rows = tmp_path / "rows"
    _two_nodes([str(PROBE), str(data), str(rows), "8", "16", "3", "3"], tmp_path, "rows")
    assert sorted((rows / f"world_{r}.txt").read_text().split()[0] for r in (0, 1)) == ["2", "2"]
    r0, r1 = np.load(rows / "rank_0.npy"), np.load(rows / "rank_1.npy")
    full = BatchLoader(TokenSplit(data, "train"), 16, 8, 8, 3)
    for step in range(3):
        np.testing.assert_array_equal(
            np.concatenate([r0[step], r1[step]]), full.global_windows(step)
        )
