"""Decode speed at batch 1: llama.cpp on lmlab's GGUF export beside lmlab's own sampler.

The model of bench_decode.py (llama preset, d_model 384, 6 layers, vocab 8192, random init)
and a GPT-2-style twin of the same widths; greedy, 256 new tokens after a 16-token prompt.
lmlab runs as `lmlab sample` does (KV cache, the weight layout picked by measurement);
llama.cpp (llama-cpp-python, 2 threads) evaluates the same prompt and then one token per
step on the f32, f16 and q8_0 exports, taking the argmax of its logits. Both sides are timed
from the prompt to the last token; median of ``--repeats`` after one warm-up. Needs
llama_cpp (`make gguf-check` installs it).

    .venv/bin/python bench/bench_gguf_decode.py [--new-tokens 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench_decode import log, timed  # bench/ is on sys.path when this script runs
from lmlab.config import ModelConfig
from lmlab.export.gguf import export_gguf_model
from lmlab.model import build_model
from lmlab.model.layout import pick_decode_layout
from lmlab.model.presets import PRESETS
from lmlab.sample import generate

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    import llama_cpp

    from lmlab.tokenizer import train_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench_gguf_"))
    source = CORPUS if CORPUS.is_file() else tmp / "corpus.txt"
    if not CORPUS.is_file():
        source.write_text(Path(torch.__file__).read_text(encoding="utf-8") * 5, encoding="utf-8")
    log("training the tokenizer ...")
    tok = train_tokenizer(
        [str(source)], vocab_size=8192, out=tmp / "tok", special_tokens=["<|endoftext|>"]
    )
    prompt = tok.encode("First Citizen:\nBefore we proceed any further, hear me speak.")[:16]
    n = args.new_tokens
    print(
        f"batch 1, prompt {len(prompt)} tokens, {n} new tokens, greedy, median of {args.repeats} after a "
        f"warm-up; torch {torch.__version__} ({torch.get_num_threads()} threads), llama-cpp-python "
        f"{llama_cpp.__version__} ({args.threads} threads)"
    )
    print("| model | engine | tokens/s (wall) | tokens/CPU-s | vs lmlab (wall) |")
    print("|---|---|---:|---:|---:|")
    for preset in ("llama", "gpt2"):
        cfg = replace(
            ModelConfig(vocab_size=8192, n_layer=6, n_head=6, d_model=384, context_length=512),
            **PRESETS[preset],
        )
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        files = {
            dt: export_gguf_model(model, tok, tmp / f"{preset}-{dt}.gguf", dt)
            for dt in ("f32", "f16", "q8_0")
        }
        layout = pick_decode_layout(model, batch_size=1)  # as `lmlab sample` loads a run

        def lmlab_run(model=model):
            return generate(
                model, tok, prompt, max_new_tokens=n, temperature=0.0, stop_at_eot=False
            )[0].tokens

        t_ours, c_ours, toks_ours = timed(lmlab_run, args.repeats)
        label = f"{preset} preset, {model.num_params() / 1e6:.1f}M params"
        print(
            f"| {label} | lmlab generate (KV cache, {layout}-major, fp32) | {n / t_ours:.1f} | {n / c_ours:.1f} | 1.00x |"
        )
        for dt, path in files.items():
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=cfg.context_length,
                n_batch=64,
                n_threads=args.threads,
                seed=0,
                logits_all=True,
                verbose=False,
            )

            def cpp_run(llm=llm):
                llm.reset()
                llm.eval(prompt)
                out = []
                for _ in range(n):
                    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                    out.append(nxt)
                    if len(out) < n:  # lmlab does not run the last token through the model either
                        llm.eval([nxt])
                return out

            t, c, toks = timed(cpp_run, args.repeats)
            same = (
                "same tokens"
                if toks == toks_ours
                else f"first {next((i for i, (a, b) in enumerate(zip(toks, toks_ours)) if a != b), n)} tokens same"
            )
            print(
                f"| {label} | llama.cpp, {dt} GGUF ({same}) | {n / t:.1f} | {n / c:.1f} | {t_ours / t:.2f}x |"
            )
            log(f"{preset} {dt}: llama.cpp {n / t:.1f} tok/s, lmlab {n / t_ours:.1f} tok/s")
            del llm
    return 0


if __name__ == "__main__":
    sys.exit(main())
