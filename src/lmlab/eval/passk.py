"""`lmlab eval RUN --code humaneval|mbpp`: sample completions from a run, score pass@k.

Completions come from the KV-cache sampler (:func:`lmlab.sample.generate`, ``--samples`` per
task in one batch), are cut where the model finished (:func:`cut_completion` for HumanEval's
function bodies, :func:`cut_mbpp_completion` for MBPP's whole programs) and run in the
sandbox (:mod:`lmlab.eval.sandbox`), which needs ``--allow-code-execution``.

MBPP prompts are the task text and its test asserts as comment lines, which a base code model
continues with a function; the program run is prompt + completion + the asserts.

Writes ``RUN/eval/BENCHMARK.jsonl`` (one line per sample: task, completion, verdict) and
``RUN/eval/BENCHMARK.json`` (pass@k, per-task counts, settings). Both are replaced only when
both are lmlab's own, unchanged since it wrote them; anything else there is refused.
"""

from __future__ import annotations

import io
import json
import sys
import time
import tokenize
import warnings
from pathlib import Path
from typing import Any

from lmlab.data.benchmarks import load_humaneval, load_mbpp
from lmlab.device import inference_device
from lmlab.errors import LmlabError
from lmlab.eval.code import cut_completion, run_humaneval, run_mbpp
from lmlab.eval.sandbox import OPT_IN_HINT, SandboxConfig
from lmlab.io import atomic_write_text, sha256_file
from lmlab.runs import load_model_for_inference, resolve_checkpoint
from lmlab.sample import generate

FORMAT = "lmlab-code-eval-v1"
BENCHMARKS = ("humaneval", "mbpp")

# Where a problems file is looked for when --problems is not given (relative to the cwd).
DEFAULT_PROBLEMS = {
    "humaneval": ["HumanEval.jsonl.gz", "HumanEval.jsonl", "data/HumanEval.jsonl.gz",
                  "../shared/data/human-eval/HumanEval.jsonl.gz"],
    "mbpp": ["mbpp.jsonl", "data/mbpp.jsonl", "../shared/data/mbpp/mbpp.jsonl"],
}  # fmt: skip

# Top-level text after which a completion is over (the Codex paper's stop set, plus asserts).
HUMANEVAL_STOPS = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\nassert "]
MBPP_STOPS = ["\nassert ", "\nprint(", "\nif __name__", "\n# "]
_DEFINITIONS = {"def", "class", "async", "@", "import", "from"}


def parse_ks(text: str, samples: int) -> list[int]:
    """``"1,10"`` -> [1, 10]; each k must be >= 1 and at most ``samples``."""
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise LmlabError(f"--k {text!r}: expected comma-separated integers such as 1,10") from None
    if not ks or ks[0] < 1:
        raise LmlabError(f"--k {text!r}: each k must be >= 1")
    if ks[-1] > samples:
        raise LmlabError(f"--k {ks[-1]} needs --samples >= {ks[-1]} (got --samples {samples})")
    return ks


def mbpp_prompt(task: dict[str, Any]) -> str:
    """The task text and its asserts as comments (no quoting to escape); the model writes the code."""
    lines = [" ".join(str(task["text"]).split())] + [" ".join(t.split()) for t in task["test_list"]]
    return "".join(f"# {line}\n" for line in lines)


def cut_mbpp_completion(completion: str) -> str:
    """Keep the definitions (functions, classes, imports) the model wrote: the completion ends
    at end-of-text or at the first other top-level statement after a definition."""
    seen_def = False
    offset = [0]
    for line in completion.split("\n"):
        offset.append(offset[-1] + len(line) + 1)
    at_line_start = True
    try:
        for tok in tokenize.generate_tokens(io.StringIO(completion, newline="\n").readline):
            if tok.type == tokenize.ENDMARKER:
                break
            if tok.type == tokenize.NEWLINE:
                at_line_start = True
                continue
            if tok.type in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
                continue
            if at_line_start and tok.start[1] == 0:
                if tok.string in _DEFINITIONS:
                    seen_def = seen_def or tok.string not in ("import", "from")
                elif seen_def:
                    return completion[: offset[tok.start[0] - 1]]
            at_line_start = False
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # text ends mid-statement: keep it all, the sandbox judges it
    return completion


def find_problems(benchmark: str, given: str | None) -> Path:
    if given:
        path = Path(given)
        if not path.is_file():
            raise LmlabError(f"--problems {given}: file not found")
        return path
    for candidate in DEFAULT_PROBLEMS[benchmark]:
        if Path(candidate).is_file():
            return Path(candidate)
    names = ", ".join(DEFAULT_PROBLEMS[benchmark])
    raise LmlabError(
        f"--code {benchmark}: no problems file found (looked for {names}); pass --problems PATH"
    )


def _output_paths(run: Path, benchmark: str) -> tuple[Path, Path]:
    """RUN/eval/BENCHMARK.{jsonl,json}, refusing anything lmlab did not write there."""
    folder = run / "eval"
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise LmlabError(
            f"{folder}: not a plain folder (a symlink or a file); lmlab writes code-eval results there"
        )
    samples, summary = folder / f"{benchmark}.jsonl", folder / f"{benchmark}.json"
    for p in (samples, summary):
        if p.is_symlink():
            raise LmlabError(f"{p}: a symlink; lmlab does not write through links in a run folder")
    if not samples.exists() and not summary.exists():
        return samples, summary
    ours = False
    if samples.is_file() and summary.is_file():
        try:
            meta = json.loads(summary.read_text(encoding="utf-8"))
            ours = meta.get("format") == FORMAT and meta.get("samples_sha256") == sha256_file(
                samples
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            ours = False
    if not ours:
        raise LmlabError(
            f"{folder}: {samples.name} / {summary.name} exist and are not lmlab's unchanged code-eval "
            "output; move them away first"
        )
    return samples, summary


def _check_request(
    benchmark: str, samples: int, ks: list[int], tasks: int, max_new_tokens: int
) -> None:
    if benchmark not in BENCHMARKS:
        raise LmlabError(f"--code {benchmark!r}: expected one of {', '.join(BENCHMARKS)}")
    if samples < 1 or tasks < 0 or max_new_tokens < 1:
        raise LmlabError("--samples and --max-new-tokens must be >= 1, --tasks >= 0")
    if max(ks) > samples:
        raise LmlabError(f"--k {max(ks)} needs --samples >= {max(ks)} (got --samples {samples})")


def _load_tasks(
    benchmark: str, problems: str | None, tasks: int
) -> tuple[Path, list[dict[str, Any]]]:
    """The benchmark file and its tasks (the first ``tasks`` of them when > 0)."""
    path = find_problems(benchmark, problems)
    rows = load_humaneval(path) if benchmark == "humaneval" else load_mbpp(path, split="test")
    if not rows:
        raise LmlabError(f"{path}: no {benchmark} tasks")
    return path, rows[:tasks] if tasks else rows


def _sample_completions(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    benchmark: str,
    samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
) -> tuple[dict[Any, list[str]], list[dict[str, Any]]]:
    """Each task's completions, cut into programs (by task id), and one record per sample."""
    kept: dict[Any, list[str]] = {}
    records: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        key = row["task_id"] if benchmark == "humaneval" else int(row["task_id"])
        prompt = row["prompt"] if benchmark == "humaneval" else mbpp_prompt(row)
        outs = generate(
            model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            stop=HUMANEVAL_STOPS if benchmark == "humaneval" else MBPP_STOPS, num_samples=samples,
            seed=seed + i,
        )  # fmt: skip
        for j, s in enumerate(outs):
            if benchmark == "humaneval":
                text, _ = cut_completion(prompt, s.text, hit_eot=s.finish_reason == "eot")
            else:
                text = prompt + cut_mbpp_completion(s.text)
            kept.setdefault(key, []).append(text)
            records.append(
                {"task_id": key, "sample": j, "completion": text, "finish_reason": s.finish_reason}
            )
    return kept, records


def _run_completions(
    kept: dict[Any, list[str]],
    rows: list[dict[str, Any]],
    benchmark: str,
    sandbox: SandboxConfig,
    ks: list[int],
    workers: int,
) -> dict[str, Any]:
    """Run every program in the sandbox; its warnings (e.g. the sandbox's caution) once each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        if benchmark == "humaneval":
            report = run_humaneval(kept, rows, sandbox, ks=ks, workers=workers)
        else:
            report = run_mbpp(kept, rows, sandbox, ks=ks, workers=workers)
    for message in dict.fromkeys(
        str(w.message) for w in caught
    ):  # one line each, e.g. the sandbox's caution
        print(f"lmlab: warning: {message}", file=sys.stderr)
    return report


def code_eval(
    run: str | Path,
    benchmark: str,
    *,
    samples: int = 1,
    ks: list[int] | None = None,
    allow_code_execution: bool = False,
    temperature: float | None = None,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    tasks: int = 0,
    problems: str | None = None,
    seed: int = 0,
    timeout_s: float = 10.0,
    workers: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Sample ``samples`` completions per task from ``run``, run them, and write the results."""
    if not allow_code_execution:
        raise LmlabError(OPT_IN_HINT)  # before loading anything
    ks = ks or [1]
    _check_request(benchmark, samples, ks, tasks, max_new_tokens)
    temperature = (0.0 if samples == 1 else 0.8) if temperature is None else temperature
    run = Path(run)
    path, rows = _load_tasks(benchmark, problems, tasks)

    ckpt = resolve_checkpoint(run)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else run
    samples_path, summary_path = _output_paths(run_dir, benchmark)
    model, _cfg, tokenizer = load_model_for_inference(ckpt, device=device, decode_batch=samples)
    sandbox = SandboxConfig(allow_code_execution=True, timeout_s=timeout_s)

    t0 = time.monotonic()
    kept, records = _sample_completions(
        model, tokenizer, rows, benchmark, samples, temperature, top_p, max_new_tokens, seed
    )
    sample_s = time.monotonic() - t0
    report = _run_completions(kept, rows, benchmark, sandbox, ks, workers)
    for rec, res in zip(records, report.pop("results")):
        rec.update(passed=res["passed"], reason=res["reason"])

    atomic_write_text(samples_path, "".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "format": FORMAT,
        "benchmark": benchmark,
        "checkpoint": str(ckpt.resolve()),
        "problems": str(path.resolve()),
        "tasks": report["tasks"],
        "samples_per_task": samples,
        **{k: v for k, v in report.items() if k.startswith("pass@")},
        "settings": {
            "temperature": temperature,
            "top_p": top_p,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "k": ks,
            "timeout_s": timeout_s,
        },  # fmt: skip
        "isolation": report["isolation"],
        "python": report["python"],
        "sampling_s": round(sample_s, 1),
        "execution_s": round(time.monotonic() - t0 - sample_s, 1),
        "per_task": {str(t): e for t, e in report["per_task"].items()},
        "samples_file": samples_path.name,
        "samples_sha256": sha256_file(samples_path),
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return {**summary, "samples_path": str(samples_path), "summary_path": str(summary_path)}


def format_code_eval(result: dict[str, Any]) -> str:
    scores = "  ".join(f"{k} {result[k]:.4f}" for k in result if k.startswith("pass@"))
    return (
        f"{result['benchmark']}: {scores} over {result['tasks']} tasks, "
        f"{result['samples_per_task']} samples each\n"
        f"completions and per-task results: {result['samples_path']}, {result['summary_path']}"
    )


def code_eval_command(
    run: str,
    benchmark: str,
    *,
    samples: int,
    k: str,
    allow_code_execution: bool,
    temperature: float | None,
    max_new_tokens: int,
    tasks: int,
    problems: str | None,
    seed: int,
) -> dict[str, Any]:
    """`lmlab eval RUN --code ...`: :func:`code_eval` with ``--k`` parsed, on the inference device."""
    return code_eval(
        run,
        benchmark,
        samples=samples,
        ks=parse_ks(k, samples),
        allow_code_execution=allow_code_execution,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        tasks=tasks,
        problems=problems,
        seed=seed,
        device=inference_device(),
    )
