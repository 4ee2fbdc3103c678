"""Decode speed at batch 1: lmlab with KV cache vs without, and vs transformers' generate().

A ~10M-parameter (non-embedding) llama-style model, random init, greedy, 256 new tokens after
a 16-token prompt. The model is exported with ``lmlab.export`` and loaded back with
``AutoModelForCausalLM`` in the same process, so both run on the same threads and weights.
Cached figures are the median of ``--repeats`` timed runs after one warm-up run; the uncached
run (quadratic, dominated by large forwards) is timed ``--nocache-repeats`` times without one.

    .venv/bin/python bench/bench_decode.py [--new-tokens 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from lmlab.config import ModelConfig
from lmlab.export import export_model
from lmlab.model import build_model
from lmlab.model.layout import pick_decode_layout
from lmlab.model.presets import PRESETS
from lmlab.sample import generate

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, float, object]:
    """Median wall seconds, median process CPU seconds (all threads), last result.

    CPU time is the steadier figure when other jobs share the machine."""
    if warmup:
        fn()
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs (median) for cached engines")
    ap.add_argument("--nocache-repeats", type=int, default=1, help="timed runs without cache")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lmlab.tokenizer import train_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench_decode_"))
    if CORPUS.is_file():
        source = CORPUS
    else:  # the tokenizer only supplies the export's tokenizer files; any text will do
        source = tmp / "corpus.txt"
        source.write_text(Path(torch.__file__).read_text(encoding="utf-8") * 5, encoding="utf-8")
    log("training the tokenizer for the export ...")
    tok = train_tokenizer(
        [str(source)], vocab_size=8192, out=tmp / "tok", special_tokens=["<|endoftext|>"]
    )
    cfg = replace(
        ModelConfig(vocab_size=8192, n_layer=6, n_head=6, d_model=384, context_length=512),
        **PRESETS["llama"],
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    n_params = model.num_params()
    n_non_emb = model.num_params(exclude_embeddings=True) - model.head.weight.numel()
    prompt = tok.encode("First Citizen:\nBefore we proceed any further, hear me speak.")[:16]
    n = args.new_tokens

    def lmlab_run(use_cache: bool):
        return lambda: (
            generate(
                model,
                tok,
                prompt,
                max_new_tokens=n,
                temperature=0.0,
                stop_at_eot=False,
                use_cache=use_cache,
            )[0].tokens
        )

    from transformers import AutoModelForCausalLM

    hf_dir = export_model(
        model, tok, tmp / "hf"
    )  # before any relayout: the file is the same either way
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    hf.generation_config.eos_token_id = None  # always 256 tokens, like lmlab below

    def hf_run():
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=n,
                do_sample=False,
                use_cache=True,
                pad_token_id=tok.eot_id,
            )
        return out[0, len(prompt) :].tolist()

    # The uncached run is ~quadratic and dominated by large forwards: timed once, no warm-up
    # (the cached warm-up already ran every kernel it uses).
    # lmlab as `lmlab sample` runs it: weights in the layout that decodes faster here
    t_row, c_row, toks_row = timed(lmlab_run(True), args.repeats)  # PyTorch's default layout
    log(f"lmlab cached, row-major weights: {n / t_row:.1f} tok/s")
    layout = pick_decode_layout(model, batch_size=1)
    log(f"decode layout picked by measurement: {layout}")
    t_cache, c_cache, toks_cache = timed(lmlab_run(True), args.repeats)
    log(f"lmlab cached: {n / t_cache:.1f} tok/s")
    t_hf, c_hf, toks_hf = timed(hf_run, args.repeats)
    log(f"transformers: {n / t_hf:.1f} tok/s")
    t_nocache, c_nocache, toks_nocache = timed(lmlab_run(False), args.nocache_repeats, warmup=False)
    log(f"lmlab uncached: {n / t_nocache:.1f} tok/s")
    assert len(toks_cache) == n and len(toks_hf) == n

    rows = [
        (f"lmlab generate, KV cache ({layout}-major weights, as `lmlab sample`)", t_cache, c_cache),
        ("lmlab generate, KV cache (row-major weights)", t_row, c_row),
        (f"lmlab generate, no cache ({layout}-major)", t_nocache, c_nocache),
        ("transformers generate (exported, use_cache=True)", t_hf, c_hf),
    ]
    import transformers

    print(
        f"model: llama preset, d_model 384, 6 layers, 6 heads, vocab 8192, context 512, "
        f"{n_params / 1e6:.1f}M params ({n_non_emb / 1e6:.1f}M non-embedding), fp32, CPU, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}"
    )
    print(
        f"batch 1, prompt {len(prompt)} tokens, {n} new tokens, greedy, median of {args.repeats} "
        f"(no cache: {args.nocache_repeats} run)"
    )
    print("| engine | tokens/s (wall) | wall s | tokens/CPU-s | CPU s |")
    print("|---|---:|---:|---:|---:|")
    for name, wall, cpu in rows:
        print(f"| {name} | {n / wall:.1f} | {wall:.2f} | {n / cpu:.1f} | {cpu:.2f} |")
    print(f"KV cache vs no cache: {t_nocache / t_cache:.2f}x wall, {c_nocache / c_cache:.2f}x CPU")
    print(f"lmlab (cache) vs transformers: {t_hf / t_cache:.2f}x wall, {c_hf / c_cache:.2f}x CPU")
    print(
        f"lmlab (cache, row-major) vs transformers: {t_hf / t_row:.2f}x wall, {c_hf / c_row:.2f}x CPU"
    )
    print(
        f"greedy tokens identical: cache/no-cache {toks_cache == toks_nocache}, "
        f"lmlab/transformers {toks_cache == toks_hf}, row/{layout} layout {toks_row == toks_cache}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
