"""Training speed: lmlab's training loop against a plain PyTorch loop on the same batches.

Shapes (``--shape``):
  - ``shakespeare`` (default): nanoGPT's shakespeare_char baby GPT, CPU-sized: 4 layers, 4
    heads, width 128, context 64, batch 12, AdamW lr 1e-3, char tokens of tinyshakespeare.
    nanoGPT's figure for this on 2 CPU cores is ~52 ms/iter.
  - ``llama10m``: a ~10M-parameter (non-embedding) LLaMA-style model, 6 layers, width 384,
    6 heads, vocab 8192, context 256, batch 8.
Styles (``--style``): ``llama`` (RMSNorm, RoPE, SwiGLU, as the shakespeare-char recipe) or
``gpt2`` (LayerNorm, learned positions, GELU, biases, tied).

Peers (``--peer``), trained by a plain loop (index a batch from the same memmap, forward,
cross-entropy, backward, clip, ``torch.optim.AdamW`` with its defaults, zero_grad):
  - ``bare``: the same lmlab model: the ratio is the loop's own per-step overhead;
  - ``hf``: the Hugging Face transformers model of the same shape (GPT2LMHeadModel or
    LlamaForCausalLM, SDPA attention): the ratio is what a user gains by training with lmlab.
lmlab's side is ``lmlab.train.loop.train`` itself (its fused AdamW, loss, logging, guards),
timed as a full run minus a 1-step run. Rounds alternate the two so background load hits
both. CPU time (process_time, all threads) is printed beside wall time: on a machine shared
with other jobs it is the steadier figure.

With ``--dtype bfloat16`` both sides train under bf16 autocast (weights and AdamW in fp32),
like for like; ``--dtype auto`` gives lmlab ``train.dtype = "auto"`` (its measured pick) and
the peer bf16 autocast.

    .venv/bin/python bench/train_speed.py [--shape shakespeare|llama10m] [--style llama|gpt2]
        [--peer bare|hf] [--compile] [--dtype float32|bfloat16|auto] [--steps 200] [--rounds 3]
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

SHARED = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
)

SHAPES = {
    "shakespeare": {
        "model": {"n_layer": 4, "n_head": 4, "d_model": 128, "context_length": 64},
        "batch": 12,
        "vocab": 0,
    },
    "llama10m": {
        "model": {"n_layer": 6, "n_head": 6, "d_model": 384, "context_length": 256},
        "batch": 8,
        "vocab": 8192,
    },
}


def make_dataset(folder: Path, vocab: int = 0) -> Path:
    """Char-level tokens of tinyshakespeare (``vocab`` 0), else random tokens below ``vocab``."""
    folder.mkdir(parents=True, exist_ok=True)
    if not vocab and SHARED.exists():
        text = SHARED.read_text(encoding="utf-8")
        chars = sorted(set(text))
        ids = np.array([chars.index(c) for c in text[:300_000]], dtype=np.uint16)
        vocab = len(chars)
    else:
        vocab = vocab or 65
        ids = np.random.default_rng(0).integers(0, vocab, 300_000).astype(np.uint16)
    n_val = len(ids) // 10
    ids[n_val:].tofile(folder / "train_000000.bin")
    ids[:n_val].tofile(folder / "val_000000.bin")
    meta = {
        "format": "lmlab-tokens-v1",
        "dtype": "uint16",
        "vocab_size": vocab,
        "eot_id": None,
        "splits": {
            "train": {
                "tokens": len(ids) - n_val,
                "documents": 1,
                "bytes": len(ids) - n_val,
                "shards": ["train_000000.bin"],
            },
            "val": {"tokens": n_val, "documents": 1, "bytes": n_val, "shards": ["val_000000.bin"]},
        },
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def config(
    data: Path,
    out: Path,
    steps: int,
    shape: str = "shakespeare",
    style: str = "llama",
    compile: bool = False,
    dtype: str = "float32",
):
    from lmlab.model.presets import PRESETS

    sh = SHAPES[shape]
    return from_dict(
        {
            "model": {**sh["model"], **PRESETS[style], "dropout": 0.0},
            "data": {"path": str(data)},
            "optim": {"beta2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0},
            "train": {
                "max_steps": steps,
                "batch_size": sh["batch"],
                "lr": 1e-3,
                "min_lr": 1e-4,
                "warmup_steps": 10,
                "eval_every": 0,
                "checkpoint_every": 0,
                "log_every": steps,
                "device": "cpu",
                "out": str(out),
                "compile": compile,
                "dtype": dtype,
            },
            "eval": {"batches": 1, "samples": 0},
            "log": {"progress": False},
        }
    ).validate()


def lmlab_ms_per_step(
    data: Path,
    tmp: Path,
    steps: int,
    shape: str,
    style: str,
    compile: bool = False,
    dtype: str = "float32",
) -> tuple[float, float]:
    """(wall, CPU) ms per step of train(), minus its fixed start/end cost (a 1-step run)."""

    def timed(n: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        train(config(data, tmp / f"run{n}", n, shape, style, compile, dtype))
        return time.perf_counter() - t0, time.process_time() - c0

    timed(2)  # warm caches (and, with compile, the compiler's on-disk cache)
    base = timed(1)  # start-up and end cost, compilation included
    full = timed(steps + 1)
    return 1000.0 * (full[0] - base[0]) / steps, 1000.0 * (full[1] - base[1]) / steps


def peer_ms_per_step(
    data: Path, steps: int, shape: str, style: str, peer: str, dtype: str = "float32"
) -> tuple[float, float]:
    cfg = config(data, Path("unused"), steps, shape, style)
    meta = json.loads((data / "meta.json").read_text())
    cfg.model.vocab_size = meta["vocab_size"]
    torch.manual_seed(0)
    if peer == "hf":
        from model_vs_hf import hf_model

        hf = hf_model(style, cfg.model)
        model = lambda x: hf(x).logits  # noqa: E731
        params = list(hf.parameters())
    else:
        model = build_model(cfg.model)
        params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.99),
    )
    mm = np.memmap(data / "train_000000.bin", dtype=np.uint16, mode="r")
    rng = np.random.default_rng(0)
    T, B = cfg.model.context_length, cfg.train.batch_size
    offs = np.arange(T + 1)

    def step() -> None:
        ix = rng.integers(0, len(mm) - T - 1, B)
        w = torch.from_numpy(mm[ix[:, None] + offs].astype(np.int64))
        x, y = w[:, :-1], w[:, 1:]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != "float32"):
            loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return 1000.0 * (time.perf_counter() - t0) / steps, 1000.0 * (time.process_time() - c0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=tuple(SHAPES), default="shakespeare")
    ap.add_argument("--style", choices=("llama", "gpt2"), default="llama")
    ap.add_argument("--peer", choices=("bare", "hf"), default="bare")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="lmlab with train.compile=true (the peer stays eager)",
    )
    ap.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "auto"),
        default="float32",
        help="both sides; auto: lmlab's measured pick, the peer in bf16 autocast",
    )
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sh = SHAPES[args.shape]
    tokens = sh["batch"] * sh["model"]["context_length"]
    peer_name = {"bare": "bare loop (same lmlab model)", "hf": "transformers model, plain loop"}[
        args.peer
    ]
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, shape {args.shape} ({args.style} style), "
        f"{tokens} tokens/step, lmlab compile {args.compile}, dtype {args.dtype}, peer: {peer_name}"
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = make_dataset(tmp / "ds", sh["vocab"])
        ours, peer = [], []
        for r in range(args.rounds):
            peer.append(
                peer_ms_per_step(data, args.steps, args.shape, args.style, args.peer, args.dtype)
            )
            ours.append(
                lmlab_ms_per_step(
                    data,
                    tmp / f"r{r}",
                    args.steps,
                    args.shape,
                    args.style,
                    args.compile,
                    args.dtype,
                )
            )
            print(
                f"round {r + 1}: lmlab {ours[-1][0]:.1f} ms/iter wall, {ours[-1][1]:.1f} CPU; "
                f"peer {peer[-1][0]:.1f} wall, {peer[-1][1]:.1f} CPU",
                flush=True,
            )
    for i, kind in enumerate(("wall", "CPU")):
        o, p = statistics.median(x[i] for x in ours), statistics.median(x[i] for x in peer)
        print(
            f"{kind}: median over {args.rounds} rounds of {args.steps} steps: lmlab {o:.1f} ms/iter "
            f"({1000 * tokens / o:,.0f} tok/s), peer {p:.1f} ms/iter ({1000 * tokens / p:,.0f} tok/s); "
            f"lmlab speed / peer speed {p / o:.2f}x"
        )
        assert math.isfinite(o)


if __name__ == "__main__":
    main()
