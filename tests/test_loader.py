"""The batch loader: deterministic per step, rank slices, shard boundaries, whole-split windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmlab.data.loader import BatchLoader, TokenSplit, contiguous_windows, fixed_windows, parse_mix
from lmlab.errors import DataError


def write_ds(folder: Path, train: np.ndarray, val: np.ndarray, shard: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, arr in (("train", train), ("val", val)):
        parts = [arr] if not shard else [arr[i : i + shard] for i in range(0, len(arr), shard)]
        names = []
        for k, part in enumerate(parts):
            f = f"{name}_{k:06d}.bin"
            part.astype("<u2").tofile(folder / f)
            names.append(f)
        splits[name] = {"tokens": len(arr), "documents": 1, "bytes": 2 * len(arr), "shards": names}
    meta = {
        "format": "lmlab-tokens-v1",
        "dtype": "uint16",
        "vocab_size": 1000,
        "eot_id": 0,
        "splits": splits,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def stream() -> np.ndarray:
    return (np.arange(1000) * 7 % 997).astype(np.uint16)


def test_windows_across_shards_match_the_stream(tmp_path, stream):
    one = TokenSplit(write_ds(tmp_path / "one", stream, stream[:50]), "train")
    many = TokenSplit(write_ds(tmp_path / "many", stream, stream[:50], shard=97), "train")
    assert many.n_tokens == one.n_tokens == 1000 and len(many.shards) == 11
    starts = np.array([0, 90, 95, 96, 97, 500, 983])  # several cross a shard boundary
    w = many.windows(starts, 17)
    assert w.dtype == np.int64
    for row, s in zip(w, starts):
        assert row.tolist() == stream[s : s + 17].tolist()
    assert np.array_equal(w, one.windows(starts, 17))
    assert many.read(90, 200).tolist() == stream[90:290].tolist()


def test_batches_depend_only_on_seed_and_step(tmp_path, stream):
    split = TokenSplit(write_ds(tmp_path / "d", stream, stream[:50], shard=300), "train")
    a = BatchLoader(split, 16, 8, 8, seed=1)
    b = BatchLoader(split, 16, 8, 4, seed=1)
    ((xa, ya),) = a.get(5)
    xb = np.concatenate([x.numpy() for x, _ in b.get(5)])
    assert np.array_equal(xa.numpy(), xb)  # micro-batching splits the same rows
    assert np.array_equal(
        ya[:, :-1].numpy(), xa[:, 1:].numpy()
    )  # targets are inputs shifted by one
    assert not np.array_equal(a.get(6)[0][0].numpy(), xa.numpy())
    assert not np.array_equal(BatchLoader(split, 16, 8, 8, seed=2).get(5)[0][0].numpy(), xa.numpy())
    # resumable: the state is (seed, step)
    for _ in range(3):
        a.next()
    c = BatchLoader(split, 16, 8, 8, seed=1)
    c.load_state_dict(a.state_dict())
    assert np.array_equal(c.next()[0][0].numpy(), a.next()[0][0].numpy())


def test_ranks_take_disjoint_slices_of_the_global_batch(tmp_path, stream):
    split = TokenSplit(write_ds(tmp_path / "d", stream, stream[:50]), "train")
    whole = BatchLoader(split, 16, 8, 8, seed=0).global_windows(3)
    parts = [
        BatchLoader(split, 16, 8, 2, seed=0, rank=r, world=2).rank_windows(3) for r in range(2)
    ]
    assert np.array_equal(np.concatenate(parts), whole)
    with pytest.raises(DataError, match="not divisible"):
        BatchLoader(split, 16, 6, 3, seed=0, world=4)


def test_contiguous_windows_predict_every_token_once(tmp_path, stream):
    split = TokenSplit(write_ds(tmp_path / "d", stream, stream[:103], shard=40), "val")
    batches = list(contiguous_windows(split, 10, 4))
    targets = np.concatenate([b[:, 1:].reshape(-1) for b in batches])
    assert len(targets) == 102  # every token after the first
    assert targets.tolist() == stream[1:103].tolist()
    assert batches[-1].shape == (1, 3)  # the tail: 2 targets


def test_fixed_windows_are_fixed(tmp_path, stream):
    split = TokenSplit(write_ds(tmp_path / "d", stream, stream[:200]), "val")
    a = fixed_windows(split, 16, 4, 3, seed=7)
    b = fixed_windows(split, 16, 4, 3, seed=7)
    assert len(a) == 3 and all(np.array_equal(x, y) for x, y in zip(a, b))
    short = fixed_windows(
        TokenSplit(write_ds(tmp_path / "s", stream, stream[:9]), "val"), 16, 2, 1, seed=0
    )
    assert short[0].shape == (2, 9)  # a val split shorter than the context still evaluates


def test_mixture_rows(tmp_path, stream):
    main = TokenSplit(write_ds(tmp_path / "a", stream, stream[:50]), "train")
    other = TokenSplit(
        write_ds(tmp_path / "b", (stream % 5 + 1000).astype(np.uint16), stream[:50]), "train"
    )
    w = BatchLoader(main, 8, 10, 10, seed=0, mix=[(other, 0.3)]).global_windows(0)
    from_other = int((w[:, 0] >= 1000).sum())
    assert from_other == 3
    assert parse_mix(["x/y:0.25"]) == [("x/y", 0.25)]
    with pytest.raises(DataError, match="data.mix"):
        parse_mix(["nofraction"])


def test_bad_datasets(tmp_path, stream):
    with pytest.raises(DataError, match="not found"):
        TokenSplit(tmp_path / "missing", "train")
    d = write_ds(tmp_path / "d", stream, stream[:50])
    (d / "train_000000.bin").unlink()
    with pytest.raises(DataError, match="train_000000.bin"):
        TokenSplit(d, "train")
    short = TokenSplit(write_ds(tmp_path / "s", stream[:10], stream[:10]), "train")
    with pytest.raises(DataError, match="fewer than context_length"):
        BatchLoader(short, 16, 2, 2, seed=0)
