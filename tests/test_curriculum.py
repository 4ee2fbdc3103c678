"""Curricula (lmlab.pipeline.curriculum): phase configs, replay fractions in the batches, the
forgetting table, and a recipe with scrambled / ordered / instruction phases end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmlab.config import from_dict, load_config
from lmlab.data.loader import BatchLoader
from lmlab.errors import ConfigError, DataError
from lmlab.pipeline.curriculum import forgetting_table, phase_config, run_curriculum

VOCAB = 40
RANGES = [(0, 10), (10, 20), (20, 30)]  # phase k's tokens all lie in RANGES[k-1]


def write_ranged_dataset(
    out: Path, lo: int, hi: int, n: int = 600, seed: int = 0, fingerprint: str = "fp"
) -> Path:
    """A prepared dataset whose every token is in [lo, hi): a row's source shows in its ids."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in (("train", n), ("val", n // 4)):
        arr = rng.integers(lo, hi, size=count).astype("<u2")
        arr.tofile(out / f"{split}_000000.bin")
        splits[split] = {
            "tokens": count,
            "documents": 1,
            "bytes": count,
            "shards": [f"{split}_000000.bin"],
        }
    meta = {
        "format": "lmlab-tokens-v1",
        "dtype": "uint16",
        "vocab_size": VOCAB,
        "eot_id": VOCAB - 1,
        "tokenizer": "",
        "tokenizer_fingerprint": fingerprint,
        "splits": splits,
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def curriculum_config(tmp_path: Path, replays=(0.0, 0.25, 0.5), steps=(4, 3, 3), **train):
    datasets = [
        write_ranged_dataset(tmp_path / f"ds{k}", lo, hi, seed=k)
        for k, (lo, hi) in enumerate(RANGES, 1)
    ]
    tree = {
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16, "context_length": 8},
        "train": {
            "max_steps": 5,
            "batch_size": 8,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 1,
            "eval_every": 0,
            "checkpoint_every": 0,
            "log_every": 1,
            "device": "cpu",
            "out": str(tmp_path / "cur"),
            "seed": 5,
            **train,
        },
        "eval": {"batches": 2, "samples": 0},
        "log": {"progress": False},
        "phase": [
            {"name": f"p{k}", "data": str(d), "replay": r, "max_steps": s}
            for k, (d, r, s) in enumerate(zip(datasets, replays, steps, strict=True), 1)
        ],
    }
    return from_dict(tree).validate(), datasets


def source_of(row: np.ndarray) -> int:
    """Which phase's dataset a window came from (1-based), checking it is not mixed."""
    (k,) = {next(i for i, (lo, hi) in enumerate(RANGES, 1) if lo <= t < hi) for t in row.tolist()}
    return k


def test_replay_fraction_in_the_batches_the_loop_trains_on(tmp_path, monkeypatch):
    cfg, datasets = curriculum_config(tmp_path)
    seen: dict[str, list[list[int]]] = {}
    original = BatchLoader.get

    def recording_get(self, step):
        batches = original(self, step)
        rows = np.concatenate([x.numpy() for x, _ in batches])
        key = str(self.sources[0].split.path)
        seen.setdefault(key, []).append([source_of(r) for r in rows])
        return batches

    monkeypatch.setattr(BatchLoader, "get", recording_get)
    result = run_curriculum(cfg, log=lambda msg: None)

    # phase 1: only its own rows; phase 2: 25% of 8 = 2 rows from phase 1; phase 3: 50% split
    # evenly between phases 1 and 2 = 2 rows each, 4 of its own
    expected = {1: {1: 8}, 2: {2: 6, 1: 2}, 3: {3: 4, 1: 2, 2: 2}}
    for k, ds in enumerate(datasets, 1):
        steps = seen[str(ds)]
        assert len(steps) == cfg.phase[k - 1].max_steps
        for rows in steps:
            counts = {s: rows.count(s) for s in set(rows)}
            assert counts == expected[k], (k, counts)
    # every phase ran through the shared loop into its own run folder, initialised from the last
    root = Path(cfg.train.out)
    for k in (1, 2, 3):
        run = root / f"phase_{k}"
        saved = load_config(run / "config.toml")
        assert not saved.phase and saved.data.path == str(datasets[k - 1])
        assert saved.train.init_from == ("" if k == 1 else str(root / f"phase_{k - 1}"))
        assert json.loads((run / "result.json").read_text())["steps"] == cfg.phase[k - 1].max_steps
    # the forgetting table: after each phase, val loss on every phase's val split
    info = json.loads((root / "curriculum.json").read_text())
    assert info["names"] == ["p1", "p2", "p3"] and info == json.loads(json.dumps(info))
    losses = info["val_loss"]
    assert len(losses) == 3 and all(len(r) == 3 and all(np.isfinite(v) for v in r) for r in losses)
    assert losses == result["val_loss"]
    report = (root / "report.md").read_text()
    assert "| after | p1 | p2 | p3 |" in report and "forgetting (last - own)" in report
    # a second run finds every phase up to date and trains nothing
    seen.clear()
    again = run_curriculum(cfg, log=lambda msg: None)
    assert seen == {} and again["val_loss"] == losses


def test_phase_config_inherits_and_overrides(tmp_path):
    cfg, datasets = curriculum_config(tmp_path, steps=(4, -1, 2))
    cfg.phase[1].lr, cfg.phase[1].min_lr, cfg.phase[1].lr_schedule = 1e-3, 1e-4, "constant"
    p1, p2, p3 = (phase_config(cfg, k, datasets) for k in (1, 2, 3))
    assert p1.train.max_steps == 4 and p1.train.lr == 3e-3 and p1.data.mix == []
    assert p2.train.max_steps == 5  # -1: train.max_steps
    assert (p2.train.lr, p2.train.min_lr, p2.train.lr_schedule) == (1e-3, 1e-4, "constant")
    assert p2.data.mix == [f"{datasets[0]}:0.25"]
    assert p3.data.mix == [f"{datasets[0]}:0.25", f"{datasets[1]}:0.25"]
    assert p3.train.out.endswith("phase_3") and p3.train.init_from.endswith("phase_2")
    cfg.phase[2].lr = 1e-5  # below train.min_lr: the phase's schedule is invalid
    with pytest.raises(ConfigError, match=r"phase 3 \(p3\): train.min_lr"):
        phase_config(cfg, 3, datasets)


def test_config_errors(tmp_path):
    base = {"train": {"out": "x"}}
    with pytest.raises(ConfigError, match="phase.1.replay: the first phase"):
        from_dict({**base, "phase": [{"data": "d", "replay": 0.1}]}).validate()
    with pytest.raises(ConfigError, match="phase.2: give data"):
        from_dict({**base, "phase": [{"data": "d"}, {"name": "empty"}]}).validate()
    with pytest.raises(ConfigError, match=r"phase.2.replay: must be in \[0, 1\)"):
        from_dict({**base, "phase": [{"data": "d"}, {"data": "e", "replay": 1.0}]}).validate()
    with pytest.raises(ConfigError, match="phase.1.bogus: unknown key"):
        from_dict({**base, "phase": [{"data": "d", "bogus": 1}]})
    with pytest.raises(ConfigError, match=r"phase: expected \[\[phase\]\] tables"):
        from_dict({**base, "phase": {"data": "d"}})
    # phases prepared with different tokenizers cannot share one model
    a = write_ranged_dataset(tmp_path / "a", 0, 10)
    b = write_ranged_dataset(tmp_path / "b", 0, 10, fingerprint="other")
    cfg = from_dict(
        {
            "train": {"out": str(tmp_path / "r"), "device": "cpu"},
            "phase": [{"data": str(a)}, {"data": str(b)}],
        }
    )
    with pytest.raises(DataError, match="another tokenizer"):
        run_curriculum(cfg.validate(), log=lambda m: None)
    cfg.phase[1].data = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="phase.2.data: .* not a prepared dataset"):
        run_curriculum(cfg, log=lambda m: None)


def test_forgetting_table_rows():
    rows = forgetting_table(["a", "b"], [[2.0, 3.0], [2.5, 1.5]])
    assert rows[0] == {"after": "a", "a": 2.0, "b": 3.0}
    assert (
        rows[2]["after"].startswith("forgetting")
        and rows[2]["a"] == pytest.approx(0.5)
        and rows[2]["b"] == 0.0
    )


CODE = '''"""A small module."""
import os


def add(a, b):
    """Add two numbers."""
    return a + b


# a constant
LIMIT = 10


class Box:
    """Holds a value."""

    def get(self):
        """Return the value."""
        return self.value
'''


def test_recipe_with_scrambled_ordered_and_instruction_phases(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"m{i}.py").write_text(
            CODE.replace("add", f"add{i}").replace("LIMIT = 10", f"LIMIT = {i}")
        )
    recipe = tmp_path / "cur.toml"
    recipe.write_text(f'''
[tokenizer]
kind = "bpe"
input = ["{src}"]
vocab_size = 300
out = "{tmp_path / "tok"}"
[prepare]
val_fraction = 0.25
workers = 1
[model]
n_layer = 1
n_head = 2
d_model = 16
context_length = 16
[train]
max_steps = 2
batch_size = 4
warmup_steps = 1
eval_every = 0
checkpoint_every = 0
device = "cpu"
out = "{tmp_path / "run"}"
[eval]
batches = 1
samples = 0
[log]
progress = false
[[phase]]
name = "scrambled"
input = ["{src}"]
transform = "scramble"
filter = "code"
[[phase]]
name = "ordered"
input = ["{src}"]
replay = 0.25
[[phase]]
name = "instructions"
input = ["{src}"]
transform = "instructions"
replay = 0.5
''')
    from lmlab.pipeline import run_recipe

    logs: list[str] = []
    result = run_recipe(recipe, log=logs.append)
    assert len(result["val_loss"]) == 3
    data = tmp_path / "run" / "data"
    scrambled = [
        json.loads(line)["text"]
        for line in (data / "phase_1.scramble.jsonl").read_text().splitlines()
    ]
    assert len(scrambled) == 8 and all(
        sorted(s.splitlines())
        == sorted(CODE.replace("add", f"add{i}").replace("LIMIT = 10", f"LIMIT = {i}").splitlines())
        for i, s in enumerate(scrambled)
    )
    docs = [
        json.loads(line)["text"]
        for line in (data / "phase_3.instructions.jsonl").read_text().splitlines()
    ]
    assert len(docs) == 8 + 1  # add0..add7, and Box.get once (duplicates are dropped)
    assert all("### Instruction:" in d and "### Response:\n" in d for d in docs)
    for k in (1, 2, 3):
        assert (
            json.loads((data / f"phase_{k}" / "meta.json").read_text())["splits"]["train"]["tokens"]
            > 0
        )
    assert (
        "| after | scrambled | ordered | instructions |"
        in (tmp_path / "run" / "report.md").read_text()
    )
    # every phase's data is up to date on a second run
    logs.clear()
    run_recipe(recipe, log=logs.append)
    assert (
        sum("data up to date" in m for m in logs) == 3
        and sum(" up to date: " in m for m in logs) >= 6
    )


def test_shipped_recipe_loads():
    cfg = load_config("curriculum-python")
    assert [p.transform for p in cfg.phase] == ["scramble", "none", "instructions"]
    assert cfg.phase[0].replay == 0 and all(p.replay > 0 for p in cfg.phase[1:])
    assert cfg.tokenizer.out and cfg.train.device == "cpu"
