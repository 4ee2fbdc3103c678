"""Every shipped sweep file (sweeps/*.toml and the GPU tier in sweeps/gpu/) loads and
dry-runs on a CPU: each point's config builds, its model builds on the meta device, and
accounting agrees with the model's parameter count. Nothing is trained or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmlab.accounting import count_params
from lmlab.config import load_config
from lmlab.experiments.dryrun import dry_run, meta_params
from lmlab.experiments.spec import load_sweep, resolve_base
from lmlab.experiments.sweep import point_config

ROOT = Path(__file__).resolve().parents[1]
CPU_TIER = sorted((ROOT / "sweeps").glob("*.toml"))
GPU_TIER = sorted((ROOT / "sweeps" / "gpu").glob("*.toml"))
GPU_STUDIES = {"lr", "batch_size", "architecture", "baselines", "tokenizer", "scaling"}
TOKENS_5000_AT_128 = 5000 * 128 * 256


def test_every_cpu_study_has_a_gpu_tier():
    assert {p.stem for p in GPU_TIER} == GPU_STUDIES
    assert GPU_STUDIES <= {p.stem for p in CPU_TIER}


@pytest.mark.parametrize("path", CPU_TIER + GPU_TIER, ids=lambda p: str(p.relative_to(ROOT)))
def test_sweep_file_dry_runs(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep files name their data relative to the repository root
    spec = load_sweep(path)
    out_existed = spec.out.exists()
    res = dry_run(path, log=lambda *_: None)
    assert len(res.rows) == len(spec.points) > 0
    assert spec.seeds >= (3 if path in GPU_TIER or path.stem.startswith("baselines") else 1)
    assert res.total_flops > 0 and all(r["steps"] >= 1 and r["params"] > 0 for r in res.rows)
    assert spec.out.exists() == out_existed  # a dry run writes nothing
    base = resolve_base(spec)
    for point, row in zip(spec.points, res.rows, strict=True):
        cfg, _ = point_config(spec, base, point, [])
        cfg.model.vocab_size = row["vocab_size"]
        assert row["params"] == count_params(cfg.model)["total"] == meta_params(cfg)


def test_gpu_tier_runs_at_the_write_ups_scale(monkeypatch):
    monkeypatch.chdir(ROOT)
    base = load_config(ROOT / "sweeps" / "gpu" / "base" / "tinystories-gpu.toml").model
    assert (base.n_layer, base.d_model, base.n_head, base.d_ff, base.context_length) == (
        8,
        512,
        8,
        1408,
        256,
    )
    assert (base.mlp, base.norm, base.position) == ("swiglu", "rmsnorm", "rope")
    rows = {p.stem: dry_run(p, log=lambda *_: None).rows for p in GPU_TIER}
    # lr and ablations: 5000 steps at batch 128; batch size: the same tokens at every batch
    for study in ("lr", "architecture"):
        assert {(r["steps"], r["batch"], r["context"]) for r in rows[study]} == {(5000, 128, 256)}
    assert {r["tokens"] for r in rows["batch_size"]} == {TOKENS_5000_AT_128}
    assert {r["batch"] for r in rows["batch_size"]} == {32, 128, 512}
    # the ablations' SiLU point matches SwiGLU's parameters, as on the CPU tier
    params = {r["point"]: r["params"] for r in rows["architecture"]}
    assert params["silu-matched"] == params["base"] == params["relu2-matched"]
    # scaling: the 8x512 model is on both lines and the fixed-compute line spends its FLOPs
    scaling = {r["point"]: r for r in rows["scaling"] if "__seed" not in r["point"]}
    assert scaling["tokens-8x512"]["tokens"] == TOKENS_5000_AT_128
    budget = scaling["tokens-8x512"]["train_flops"]
    for name, r in scaling.items():
        if name.startswith("compute-"):
            assert abs(r["train_flops"] / budget - 1) < 0.01


@pytest.mark.parametrize("width", [96, 128])
@pytest.mark.parametrize("study", ["lr", "batch_size", "architecture"])
def test_wider_study_is_its_width_64_file_one_size_up(study, width, monkeypatch):
    """sweeps/<study>_w96.toml and _w128.toml rerun points of sweeps/<study>.toml with only the
    width changed (and the SiLU MLP's d_ff, to keep it at SwiGLU's parameters; width 128 pins
    fp32), 3 seeds each: so the tables compare the same runs at three sizes."""
    monkeypatch.chdir(ROOT)
    small = load_sweep(ROOT / "sweeps" / f"{study}.toml")
    big = load_sweep(ROOT / "sweeps" / f"{study}_w{width}.toml")
    assert big.seeds >= 3
    small_points = {p.name: p for p in small.points}
    budgets = {}
    for point in (p for p in big.points if p.seed_offset == 0):
        assert point.name in small_points, point.name
        cfg_big, budgets[point.name] = point_config(big, resolve_base(big), point, [])
        cfg_small, budget = point_config(small, resolve_base(small), small_points[point.name], [])
        assert budgets[point.name] == budget
        assert (cfg_small.model.d_model, cfg_big.model.d_model) == (64, width)
        if width == 128:  # auto picked bf16 for some runs at this width: one precision for all
            assert cfg_big.train.dtype == "float32"
            cfg_big.train.dtype = cfg_small.train.dtype
        cfg_big.model.d_model = cfg_small.model.d_model
        cfg_big.model.d_ff = cfg_small.model.d_ff
        cfg_big.train.out = cfg_small.train.out
        assert cfg_big == cfg_small, point.name
    if study == "architecture":
        rows = {r["point"]: r["params"] for r in dry_run(big.path, log=lambda *_: None).rows}
        assert rows["silu-matched"] == rows["base"]


def test_levers_sweep_compares_each_width_with_its_own_base(monkeypatch):
    """sweeps/architecture_levers.toml: at each width relu2 has SwiGLU's parameters (its d_ff
    1.5x SwiGLU's) and QK-norm adds only its two gains per block, so a gap is the lever's."""
    monkeypatch.chdir(ROOT)
    rows = dry_run(ROOT / "sweeps" / "architecture_levers.toml", log=lambda *_: None).rows
    params = {r["point"]: r["params"] for r in rows if "__seed" not in r["point"]}
    for width in (64, 96, 128):
        head_dim = width // 4
        base = params[f"base-w{width}"]
        assert params[f"relu2-matched-w{width}"] == params[f"zero-init-out-w{width}"] == base
        assert params[f"qk-norm-w{width}"] == base + 2 * 2 * head_dim  # 2 blocks, q and k gains
