"""The GPT-2 step of bench/cpu_vs_nanogpt.py alone: lmlab's model and optimizer against
nanoGPT's (../shared/peers/nanoGPT/model.py, imported unmodified), on random tokens.

Same shapes as the benchmark's target 1 (4 layers, 4 heads, width 128, context 64, batch 12,
vocabulary 65, no biases, tied embeddings, exact GELU, AdamW with weight decay 0.1, clipping at
1.0), so it separates the step itself from each program's data reading, evals and start-up.
Prints ms per step for both, alternating, and with ``--profile`` the top operators of each
(torch.profiler, self CPU time).

    .venv/bin/python bench/gpt2_step_profile.py [--steps 200] [--rounds 3] [--threads N] [--profile]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig, OptimConfig
from lmlab.model import build_model
from lmlab.train.host_memory import retain_freed_memory
from lmlab.train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
NANOGPT = ROOT.parent / "shared" / "peers" / "nanoGPT"
B, T, V = 12, 64, 65


def lmlab_step() -> Callable[[], None]:
    """One lmlab training step as train_step runs it (summed loss over targets, clip, update)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=4, n_head=4, d_model=128, context_length=T, norm="layernorm",
        position="learned", mlp="gelu_erf", bias=False, tie_embeddings=True, dropout=0.0,
        vocab_size=V,
    )  # fmt: skip
    model = build_model(cfg)
    opt = build_optimizer(
        model, OptimConfig(beta2=0.99, weight_decay=0.1, grad_clip=1.0), 1e-3, torch.device("cpu")
    )
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))

    def step() -> None:
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum") / (B * T)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def nanogpt_step() -> Callable[[], None]:
    """One nanoGPT training step as its train.py runs it on a CPU (fp32, no compile)."""
    sys.path.insert(0, str(NANOGPT))
    from model import GPT, GPTConfig  # noqa: PLC0415 (the peer's module, from its own folder)

    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            n_layer=4, n_head=4, n_embd=128, block_size=T, bias=False, vocab_size=V, dropout=0.0
        )
    )
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))

    def step() -> None:
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def ms_per_step(step: Callable[[], None], n: int) -> float:
    for _ in range(5):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true", help="print the top operators of each")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()  # as lmlab's trainer does; it applies to both, in one process
    steps = {"lmlab": lmlab_step(), "nanoGPT": nanogpt_step()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        ms = {name: ms_per_step(steps[name], args.steps) for name in order}
        print(
            f"round {r + 1}: lmlab {ms['lmlab']:.2f} ms, nanoGPT {ms['nanoGPT']:.2f} ms per step: "
            f"{ms['nanoGPT'] / ms['lmlab']:.3f}x"
        )
    if args.profile:
        from torch.profiler import profile  # noqa: PLC0415 (only with --profile)

        for name, step in steps.items():
            with profile() as prof:
                for _ in range(30):
                    step()
            print(f"== {name}, 30 steps")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
