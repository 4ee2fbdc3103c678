"""bench/gpu/check.sh --cpu-dry-run: every section of the GPU check runs end to end on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu" / "check.sh"


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path / "out")}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-dry-run"], env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    secs = res["sections"]
    assert res["dry_run"] is True
    assert list(secs) == [
        "env",
        "pytest",
        "gpt2",
        "tiny",
        "fsdp",
        "decode",
        "probe",
        "tiny_autotune",
    ]
    assert secs.pop("tiny_autotune")["status"] == "skipped"  # compile is off on the CPU
    assert all(s["status"] == "ok" for s in secs.values()), secs
    assert (
        secs["pytest"]["counts"].get("skipped", 0) >= 1
    )  # the gpu tests were collected (and skip here)
    for name in ("gpt2", "tiny", "fsdp"):
        assert secs[name]["tok_per_s"] > 0 and secs[name]["steps"] > 0
    assert secs["fsdp"]["state_bytes"] > 0
    assert secs["decode"]["batch_1_tok_per_s"] > 0 and secs["decode"]["batch_32_tok_per_s"] > 0
    probe = secs["probe"]
    assert 0.8 <= probe["ratio_probe_over_account"] <= 1.2 and 64 % probe["micro_batch"] == 0
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "memory probe: up to" in log and "-m lmlab train" in log


def test_the_gpu_benchmarks_train_the_shipped_tinystories_shape():
    """bench/gpu/check.py and bench/fsdp_memory.py each spell out the TinyStories model (the
    GPU check runs where lmlab's recipes may not be on the path); both must stay the recipe's."""
    import importlib.util

    from lmlab.config import load_config

    def module(path: Path):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    bench = SCRIPT.parents[1]
    recipe = load_config("tinystories")
    for shape in (
        module(bench / "gpu" / "check.py").TINYSTORIES,
        module(bench / "fsdp_memory.py").MODEL,
    ):
        assert shape["vocab_size"] == recipe.tokenizer.vocab_size
        for key, value in shape.items():
            if key not in ("vocab_size", "dropout"):
                assert getattr(recipe.model, key) == value, key
