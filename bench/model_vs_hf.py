"""Training throughput of lmlab's transformer against HF transformers at the same shape.

For the gpt2 preset the peer is ``GPT2LMHeadModel``, for llama ``LlamaForCausalLM`` (both
with attn_implementation="sdpa"). Each step is forward, the same cross-entropy outside the
model, backward and an AdamW step; the models are timed alternately (interleaved rounds) so
that load from other processes hits both alike. Prints tokens/s and the ratio.

    .venv/bin/python bench/model_vs_hf.py [--device cpu|cuda] [--dtype float32|bfloat16]
        [--d-model 256] [--n-layer 4] [--n-head 4] [--vocab 8192] [--seq-len 256]
        [--batch 8] [--steps 5] [--rounds 3] [--compile] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig
from lmlab.model import build_model
from lmlab.model.loss import run_eagerly_under_compile
from lmlab.model.presets import PRESETS
from lmlab.model.transformer import resolve_d_ff


def hf_model(preset: str, m: ModelConfig):
    import transformers

    if preset == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=m.vocab_size,
            n_positions=m.context_length,
            n_embd=m.d_model,
            n_layer=m.n_layer,
            n_head=m.n_head,
            n_inner=resolve_d_ff(m),
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            layer_norm_epsilon=m.norm_eps,
            tie_word_embeddings=True,
        )
        return transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa")
    cfg = transformers.LlamaConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.d_model,
        intermediate_size=resolve_d_ff(m),
        num_hidden_layers=m.n_layer,
        num_attention_heads=m.n_head,
        num_key_value_heads=m.n_kv_head or m.n_head,
        max_position_embeddings=m.context_length,
        rms_norm_eps=m.norm_eps,
        rope_theta=m.rope_theta,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")


def make_step(model, is_hf: bool, device: str, dtype: torch.dtype):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast:
            logits = model(x).logits if is_hf else model(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=("gpt2", "llama", "both"), default="both")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default); 1 on a shared CPU, where idle OpenMP "
        "threads spin and waste several times the work's CPU time",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    dtype_name = (
        args.dtype if args.dtype != "auto" else ("bfloat16" if dev == "cuda" else "float32")
    )
    dtype = getattr(torch, dtype_name)
    presets = ("gpt2", "llama") if args.preset == "both" else (args.preset,)
    print(
        f"device {dev}, {dtype_name}, d_model {args.d_model}, layers {args.n_layer}, heads {args.n_head}, "
        f"vocab {args.vocab}, batch {args.batch} x {args.seq_len}, compile {args.compile}, threads {torch.get_num_threads()}"
    )
    for preset in presets:
        m = dataclasses.replace(
            ModelConfig(),
            **PRESETS[preset],
            vocab_size=args.vocab,
            d_model=args.d_model,
            n_layer=args.n_layer,
            n_head=args.n_head,
            context_length=args.seq_len,
            dropout=0.0,
        )
        torch.manual_seed(0)
        models = {"lmlab": build_model(m).to(dev), "hf": hf_model(preset, m).to(dev)}
        for model in models.values():
            model.train()
        n_params = {k: sum(p.numel() for p in v.parameters()) for k, v in models.items()}
        steps = {}
        if args.compile:
            run_eagerly_under_compile()  # as the trainer does before compiling
        for name, model in models.items():
            target = torch.compile(model) if args.compile else model
            steps[name] = make_step(target, name == "hf", dev, dtype)
        x = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=dev)
        y = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=dev)
        for step in steps.values():  # warm up (and compile)
            for _ in range(2):
                step(x, y)
        sync(dev)
        elapsed = {k: 0.0 for k in steps}
        cpu = {k: 0.0 for k in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                sync(dev)
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    step(x, y)
                sync(dev)
                elapsed[name] += time.perf_counter() - t0
                cpu[name] += time.process_time() - c0
        tokens = args.rounds * args.steps * args.batch * args.seq_len
        tps = {k: tokens / v for k, v in elapsed.items()}
        print(f"{preset}: params lmlab {n_params['lmlab']:,} hf {n_params['hf']:,}")
        print(
            f"{preset}: lmlab {tps['lmlab']:,.0f} tok/s, hf {tps['hf']:,.0f} tok/s, "
            f"ratio {tps['lmlab'] / tps['hf']:.2f}x (wall clock)"
        )
        if dev == "cpu":  # CPU seconds used: steadier than wall time when others load the machine
            cps = {k: tokens / v for k, v in cpu.items()}
            print(
                f"{preset}: lmlab {cps['lmlab']:,.0f} tok/cpu-s, hf {cps['hf']:,.0f} tok/cpu-s, "
                f"ratio {cps['lmlab'] / cps['hf']:.2f}x (process CPU time)"
            )


if __name__ == "__main__":
    main()
