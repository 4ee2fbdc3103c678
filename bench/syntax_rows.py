"""The demo's syntax check decoded a batch of rows at a time, whatever their prompts: seconds
for its completions at each batch size, on a finished demo run.

Every row runs to the token limit (no early stop: the worst case the demo's plan budgets
for), at the check's temperature, top-k, healing and window slide, on the run's held-out
prompts cycled as the check cycles them. Prints, per batch size, the wall seconds for all the
completions and for one batch, and one batch's cost in completions decoded alone (what
``lmlab.demo_budget`` plans with). Then the check as the demo runs it (early stops) at the
demo's batch size and at one row per prompt's batch, with their pass rates.

    .venv/bin/python bench/syntax_rows.py [--run runs/demo] [--n 100] [--rows 1,5,10,25,50,100]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from lmlab import demo
from lmlab.eval.code import syntax_pass_rate
from lmlab.healing import generate_healed_rows
from lmlab.model.layout import pick_decode_layout
from lmlab.runs import load_model_for_inference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/demo", help="a demo's output folder")
    ap.add_argument("--n", type=int, default=100, help="completions per batch size")
    ap.add_argument("--rows", default="1,5,10,25,50,100")
    args = ap.parse_args()
    out = Path(args.run)
    model, _, tok = load_model_for_inference(out / "run", device="cpu", decode_batch=1)
    prompts = demo.held_out_prompts(out / "data", tok)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}; "
        f"{len(prompts)} prompts, {args.n} completions of {demo.SYNTAX_TOKENS} tokens"
    )
    kw = dict(
        max_new_tokens=demo.SYNTAX_TOKENS,
        temperature=demo.SYNTAX_TEMPERATURE,
        top_k=demo.SYNTAX_TOP_K,
        slide_every=demo.SYNTAX_SLIDE_EVERY,
    )
    todo = [prompts[i % len(prompts)] for i in range(args.n)]
    one = None
    print("| rows a batch | layout | s for all | s a batch | batch / one row |")
    print("|---:|---|---:|---:|---:|")
    for rows in [int(r) for r in args.rows.split(",")]:
        layout = pick_decode_layout(model, rows)
        t0 = time.perf_counter()
        batches = 0
        for lo in range(0, args.n, rows):
            generate_healed_rows(model, tok, todo[lo : lo + rows], seed=lo, **kw)
            batches += 1
        wall = time.perf_counter() - t0
        per = wall / batches
        one = one or per  # the first size given is the unit (give 1 first)
        print(f"| {rows} | {layout} | {wall:.1f} | {per:.2f} | {per / one:.2f} |", flush=True)
    for rows in (demo.SYNTAX_ROWS, 1):
        pick_decode_layout(model, rows)
        fn = demo.make_generate_fn(
            model,
            tok,
            temperature=demo.SYNTAX_TEMPERATURE,
            top_k=demo.SYNTAX_TOP_K,
            slide_every=demo.SYNTAX_SLIDE_EVERY,
            rows=rows,
        )
        t0 = time.perf_counter()
        rep = syntax_pass_rate(
            fn, prompts, n=args.n, max_new_tokens=demo.SYNTAX_TOKENS, batch_size=args.n
        )
        print(
            f"the check at {rows} rows a batch (early stops): {time.perf_counter() - t0:.1f} s, "
            f"{100 * rep['pass_rate']:.0f}% of {rep['n']} pass, {rep['cut_by_length']} cut by the limit"
        )


if __name__ == "__main__":
    main()
