"""`lmlab demo`: the whole pipeline on the embedded default corpus, inside a time budget.

1. tokenizer: a byte-level BPE trained on this interpreter's standard library;
2. data: the stdlib filtered as code (syntax, size, duplicates, undecodable files) and packed;
3. train: the `demo-python` recipe, its step count fitted to the time left;
4. eval: val loss, perplexity, accuracy, bits per byte on the whole val split;
5. samples from held-out function headers, and the syntax pass rate of up to 100 completions;
6. report.md with the loss plot.

Stages 1 and 2 are skipped when their outputs are up to date, so a second demo spends its
whole budget training.

The budget covers everything from the start of the command to the report: training gets
what the tokenizer and data stages leave, minus a reserve for the finish, and stops at its
share however slow the machine turns out to be; the final evaluation and the syntax check are
then sized to the time really left (from the measured step time and decoding speed), so the
demo ends within ``--minutes`` plus a few percent on any machine.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.config import Config, load_config, resolve_vocab_size
from lmlab.data.loader import TokenSplit
from lmlab.data.shards import read_meta
from lmlab.demo_budget import (
    EVAL_MARGIN,
    EVAL_SHARE,
    REPORT_S,
    SHORT_BUDGET_LR_STEPS,
    SHORT_BUDGET_TOKENS,
    SYNTAX_RESERVE_S,
    SYNTAX_ROWS,
    Budget,
    SyntaxWaves,
    eval_batches_for,
    finish_reserve,
    fit_steps,
    lr_for_budget,
    narrow_pays,
    width_for_budget,
)
from lmlab.device import autocast, resolve_device, resolve_dtype
from lmlab.errors import ConfigError
from lmlab.eval.code import (
    GenerateFn,
    extract_function_headers,
    function_ended,
    syntax_pass_rate,
)
from lmlab.eval.metrics import evaluate_path, format_metrics
from lmlab.healing import generate_healed as generate
from lmlab.healing import generate_healed_rows
from lmlab.model import build_model
from lmlab.outputs import check_output, write_marker
from lmlab.pipeline import resolve_training_inputs
from lmlab.report import markdown_table, write_report
from lmlab.runs import load_model_for_inference
from lmlab.train.host_memory import retain_freed_memory
from lmlab.train.loop import train
from lmlab.train.optim import build_optimizer
from lmlab.train.precision import pick_cpu_train_dtype
from lmlab.train.setup import uses_fused_loss

# Tokens per completion of the syntax check: the held-out functions' own bodies are 140
# tokens at the median, and only 42% of them fit in 96 (75% in 256), so at 96 even the
# original code would mostly be cut by the limit (then it compiles only by luck).
SYNTAX_TOKENS = 256
# Sampling of the syntax check (the report states it). The rate is a per-completion figure,
# pass@1's kind, and 0.2 is the temperature pass@1 is sampled at by convention (the Codex paper,
# HumanEval); 0.8 is pass@100's. Not tuned on this model: bench/RESULTS.md gives both.
SYNTAX_TEMPERATURE = 0.2
SYNTAX_TOP_K = 50
# Past the model's context a completion's window moves this many tokens at a time (lmlab.sample:
# one prefill per 64 tokens instead of one per token, each token still seeing at least
# context - 63 of the tokens before it). On stop 14's demo model 100 completions took 36.3 s
# sliding by one and 12.7 s by 64, with the same 49 passes (bench/RESULTS.md): the windows
# slide mostly in repetition loops, which the token limit fails either way.
SYNTAX_SLIDE_EVERY = 64
# The whole command's budget, `lmlab demo`'s default --minutes (README: "about 5 minutes").
DEFAULT_MINUTES = 5.0
# Held-out prompts taken from one file at most: spread over files, not one file's methods.
PROMPTS_PER_FILE = 2


def _training_dtype(cfg: Config, model: Any, device: Any) -> Any:
    """The dtype the trainer will pick for ``cfg`` on ``device`` (lmlab.train.precision on a CPU)."""
    t, m = cfg.train, cfg.model
    if t.dtype != "auto" or device.type != "cpu" or m.arch != "transformer":
        return resolve_dtype(t.dtype, device)
    fused = uses_fused_loss(cfg, model)
    micro = t.micro_batch_size or t.batch_size  # the demo trains in one process
    pick = pick_cpu_train_dtype(model, micro, m.context_length, m.vocab_size, fused)
    return torch.bfloat16 if pick["dtype"] == "bfloat16" else torch.float32


# Training steps measured to size the run (after one warm-up step).
TIMING_STEPS = 3


def measure_step_seconds(cfg: Config, max_seconds: float = float("inf")) -> float:
    """Wall seconds of one optimizer step of ``cfg`` on random tokens (forward, backward, AdamW),
    in the precision training will use (``train.dtype = auto`` on a CPU picks it by measuring:
    the same cached pick the trainer then reuses), so a bf16 run is not sized at fp32's speed,
    with the loss path (fused head or logits) and the allocator settings training has: timed
    without them, a step measured ~25% slower than training ran and the demo left a fifth of
    its budget unused.

    The median of TIMING_STEPS steps after a warm-up one, or of fewer once ``max_seconds`` are
    spent (a slow machine should not give its training time to the measurement)."""
    device = resolve_device(cfg.train.device)
    if device.type == "cpu":
        retain_freed_memory()  # as train() does (once per process)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    opt = build_optimizer(model, cfg.optim, cfg.train.lr, device)
    B, T, V = cfg.train.batch_size, cfg.model.context_length, cfg.model.vocab_size
    dtype = _training_dtype(cfg, model, device)
    fused = uses_fused_loss(cfg, model)
    x = torch.randint(0, V, (B, T), device=device)
    times = []
    for _ in range(TIMING_STEPS + 1):
        t0 = time.perf_counter()
        with autocast(device, dtype):
            if fused:
                loss = model(x, targets=x) / x.numel()
            else:
                loss = F.cross_entropy(model(x).flatten(0, 1).float(), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2 and sum(times) >= max_seconds:
            break
    measured = sorted(times[1:])
    return measured[len(measured) // 2]


def final_eval_batch_seconds(cfg: Config, step_s: float) -> float:
    """Seconds per batch of the final evaluation: a forward pass, a third of a training step,
    at float32's speed on a CPU (where :func:`lmlab.eval.metrics.evaluate_path` evaluates in
    float32) when training runs in bf16, scaled by the measured float32 / bf16 pass times.
    A third of the bf16 step alone was 85 ms against the 150 ms a batch really took on a
    2-core Xeon. An eval batch of more tokens than a training step's (the recipe's eval.batch_size
    16 against its batch of 8) costs as many times more."""
    tokens = cfg.eval_batch_size * cfg.eval_context_length
    third = step_s / 3.0 * tokens / (cfg.train.batch_size * cfg.model.context_length)
    device = resolve_device(cfg.train.device)
    if device.type != "cpu":
        return third
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if _training_dtype(cfg, model, device) != torch.bfloat16:
        return third
    micro = cfg.train.micro_batch_size or cfg.train.batch_size
    pick = pick_cpu_train_dtype(  # cached: the pick measure_step_seconds made
        model, micro, cfg.model.context_length, cfg.model.vocab_size, uses_fused_loss(cfg, model)
    )
    wall = pick.get("seconds_per_pass") or {}
    if not wall.get("bfloat16"):
        return third
    return third * max(1.0, wall["float32"] / wall["bfloat16"])


def val_batches(cfg: Config, meta: dict[str, Any]) -> int:
    """Batches of the whole val split at the final evaluation's batch size."""
    val_tokens = int(meta["splits"].get("val", {}).get("tokens", 0))
    return max(1, -(-val_tokens // (cfg.eval_batch_size * cfg.eval_context_length)))


def held_out_prompts(data_dir: Path, tokenizer: Any, limit: int = 40) -> list[str]:
    """Function-header prompts from the val split's documents: code the model never trained on.

    The module-level functions with a docstring (HumanEval's kind of prompt), at most
    ``PROMPTS_PER_FILE`` from each document in split order, so no single file sets the rate."""
    meta = read_meta(data_dir)
    split = TokenSplit(data_dir, "val", meta)
    n = min(split.n_tokens, 2_000_000)
    ids = np.asarray(split.read(0, n), dtype=np.int64)
    eot = meta["eot_id"]
    cuts = np.flatnonzero(ids == eot)
    prompts: list[str] = []
    start = 0
    for end in cuts:
        doc = tokenizer.decode(ids[start:end].tolist())
        start = int(end) + 1
        headers = extract_function_headers(doc, require_docstring=True, top_level=True)
        prompts.extend([h for h in headers if len(h) < 600][:PROMPTS_PER_FILE])
        if len(prompts) >= limit:
            break
    return prompts[:limit]


def make_generate_fn(
    model: Any,
    tokenizer: Any,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 0,
    stop: Callable[[], bool] | None = None,
    slide_every: int = 1,
    rows: int = SYNTAX_ROWS,
) -> GenerateFn:
    """A ``generate_fn(prompts, max_new_tokens)`` for the syntax pass rate: up to ``rows``
    completions at a time in one batch, whatever their prompts
    (:func:`lmlab.healing.generate_healed_rows`).

    Token healing (lmlab.healing): a prompt ends in a newline, a token the model saw only
    before column-0 code, so without it most completions start the next top-level statement.
    A sample stops once its function has ended (:func:`lmlab.eval.code.function_ended`: the
    verdict is the one the whole completion would get, and no other sample changes).
    ``stop`` (the deadline) is asked before each batch after the first; the completions left
    when it says True come back as None (not run)."""

    batches = 0  # over all calls: each batch its own seed

    def generate_fn(prompts: list[str], max_new_tokens: int) -> list[tuple[str, bool] | None]:
        nonlocal batches
        out: list[tuple[str, bool] | None] = [None] * len(prompts)
        for lo in range(0, len(prompts), rows):
            if lo and stop is not None and stop():
                break
            chunk = prompts[lo : lo + rows]
            samples = generate_healed_rows(
                model,
                tokenizer,
                chunk,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                seed=seed + batches,
                stop_when=lambda i, text, chunk=chunk: function_ended(chunk[i], text),
                slide_every=slide_every,
            )
            batches += 1
            for i, s in enumerate(samples):
                out[lo + i] = (s.text, s.finish_reason == "eot")
        return out

    return generate_fn


def _syntax_section(report: dict[str, Any]) -> str:
    rate = report["pass_rate"] or 0.0
    completed = report.get("pass_rate_completed")
    lines = [
        f"{report['n']} completions of held-out function headers (temperature {SYNTAX_TEMPERATURE:g}, "
        f"top-k {SYNTAX_TOP_K}, at most {SYNTAX_TOKENS} tokens, token healing at the prompt's end, "
        f"past the model's context the window sliding {SYNTAX_SLIDE_EVERY} tokens at a time), "
        "each cut at the next top-level statement or end-of-text (one the token limit cut fails), "
        "checked with `compile()`; "
        f"one that adds no code (only `pass`, comments or a docstring) fails ({report.get('no_code', 0)} did).",
        "",
        f"- pass rate: **{100 * rate:.1f}%** ({report['passed']}/{report['n']})"
        + (
            f"; {report['not_run']} more of the {report['n'] + report['not_run']} wanted were not run (the time budget ran out)"
            if report.get("not_run")
            else ""
        ),
        f"- completed before the token limit: {report['completed']}, of which "
        + (f"{100 * completed:.1f}% compile" if completed is not None else "none"),
        f"- cut by the token limit (a failure): {report['cut_by_length']} "
        f"({report['compiled_cut_by_length']} of them compile as cut)",
    ]
    if report.get("top_errors"):
        lines.append(
            "- commonest errors: " + "; ".join(f"{e} ({c})" for e, c in report["top_errors"][:3])
        )
    return "\n".join(lines)


class _OutOfTime(Exception):
    """Raised from a stream callback to stop a sample at the deadline."""


def _sample_within(
    budget: Budget,
    keep_s: float,
    generate: Any,
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    seed: int,
) -> tuple[str, int]:
    """(text, tokens) of one sample, cut when only ``keep_s`` seconds of the budget are left."""
    parts: list[str] = []

    def on_token(_i: int, text: str) -> None:
        parts.append(text)
        if budget.left() < keep_s:
            raise _OutOfTime

    try:
        s = generate(
            model,
            tokenizer,
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=0.6,
            top_k=40,
            seed=seed,
            stream_callback=on_token,
        )[0]
    except _OutOfTime:
        return "".join(parts) + "  # ... (cut: time budget)", len(parts)
    return s.text, len(s.tokens)


def _demo_config(out: Path, overrides: list[str] | None) -> Config:
    """The demo-python recipe writing into ``out`` (marked as a demo folder)."""
    check_output(
        out, "demo", whole=False
    )  # its tokenizer/, data/ and run/ are checked again when written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "demo")
    return load_config(
        "demo-python",
        [
            f"tokenizer.out={out / 'tokenizer'}",
            f"prepare.out={out / 'data'}",
            f"train.out={out / 'run'}",
            *(overrides or []),
        ],
    )


def _size_training(
    cfg: Config, budget: Budget, minutes: float, whole: int, choose_width: bool = True
) -> tuple[float, float]:
    """Step 3a: set train.max_steps to the time left after the finish's reserve (for ``whole``
    val batches and the syntax check); the step and final-eval batch times measured. With
    ``choose_width``, a budget too short for the recipe's width trains a narrower model
    (lmlab.demo_budget.width_for_budget) if its step, measured, is cheap enough to pay."""
    left = budget.left() - finish_reserve(minutes * 60.0)
    if left < 20:
        raise ConfigError(
            f"--minutes: {minutes:g} leaves {max(left, 0):.0f}s to train after data preparation; give more"
        )
    chosen, step_s, eval_batch_s, reserve = _fit_to_budget(cfg, budget, minutes, whole, left)
    narrow = width_for_budget(chosen, chosen.train.max_steps) if choose_width else None
    if narrow is not None:
        trial = copy.deepcopy(cfg)
        trial.model.d_model = narrow
        trial.validate()
        fitted = _fit_to_budget(trial, budget, minutes, whole, left)
        ratio = fitted[1] / step_s
        verdict = "training it" if narrow_pays(ratio) else "keeping the recipe's"
        print(
            f"[train] width {cfg.model.d_model} fits only {chosen.train.max_steps} steps "
            f"(< {SHORT_BUDGET_TOKENS:,} tokens); width {narrow} steps in {ratio:.2f}x its time: "
            f"{verdict}",
            flush=True,
        )
        if narrow_pays(ratio):
            chosen, step_s, eval_batch_s, reserve = fitted
        else:  # refit: the narrow one's measurement took some of the time
            chosen, _, _, reserve = _fit_to_budget(cfg, budget, minutes, whole, left, step_s)
    vars(cfg).update(vars(chosen))  # the caller's config, sized
    left = max(0.0, budget.left() - reserve)
    print(
        f"[train] {step_s * 1000:.0f} ms/step measured -> {cfg.train.max_steps} steps in ~{left / 60:.1f} min "
        f"({reserve:.0f} s kept for the finish)",
        flush=True,
    )
    return step_s, eval_batch_s


def _fit_to_budget(
    cfg: Config,
    budget: Budget,
    minutes: float,
    whole: int,
    left: float,
    step_s: float | None = None,
) -> tuple[Config, float, float, float]:
    """A copy of ``cfg`` with its steps fitted to the time left after the finish's reserve, its
    step measured (in at most a tenth of ``left``) unless ``step_s`` is given; (copy, step s,
    eval batch s, reserve s)."""
    cfg = copy.deepcopy(cfg)  # fit_steps narrows intervals from their current values
    if step_s is None:
        step_s = measure_step_seconds(cfg, max_seconds=0.1 * left)
    eval_batch_s = final_eval_batch_seconds(cfg, step_s)
    # the measurement took some of it; a machine slow enough to leave nothing still trains a step
    reserve = finish_reserve(minutes * 60.0, step_s, EVAL_MARGIN * whole * eval_batch_s)
    fit_steps(cfg, max(0.0, budget.left() - reserve), step_s)
    return cfg, step_s, eval_batch_s, reserve


def _samples_and_syntax(
    cfg: Config, run_dir: Path, budget: Budget, report_s: float, clock: Any
) -> tuple[list[str], dict[str, Any] | None, int]:
    """Step 5: up to two samples from held-out function headers, then as many syntax-check
    completions as the time left allows; (samples as markdown, syntax report, completions)."""
    model, _, tokenizer = load_model_for_inference(run_dir, device="cpu", decode_batch=1)
    prompts = held_out_prompts(Path(cfg.data.path), tokenizer) or [""]
    shown = []
    t_gen, n_gen = clock(), 0
    for i, prompt in enumerate(prompts[:2]):
        if i and budget.left() - report_s < clock() - t_gen:  # a second one only if it fits
            break
        text, n = _sample_within(
            budget, report_s, generate, model, tokenizer, prompt, cfg.eval.sample_tokens, seed=i
        )
        n_gen += max(1, n)
        shown.append(f"```python\n{prompt}{text}\n```")
        print(f"[sample {i + 1}]\n{prompt}{text}\n", flush=True)
    # one completion of the syntax check costs at most SYNTAX_TOKENS tokens at the speed just
    # measured one sample at a time (SYNTAX_ROWS of them decode together, one batch, for a
    # little more); later waves go at the pace the check really has
    token_s = (clock() - t_gen) / n_gen
    waves = SyntaxWaves(
        budget, report_s, SYNTAX_TOKENS * token_s, max(1, cfg.eval.syntax_samples), SYNTAX_ROWS
    )
    first = waves(0)
    syntax = None
    if first:
        print(
            f"[syntax] {first} completions planned in {budget.left() - report_s:.0f} s "
            f"({1000 * token_s:.1f} ms a token measured), more if they go faster",
            flush=True,
        )
        syntax = syntax_pass_rate(
            make_generate_fn(
                model,
                tokenizer,
                temperature=SYNTAX_TEMPERATURE,
                top_k=SYNTAX_TOP_K,
                stop=lambda: budget.left() < report_s,  # the machine got slower than measured
                slide_every=SYNTAX_SLIDE_EVERY,
            ),
            prompts,
            n=waves.wanted,
            max_new_tokens=SYNTAX_TOKENS,
            batch_size=lambda done: first if done == 0 else waves(done),
        )
        print(
            f"[syntax] {100 * syntax['pass_rate']:.1f}% of {syntax['n']} completions compile "
            f"({syntax['cut_by_length']} cut by the token limit; waves {waves.waves})",
            flush=True,
        )
    else:
        print("[syntax] skipped: no time left in the budget", flush=True)
    return shown, syntax, sum(waves.waves)


def _metrics_heading(metrics: dict[str, Any]) -> str:
    """The final metrics' heading: the whole split, or which batches the time allowed."""
    if metrics.get("whole_split", True):
        return "Final metrics (whole val split)"
    if metrics.get("stopped"):
        return (
            f"Final metrics (the first {metrics['batches']} val batches: the time budget ran out)"
        )
    return f"Final metrics ({metrics['batches']} val batches: the time left)"


def _demo_report(
    run_dir: Path,
    meta: dict[str, Any],
    final: dict[str, Any],
    result: Any,
    metrics: dict[str, Any],
    syntax: dict[str, Any] | None,
    shown: list[str],
    width: int,
) -> Path:
    """Step 6: report.md with the data, training, final metrics, syntax rate and samples."""
    filt = meta.get("filter") or {}
    data_lines = [
        f"Corpus: the Python standard library of this interpreter, filtered as code: "
        f"{meta['splits']['train']['documents']:,} train and {meta['splits']['val']['documents']:,} val files, "
        f"{meta['splits']['train']['tokens']:,} train tokens, vocabulary {meta['vocab_size']:,}.",
    ]
    if filt:
        data_lines.append(
            "\nFilter report:\n\n```json\n" + json.dumps(filt, indent=1)[:3000] + "\n```"
        )
    train_summary = {
        "steps": result.steps,
        "tokens seen": result.tokens,
        "params": result.params,
        "width": width,
        "wall time (s)": round(result.wall_time_s, 1),
        "stopped by": result.stop_reason,
    }
    return write_report(
        run_dir,
        title="lmlab demo: a small Python code model",
        sections={
            "Data": "\n".join(data_lines),
            "Training": markdown_table([train_summary]),
            _metrics_heading(metrics): markdown_table([final]),
            "Syntax pass rate": _syntax_section(syntax)
            if syntax
            else "Skipped: no time left in the budget.",
            "Samples from held-out function headers": "\n\n".join(shown),
        },
    )


def run_demo(
    minutes: float = DEFAULT_MINUTES,
    out: Path = Path("runs/demo"),
    overrides: list[str] | None = None,
    clock: Any = None,
) -> dict[str, Any]:
    """Run the demo; returns the final metrics (also in ``out/run/report.md``)."""
    if minutes <= 0:
        raise ConfigError(f"--minutes: must be positive, got {minutes}")
    clock = clock or time.monotonic  # looked up now: tests scale the time module's clocks
    budget = Budget(minutes * 60.0, clock)
    cfg = _demo_config(out, overrides)
    out = Path(out)
    print(f"lmlab demo: {minutes:g} minute budget, output in {out}/", flush=True)
    # 1-2) tokenizer and data, skipped when up to date
    cfg = resolve_training_inputs(cfg)
    meta = read_meta(Path(cfg.data.path))
    resolve_vocab_size(cfg.model, meta["vocab_size"])
    cfg.validate()

    # 3) train for the time that is left
    whole = val_batches(cfg, meta)
    keys = {o.lstrip("-").split("=")[0] for o in overrides or []}
    own_model = any(k.startswith("model.") for k in keys)
    step_s, eval_batch_s = _size_training(cfg, budget, minutes, whole, choose_width=not own_model)
    short = None if keys & {"train.lr", "train.min_lr"} else lr_for_budget(cfg)
    if short is not None:
        print(
            f"[train] {cfg.train.max_steps} steps (< {SHORT_BUDGET_LR_STEPS}): the embedding and "
            f"norm gains at lr {short[0]:g} (the recipe's {cfg.train.lr:g} is for longer budgets)",
            flush=True,
        )
        cfg.train.lr, cfg.train.min_lr = short
    result = train(
        cfg, resume=False, force=True
    )  # the demo's own run folder: a rerun starts it over

    # 4) eval on the whole val split, or on as many batches as the time left allows
    run_dir = Path(cfg.train.out)
    # the speeds as training really had them, if slower than measured (a loaded machine)
    slower = max(1.0, result.wall_time_s / max(result.steps, 1) / max(step_s, 1e-9))
    step_s, eval_batch_s = step_s * slower, eval_batch_s * slower
    report_s = REPORT_S + step_s  # the report and plot, slower on a slower machine
    left = budget.left() - report_s
    eval_s = max(EVAL_SHARE * left, left - (SYNTAX_RESERVE_S - REPORT_S))
    eval_batches = eval_batches_for(eval_s, eval_batch_s, whole)
    # sized from speeds just measured; a machine that slows down now stops at a deadline that
    # gives it half of what was planned for the samples and the syntax check on top
    eval_end = budget.left() - eval_s - 0.5 * (left - eval_s)
    metrics = evaluate_path(
        str(run_dir), batches=eval_batches, stop=lambda: budget.left() < eval_end
    )
    print("[eval]\n" + format_metrics(metrics), flush=True)

    # 5) samples and syntax pass rate from held-out function headers
    shown, syntax, n_syntax = _samples_and_syntax(cfg, run_dir, budget, report_s, clock)

    # 6) report
    final = {
        k: metrics[k]
        for k in ("val_loss", "perplexity", "accuracy", "bits_per_byte", "tokens")
        if k in metrics
    }
    report = _demo_report(run_dir, meta, final, result, metrics, syntax, shown, cfg.model.d_model)
    total = budget.elapsed()
    print(f"lmlab demo: done in {total / 60:.1f} min; report: {report}", flush=True)
    return {
        **final,
        "syntax_pass_rate": syntax["pass_rate"] if syntax else None,
        "report": str(report),
        "wall_time_s": total,
        "eval_batches": eval_batches,
        "eval_stopped": bool(metrics.get("stopped")),
        "syntax_samples": n_syntax,
    }
