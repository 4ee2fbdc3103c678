"""One GPU check: every GPU-only path of lmlab, measured in one short run (bench/gpu/check.sh).

Sections, in this order (each records its figures or its error; one failing does not stop
the rest, and a section that would start past the time budget is skipped and says so):

1. env      torch/CUDA versions, device name, bf16 support, the peak FLOP/s lmlab's table gives it
2. pytest   ``pytest -m gpu`` (CUDA autocast, fused AdamW, flash SDPA, the CUDA memory probe ...)
3. gpt2     gpt2-small (124M) in bf16 with torch.compile: steady tok/s, MFU, max memory
4. tiny     the TinyStories config (8 layers, width 512, SwiGLU 1408, context 256): tok/s
5. fsdp     the same config under ``torchrun --nproc_per_node=1`` with ``train.parallel=fsdp``
6. decode   KV-cache decode tok/s at batch 1 and 32 (the TinyStories shape, greedy)
7. probe    ``train.micro_batch_size=0`` on gpt2-small against ``lmlab account --memory-gb``
8. tiny_autotune  section 4 with ``train.compile_mode=max-autotune-no-cudagraphs``, if time is left

Data: synthetic token shards written here (no network on the GPU machine; speed does not
depend on the tokens). Output: ``OUT/gpu_check.json`` (figures) and ``OUT/gpu_check.log``
(everything the runs printed); OUT is ``--out``, else ``$OUT``, else ``runs/gpu_check``.

``--cpu-dry-run`` runs every section end to end on the CPU with tiny shapes, a few steps, no
compile and an injected memory limit for the probe, so nothing here runs for the first time on
a GPU (tests/test_gpu_check.py runs it in the suite).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

GPT2 = {
    "n_layer": 12,
    "n_head": 12,
    "d_model": 768,
    "context_length": 1024,
    "vocab_size": 50304,
    "norm": "layernorm",
    "position": "learned",
    "mlp": "gelu",
    "bias": True,
    "tie_embeddings": True,
    "dropout": 0.0,
}
TINYSTORIES = {
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
    "dropout": 0.0,
}
TINY = {
    "n_layer": 2,
    "n_head": 2,
    "d_model": 64,
    "context_length": 32,
    "vocab_size": 512,
    "dropout": 0.0,
}


class Check:
    def __init__(self, out: Path, dry: bool, budget_s: float):
        self.out, self.dry, self.budget_s = out, dry, budget_s
        self.t0 = time.monotonic()
        self.results: dict[str, Any] = {"dry_run": dry, "sections": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(out / "gpu_check.log", "a", encoding="utf-8")
        self.python = sys.executable

    def log(self, text: str) -> None:
        self.log_file.write(text if text.endswith("\n") else text + "\n")
        self.log_file.flush()
        print(text.rstrip("\n"), flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def section(self, name: str, fn: Any, reserve_s: float) -> None:
        """Run ``fn()`` -> dict of figures; skipped when fewer than ``reserve_s`` seconds remain."""
        left = self.budget_s - self.elapsed()
        if left < reserve_s:
            self.results["sections"][name] = {
                "status": "skipped",
                "reason": f"{left:.0f}s left of the budget",
            }
            self.log(f"== {name}: skipped ({left:.0f}s left)")
            return
        self.log(f"== {name} (at {self.elapsed():.0f}s)")
        t = time.monotonic()
        try:
            figures = fn()
            rec = {"status": "ok", **figures}
        except Exception as e:  # record and go on: one broken section must not hide the others
            self.log(traceback.format_exc())
            rec = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]}
        rec["seconds"] = round(time.monotonic() - t, 1)
        self.results["sections"][name] = rec
        self.log(f"== {name}: {json.dumps(rec)}")
        self.write()

    def write(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2) + "\n")

    def run(self, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
        self.log("$ " + " ".join(cmd))
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.log(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-500:]}")
        return proc.stdout


# --- data and configs -------------------------------------------------------------------------


def synthetic_dataset(folder: Path, vocab: int, tokens: int, seed: int = 0) -> Path:
    """A prepared-dataset folder of uniform random tokens (train and val splits)."""
    import numpy as np

    if (folder / "meta.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dtype = "uint16" if vocab <= 65536 else "uint32"
    splits = {}
    for split, n in (("train", tokens), ("val", max(tokens // 20, 4096))):
        rng.integers(0, vocab, size=n, dtype=np.int64).astype(dtype).tofile(
            folder / f"{split}_000000.bin"
        )
        splits[split] = {"tokens": n, "documents": 1, "bytes": 0, "shards": [f"{split}_000000.bin"]}
    meta = {
        "format": "lmlab-tokens-v1",
        "dtype": dtype,
        "vocab_size": vocab,
        "eot_id": 0,
        "tokenizer": "",
        "splits": splits,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def write_config(path: Path, model: dict[str, Any], data: Path, train: dict[str, Any]) -> Path:
    from lmlab.config import from_dict, to_toml

    tree = {
        "model": model,
        "data": {"path": str(data)},
        "train": {
            "warmup_steps": 10,
            "eval_every": 0,
            "checkpoint_every": 0,
            "log_every": 10,
            **train,
        },
        "eval": {"batches": 2, "samples": 0},
        "log": {"progress": False},
    }
    path.write_text(to_toml(from_dict(tree).validate()))
    return path


def step_records(run: Path) -> list[dict[str, Any]]:
    recs = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    return [r for r in recs if "train_loss" in r]


def steady(recs: list[dict[str, Any]], key: str) -> float | None:
    """Median of ``key`` over the second half of the logged steps (compile and warm-up excluded)."""
    vals = [r[key] for r in recs[len(recs) // 2 :] if r.get(key) is not None]
    return statistics.median(vals) if vals else None


# --- sections ---------------------------------------------------------------------------------


def env_section(c: Check) -> dict[str, Any]:
    import torch

    from lmlab.accounting import known_peak_flops

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        out.update(
            device=name,
            cuda=torch.version.cuda,
            capability=list(torch.cuda.get_device_capability(0)),
            memory_gb=props.total_memory / 2**30,
            bf16=torch.cuda.is_bf16_supported(),
            peak_tflops=(known_peak_flops(name) or 0) / 1e12 or None,
        )
        if not out["peak_tflops"]:
            c.log(f"warning: {name!r} is not in lmlab.accounting.PEAK_FLOPS; no MFU")
    else:
        out["device"] = platform.processor() or "cpu"
    return out


def pytest_section(c: Check) -> dict[str, Any]:
    # only the files that hold gpu tests: collecting the whole suite costs more than running these
    files = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").glob("test_*.py")
        if "mark.gpu" in p.read_text(encoding="utf-8")
    )
    text = c.run(
        [c.python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files], timeout=240
    )
    counts = {
        k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", text)
    }
    if counts.get("failed") or counts.get("error"):
        raise RuntimeError(f"gpu tests: {counts}")
    return {"counts": counts, "files": files}


def train_section(
    c: Check,
    name: str,
    model: dict[str, Any],
    train: dict[str, Any],
    torchrun: bool = False,
    timeout: float = 300,
) -> dict[str, Any]:
    vocab = model["vocab_size"]
    T = model["context_length"]
    data = synthetic_dataset(
        c.out / f"data_v{vocab}", vocab, max(64 * T * 16, 2_000_000 if not c.dry else 0)
    )
    cfg = write_config(c.out / f"{name}.toml", model, data, train)
    run = c.out / f"run_{name}"
    lm = ["-m", "lmlab", "train", str(cfg), "--out", str(run)]
    if torchrun:
        torchrun_bin = str(Path(c.python).with_name("torchrun"))
        cmd = [torchrun_bin, "--standalone", "--nproc_per_node=1", *lm]
    else:
        cmd = [c.python, *lm]
    text = c.run(
        cmd, timeout=timeout, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    )
    recs = step_records(run)
    out = {
        "steps": len(recs) and recs[-1]["step"],
        "tok_per_s": steady(recs, "tok_per_s"),
        "ms_per_step": steady(recs, "ms_per_step"),
        "mfu": steady(recs, "mfu"),
        "max_mem_gb": max((r.get("max_mem_gb") or 0 for r in recs), default=None) or None,
        "final_loss": recs[-1]["train_loss"] if recs else None,
        "state_bytes": next((r["state_bytes"] for r in recs if "state_bytes" in r), None),
    }
    m = re.search(r"training ([\d.]+)M params on (\S+) \((\w+)\)", text)
    if m:
        out.update(params_m=float(m.group(1)), device=m.group(2), dtype=m.group(3))
    if out["final_loss"] is None or not math.isfinite(out["final_loss"]):
        raise RuntimeError(f"{name}: no finite training loss")
    return out


def decode_section(
    c: Check, model_cfg: dict[str, Any], new_tokens: int, batches: tuple[int, ...]
) -> dict[str, Any]:
    """Greedy decode through the model's KV cache (what lmlab sample runs), random weights."""
    import torch

    from lmlab.config import ModelConfig
    from lmlab.device import autocast, synchronize
    from lmlab.model import build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_model(ModelConfig(**model_cfg)).to(device).eval()
    prompt_len = 16
    out: dict[str, Any] = {"new_tokens": new_tokens, "dtype": str(dtype).removeprefix("torch.")}

    @torch.no_grad()
    def decode(batch: int) -> float:
        idx = torch.randint(0, model_cfg["vocab_size"], (batch, prompt_len), device=device)
        cache = model.new_kv_cache(batch, prompt_len + new_tokens, device=device)
        synchronize(device)
        t = time.perf_counter()
        with autocast(device, dtype):
            logits = model(idx, kv_cache=cache)
            for _ in range(new_tokens):
                nxt = logits[:, -1, :].argmax(-1, keepdim=True)
                logits = model(nxt, kv_cache=cache)
        synchronize(device)
        return time.perf_counter() - t

    for b in batches:
        decode(b)  # warm-up: kernels, cache allocation
        sec = min(decode(b) for _ in range(2))
        out[f"batch_{b}_tok_per_s"] = b * new_tokens / sec
        c.log(f"decode batch {b}: {b * new_tokens / sec:.0f} tok/s")
    model.to("cpu")  # give the GPU memory back for the probe that follows
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def probe_section(c: Check, model_cfg: dict[str, Any], batch: int) -> dict[str, Any]:
    """train.micro_batch_size=0 on the device; compared with accounting's max_batch_size."""
    import torch

    from lmlab import accounting
    from lmlab.config import ModelConfig, from_dict
    from lmlab.train import memory_fit as mf
    from lmlab.train.loop import train

    vocab, T = model_cfg["vocab_size"], model_cfg["context_length"]
    data = synthetic_dataset(
        c.out / f"data_v{vocab}", vocab, max(64 * T * 16, 2_000_000 if not c.dry else 0)
    )
    cuda = torch.cuda.is_available()
    dtype = "bfloat16" if cuda else "float32"
    mcfg = ModelConfig(**model_cfg)
    if cuda:
        free, total = torch.cuda.mem_get_info()
        limit = float(free)
    else:  # inject a limit that leaves room for about 24 sequences by accounting's formula
        limit = accounting.training_memory(mcfg, 24, T, "float32")["total"]
        mf.set_fake_limit(limit)
    predicted = accounting.max_batch_size(mcfg, T, limit, dtype)
    tree = {
        "model": model_cfg,
        "data": {"path": str(data)},
        "train": {
            "max_steps": 1,
            "batch_size": batch,
            "micro_batch_size": 0,
            "eval_every": 0,
            "checkpoint_every": 0,
            "dtype": dtype,
            "out": str(c.out / "run_probe"),
            "device": "cuda" if cuda else "cpu",
            "fused_loss": False,
        },
        "eval": {"batches": 1, "samples": 0},
        "log": {"progress": False},
    }
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            train(from_dict(tree).validate())
    finally:
        mf.set_fake_limit(None)
        c.log(buf.getvalue())
    m = re.search(r"memory probe: up to (\d+) sequences fit; micro-batch (\d+)", buf.getvalue())
    if not m:
        raise RuntimeError("no memory probe line in the training output")
    found, micro = int(m.group(1)), int(m.group(2))
    return {
        "limit_gb": limit / 2**30,
        "probe_max_batch": found,
        "micro_batch": micro,
        "account_max_batch": predicted,
        "ratio_probe_over_account": found / max(predicted, 1),
        "capped_at_batch": found == batch,
        "fused_loss": False,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        default=os.environ.get("OUT") or "runs/gpu_check",
        help="folder for the JSON and the log",
    )
    ap.add_argument(
        "--cpu-dry-run", action="store_true", help="tiny shapes on the CPU, a few steps"
    )
    ap.add_argument(
        "--budget-s", type=float, default=420.0, help="sections that would start later are skipped"
    )
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out")
    args = ap.parse_args(argv)
    c = Check(Path(args.out).resolve(), args.cpu_dry_run, args.budget_s)
    skip = set(filter(None, args.skip.split(",")))
    dry = args.cpu_dry_run
    if not dry:
        import torch

        if not torch.cuda.is_available():
            c.log("no CUDA device: run with --cpu-dry-run to rehearse on the CPU")
            return 2
    dev = (
        {"device": "cpu", "dtype": "float32", "compile": False}
        if dry
        else {"device": "cuda", "dtype": "bfloat16"}
    )
    gpt2 = TINY if dry else GPT2
    ts = {**TINY, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope"} if dry else TINYSTORIES
    steps = 6 if dry else 120
    sections = [
        ("env", lambda: env_section(c), 0),
        ("pytest", lambda: pytest_section(c), 60),
        (
            "gpt2",
            lambda: train_section(
                c,
                "gpt2",
                gpt2,
                {
                    **dev,
                    "compile": not dry,
                    "max_steps": steps,
                    "batch_size": 4 if dry else 16,
                    "log_every": 2 if dry else 10,
                    "lr": 6e-4,
                    "min_lr": 6e-5,
                },
            ),
            90,
        ),
        (
            "tiny",
            lambda: train_section(
                c,
                "tinystories",
                ts,
                {
                    **dev,
                    "compile": not dry,
                    "max_steps": steps,
                    "batch_size": 4 if dry else 128,
                    "log_every": 2 if dry else 10,
                    "lr": 2e-3,
                    "min_lr": 2e-4,
                },
            ),
            60,
        ),
        (
            "fsdp",
            lambda: train_section(
                c,
                "fsdp",
                ts,
                {
                    **dev,
                    "compile": False,
                    "parallel": "fsdp",
                    "max_steps": 4 if dry else 40,
                    "batch_size": 4 if dry else 128,
                    "log_every": 2 if dry else 10,
                    "lr": 2e-3,
                    "min_lr": 2e-4,
                },
                torchrun=True,
            ),
            45,
        ),
        ("decode", lambda: decode_section(c, ts, 8 if dry else 256, (1, 32)), 30),
        ("probe", lambda: probe_section(c, gpt2, 64 if dry else 512), 40),
        # last and optional: autotuned GEMMs compile for minutes; it runs only if time is left
        (
            "tiny_autotune",
            lambda: train_section(
                c,
                "tinystories_autotune",
                ts,
                {
                    **dev,
                    "compile": not dry,
                    "compile_mode": "max-autotune-no-cudagraphs",
                    "max_steps": steps,
                    "batch_size": 4 if dry else 128,
                    "log_every": 2 if dry else 10,
                    "lr": 2e-3,
                    "min_lr": 2e-4,
                },
            ),
            150,
        ),
    ]
    if dry:  # without compile it would repeat "tiny"; its code is that section's
        skip.add("tiny_autotune")
    for name, fn, reserve in sections:
        if name in skip:
            c.results["sections"][name] = {
                "status": "skipped",
                "reason": "--skip" if not dry else "dry run: no compile",
            }
        else:
            c.section(name, fn, reserve)
    c.write()
    bad = [n for n, r in c.results["sections"].items() if r["status"] == "error"]
    c.log(
        f"done in {c.elapsed():.0f}s; figures in {c.out / 'gpu_check.json'}"
        + (f"; errors in {bad}" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
