"""Training-step time of candidate shakespeare-char shapes: which shape buys loss fastest.

Each candidate is the shipped ``shakespeare-char`` recipe's model plus overrides (width,
depth, context, batch). For each, in fp32 and in bf16 autocast, this times full training
steps as lmlab's loop does them (forward with the model's loss, backward, clip, fused AdamW
or Muon, zero_grad) on random token batches, candidates alternated step-group by
step-group so background load hits them all. The figure is the best (minimum) step time
over ``--rounds`` x ``--steps`` steps: on a machine shared with other jobs the minimum is
the closest to what an idle machine gives (a step that ran while the cores were free);
the median is printed beside it.

    .venv/bin/python bench/recipe_shapes.py [--steps 5] [--rounds 4] [--only A,B] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lmlab.config import apply_overrides, load_config
from lmlab.device import autocast
from lmlab.model import build_model
from lmlab.train.optim import build_optimizer

# name -> overrides of the shakespeare-char recipe
CANDIDATES: dict[str, list[str]] = {
    "4x128 12x64 (v1 recipe)": [],
    "4x128 32x128": ["model.context_length=128", "train.batch_size=32"],
    "4x192 32x128": [
        "model.d_model=192",
        "model.n_head=6",
        "model.context_length=128",
        "train.batch_size=32",
    ],
    "4x256 32x128": ["model.d_model=256", "model.context_length=128", "train.batch_size=32"],
    "6x256 32x128": [
        "model.n_layer=6",
        "model.d_model=256",
        "model.context_length=128",
        "train.batch_size=32",
    ],
    "4x256 16x256": ["model.d_model=256", "model.context_length=256", "train.batch_size=16"],
    "6x384 16x256": [
        "model.n_layer=6",
        "model.d_model=384",
        "model.n_head=6",
        "model.context_length=256",
        "train.batch_size=16",
    ],
}


class Setup:
    def __init__(self, overrides: list[str], dtype: torch.dtype, matmul_precision: str = "highest"):
        cfg = load_config("shakespeare-char")
        apply_overrides(cfg, [*overrides, "model.vocab_size=66"])
        self.cfg, self.dtype, self.matmul_precision = cfg, dtype, matmul_precision
        torch.manual_seed(0)
        self.model = build_model(cfg.model).train()
        self.opt = build_optimizer(self.model, cfg.optim, cfg.train.lr, torch.device("cpu"))
        b, t = cfg.train.batch_size, cfg.model.context_length
        ids = torch.randint(0, 66, (b, t + 1))
        self.x, self.y = ids[:, :-1], ids[:, 1:]
        self.tokens = b * t
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def step(self) -> tuple[float, float]:
        # "medium": fp32 tensors, matmuls in bf16 inside oneDNN (AMX), CPU's counterpart of TF32
        torch.set_float32_matmul_precision(self.matmul_precision)
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast(torch.device("cpu"), self.dtype):
            logits = self.model(self.x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), self.y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        float(loss.detach())  # the loop reads the loss every step on CPU
        return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5, help="steps per candidate per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--only", default="", help="comma-separated substrings of candidate names")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--optim", default="adamw", choices=("adamw", "muon"))
    ap.add_argument(
        "--bf32",
        action="store_true",
        help="also time fp32 with torch.set_float32_matmul_precision('medium') (bf16 matmuls inside oneDNN)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in CANDIDATES if not args.only or any(s in n for s in args.only.split(","))]
    modes = [("fp32", torch.float32, "highest"), ("bf16", torch.bfloat16, "highest")]
    modes += [("bf32", torch.float32, "medium")] if args.bf32 else []
    setups = {
        (n, d): Setup([*CANDIDATES[n], f"optim.name={args.optim}"], dt, mp)
        for n in names
        for d, dt, mp in modes
    }
    times: dict[tuple, list[tuple[float, float]]] = {k: [] for k in setups}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    for s in setups.values():  # warm-up: allocator, kernels
        s.step()
    for r in range(args.rounds):
        for k in setups if r % 2 == 0 else reversed(list(setups)):
            times[k] += [setups[k].step() for _ in range(args.steps)]
        table(names, setups, times, f"after round {r + 1}, load average {os.getloadavg()[0]:.1f}")


def table(names: list[str], setups: dict, times: dict, title: str) -> None:
    print(f"\n{title}")
    print(
        "| candidate | params | tokens/step | fp32 ms/step (best / median) | bf16 ms/step (best / median) | bf16 speed-up | best k tok/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in names:
        f = [1000 * w for w, _ in times[(n, "fp32")]]
        b = [1000 * w for w, _ in times[(n, "bf16")]]
        s = setups[(n, "fp32")]
        n_params = sum(p.numel() for p in s.params)
        best = min(min(f), min(b))
        print(
            f"| {n} | {n_params / 1e6:.2f}M | {s.tokens} | {min(f):.1f} / {statistics.median(f):.1f} | "
            f"{min(b):.1f} / {statistics.median(b):.1f} | {min(f) / min(b):.2f}x | {s.tokens / best:.1f} |",
            flush=True,
        )
        if (n, "bf32") in times:
            c = [1000 * w for w, _ in times[(n, "bf32")]]
            print(
                f"|   {n}, fp32 with bf16 matmuls (bf32) | | | {min(c):.1f} / {statistics.median(c):.1f} | "
                f"| {min(f) / min(c):.2f}x fp32 | {s.tokens / min(c):.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
