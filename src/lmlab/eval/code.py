"""Code evaluation: syntax pass rate of sampled completions, and pass@k on HumanEval and MBPP.

Two kinds of figures:

* **Syntax pass rate** needs no execution: prompts (function headers with their docstrings from
  held-out files, or the empty prompt for unconditional documents) are completed by an
  injected ``generate_fn``; each completion is cut at the next top-level statement or the
  end-of-text token and passes when ``compile()`` accepts prompt + completion and the
  completion adds code (a bare ``pass``, comment or docstring does not: the prompt alone
  compiles). Completions cut by the token limit instead are counted apart, since they were
  never finished.
* **pass@k** runs each program (prompt + completion + tests) in :mod:`lmlab.eval.sandbox`,
  so it needs the explicit ``allow_code_execution`` opt-in. A sample passes only when its
  program ran to its last statement, the tests' final ``check``/asserts included (the
  sandbox's nonce proves it; ending early with ``sys.exit(0)`` and the like fails, as in the
  official human-eval harness). pass@k uses the unbiased estimator
  1 - C(n-c, k) / C(n, k) of Chen et al. (2021) in its numerically stable product form.
"""

from __future__ import annotations

import ast
import io
import os
import tokenize
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmlab.data.benchmarks import load_humaneval, load_mbpp
from lmlab.errors import LmlabError
from lmlab.eval.sandbox import SandboxConfig, SandboxResult, require_opt_in, run_in_sandbox

if TYPE_CHECKING:
    from lmlab.tokenizer.symbolic import SymbolicTokenizer

EOT_MARKER = "<|endoftext|>"

# A generate_fn returns one (completion, hit_eot) per prompt, or None for a prompt it left
# undone (a deadline passed): those are not counted.
GenerateFn = Callable[[list[str], int], list[tuple[str, bool] | None]]


# --- pass@k ---------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.
    """
    if not (0 <= c <= n) or k < 1 or n < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, n >= 1, k >= 1 (got n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """Average pass@k over tasks given (n, c) per task; a k above the smallest n is left out."""
    if not counts:
        return {}
    min_n = min(n for n, _ in counts)
    return {
        f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
        for k in ks
        if k <= min_n
    }


# --- programs -------------------------------------------------------------------------------


def humaneval_program(problem: Mapping[str, Any], completion: str) -> str:
    """The program HumanEval runs: prompt + completion + tests + ``check(entry_point)``."""
    return (
        problem["prompt"]
        + completion
        + "\n\n"
        + problem["test"]
        + "\n\n"
        + f"check({problem['entry_point']})\n"
    )


def mbpp_program(task: Mapping[str, Any], code: str, challenge: bool = False) -> str:
    """The program MBPP runs: code + ``test_setup_code`` + the ``test_list`` asserts."""
    tests = list(task["test_list"]) + (
        list(task.get("challenge_test_list") or []) if challenge else []
    )
    return code + "\n\n" + (task.get("test_setup_code") or "") + "\n\n" + "\n".join(tests) + "\n"


def _run_all(
    jobs: list[tuple[Any, str]], sandbox: SandboxConfig, workers: int
) -> list[SandboxResult]:
    """Run every (key, program) in the sandbox from a pool of threads, keeping order."""
    require_opt_in(sandbox)
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(lambda job: run_in_sandbox(job[1], sandbox), jobs))


def _report(
    benchmark: str,
    order: list[Any],
    jobs: list[tuple[Any, str]],
    results: list[SandboxResult],
    ks: Sequence[int],
) -> dict[str, Any]:
    per_task: dict[Any, dict[str, Any]] = {
        t: {"n": 0, "passed": 0, "reasons": Counter()} for t in order
    }
    for (task, _), r in zip(jobs, results):
        entry = per_task[task]
        entry["n"] += 1
        entry["passed"] += int(r.passed)
        entry["reasons"][r.reason] += 1
    for entry in per_task.values():
        entry["reasons"] = dict(entry["reasons"])
    counts = [(e["n"], e["passed"]) for e in per_task.values()]
    isolation = sorted({x for r in results for x in r.isolation})
    return {
        "benchmark": benchmark,
        "tasks": len(order),
        "samples": len(jobs),
        **mean_pass_at_k(counts, ks),
        "per_task": per_task,
        "failed_tasks": [t for t, e in per_task.items() if e["passed"] < e["n"]],
        "results": [
            {"task_id": t, "passed": r.passed, "reason": r.reason}
            for (t, _), r in zip(jobs, results)
        ],
        "isolation": isolation,
        "python": sorted({r.python for r in results if r.python}),
    }


def run_humaneval(
    completions_by_task: Mapping[str, Sequence[str]],
    problems: Sequence[Mapping[str, Any]] | Path | str,
    sandbox: SandboxConfig,
    ks: Sequence[int] = (1, 10, 100),
    workers: int = 0,
) -> dict[str, Any]:
    """Run HumanEval completions (the function bodies that follow each prompt) in the sandbox.

    Returns ``{"pass@1": ..., "per_task": {task_id: {"n", "passed", "reasons"}}, "results":
    [{"task_id", "passed", "reason"} per completion, in input order], ...}``; a pass@k is
    reported only when every task has at least k completions.
    """
    if isinstance(problems, str | Path):
        problems = load_humaneval(problems)
    by_id = {p["task_id"]: p for p in problems}
    unknown = [t for t in completions_by_task if t not in by_id]
    if unknown:
        raise LmlabError(f"unknown HumanEval task id(s): {', '.join(map(str, unknown[:5]))}")
    order = [t for t in by_id if t in completions_by_task]
    jobs = [(t, humaneval_program(by_id[t], c)) for t in order for c in completions_by_task[t]]
    return _report("humaneval", order, jobs, _run_all(jobs, sandbox, workers), ks)


def run_mbpp(
    code_by_task: Mapping[int, Sequence[str]],
    tasks: Sequence[Mapping[str, Any]] | Path | str,
    sandbox: SandboxConfig,
    ks: Sequence[int] = (1, 10, 100),
    workers: int = 0,
    challenge: bool = False,
) -> dict[str, Any]:
    """Run MBPP solutions (whole programs defining the function) against each task's asserts."""
    if isinstance(tasks, str | Path):
        tasks = load_mbpp(tasks)
    by_id = {int(t["task_id"]): t for t in tasks}
    unknown = [t for t in code_by_task if int(t) not in by_id]
    if unknown:
        raise LmlabError(f"unknown MBPP task id(s): {', '.join(map(str, unknown[:5]))}")
    order = [t for t in by_id if t in code_by_task]
    jobs = [(t, mbpp_program(by_id[t], c, challenge)) for t in order for c in code_by_task[t]]
    return _report("mbpp", order, jobs, _run_all(jobs, sandbox, workers), ks)


# --- prompts and completion cutting ---------------------------------------------------------


def extract_function_headers(
    source: str, require_docstring: bool = False, top_level: bool = False
) -> list[str]:
    """Prompts from a Python file: each function's decorators, ``def`` line(s) and docstring.

    Methods and nested functions are dedented to column 0; ``top_level`` keeps only the
    module's own functions (a dedented method reads as a function its file never had, and a
    model trained on the file continues it with more indented methods, never ending it, so
    every completion runs to the token limit). Every prompt ends with a newline and
    compiles once a body line (``pass`` at the body's indentation) is added; functions whose
    body sits on the ``def`` line are skipped. A file that does not parse gives no prompts.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    prompts = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node, clean=False) is not None
        if (require_docstring and not doc) or (top_level and node.col_offset > 0):
            continue
        first = node.body[0]
        if first.lineno <= node.lineno:
            continue  # `def f(): return 1`
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        end = first.end_lineno if doc else first.lineno - 1
        assert end is not None
        indent = node.col_offset
        body_line = lines[first.lineno - 1]
        body_indent = body_line[: len(body_line) - len(body_line.lstrip())]
        if len(body_indent) <= indent:
            continue
        chunk = []
        for line in lines[start - 1 : end]:
            chunk.append(line[indent:] if line[:indent].strip() == "" else line)
        prompt = "".join(chunk)
        if not prompt.endswith("\n"):
            prompt += "\n"
        try:
            compile(prompt + body_indent[indent:] + "pass\n", "<prompt>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            continue
        prompts.append(prompt)
    return prompts


def _line_offsets(text: str) -> list[int]:
    offsets, pos = [0], 0
    for line in text.split("\n")[:-1]:
        pos += len(line) + 1
        offsets.append(pos)
    return offsets


def _top_level_boundary(prompt: str, completion: str) -> int | None:
    """Offset in ``completion`` where the first top-level statement after the prompt begins."""
    text = prompt + completion
    offsets = _line_offsets(text)
    skip = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE}
    at_line_start = True
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text, newline="\n").readline):
            if tok.type == tokenize.ENDMARKER:
                return None
            if tok.type == tokenize.NEWLINE:
                at_line_start = True
                continue
            if tok.type in skip:
                continue
            if at_line_start and tok.start[1] == 0:
                pos = offsets[tok.start[0] - 1]
                if pos >= len(prompt):
                    return pos - len(prompt)
            at_line_start = False
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None  # text ends mid-statement or is not Python past this point
    return None


def function_ended(prompt: str, completion: str) -> bool:
    """Whether a growing ``completion`` of ``prompt`` already holds the top-level statement that
    :func:`cut_completion` would cut it at: decoding can stop there, with the same verdict.

    Cheap on most calls: the tokenizer runs only while the completion's last line starts at
    column 0 with something other than whitespace (where such a statement must begin). The text
    before a boundary tokenizes as it does in any longer text, so the boundary found here is the
    one the whole completion would give."""
    if not prompt.strip():
        return False
    line_start = completion.rfind("\n") + 1
    if line_start == 0 and not prompt.endswith("\n"):
        return False  # still on the prompt's last line
    last = completion[line_start:]
    if not last or last[0].isspace():
        return False
    return _top_level_boundary(prompt, completion) is not None


def cut_completion(
    prompt: str, completion_text: str, hit_eot: bool = False, eot_marker: str = EOT_MARKER
) -> tuple[str, str]:
    """Cut a sampled completion where the model finished; return (kept completion, reason).

    The completion ends at the end-of-text token (``hit_eot`` from the sampler, or the marker
    text if the decoder kept it) or, when the prompt is not empty, at the first top-level
    statement after the prompt (the function is then complete). ``reason`` is ``"stop"`` for
    either, or ``"length"`` when neither happened: the token limit cut the completion.
    ``prompt + kept`` is the program to check.
    """
    if eot_marker and eot_marker in completion_text:
        completion_text = completion_text[: completion_text.index(eot_marker)]
        hit_eot = True
    if prompt.strip():
        cut = _top_level_boundary(prompt, completion_text)
        if cut is not None:
            return completion_text[:cut], "stop"
    return completion_text, "stop" if hit_eot else "length"


NO_CODE = "adds no code"


def unfinished(max_new_tokens: int) -> str:
    """The failure message of a completion that the token limit cut."""
    return f"not finished within {max_new_tokens} tokens"


def adds_code(prompt: str, completion: str) -> bool:
    """Whether ``completion`` adds a statement to ``prompt`` other than ``pass``, ``...`` or a
    lone constant (a docstring): whitespace and comments alone add nothing.

    A completion that adds nothing is no answer even when prompt + completion compiles (a
    header with its docstring already does). Code that does not parse counts as added code;
    ``compile()`` judges it.
    """
    if not completion.strip():
        return False
    try:
        tree = ast.parse(prompt + completion)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return True
    offsets = _line_offsets(prompt + completion)
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        if offsets[node.lineno - 1] + node.col_offset < len(prompt):
            continue  # the prompt's own statement
        if isinstance(node, ast.Pass):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring, ``...`` or a bare number
        return True
    return False


def compiles(code: str) -> tuple[bool, str]:
    """Whether ``compile()`` accepts ``code``, and the error message when it does not."""
    try:
        compile(code, "<completion>", "exec", dont_inherit=True)
    except SyntaxError as e:  # includes IndentationError / TabError
        return False, f"{type(e).__name__}: {e.msg}"
    except (ValueError, MemoryError, RecursionError, OverflowError) as e:
        return False, f"{type(e).__name__}: {e}"
    return True, ""


def parse_report(programs: Iterable[str]) -> dict[str, Any]:
    """How many of ``programs`` (model outputs) ``compile()`` accepts.

    Returns ``{"samples", "parsed", "parse_rate", "empty", "errors"}``. An output that is
    blank or holds only comments, ``pass``, ``...`` or docstrings is counted under ``empty``
    and does not pass: it compiles, but it is no program. ``errors`` counts the five commonest
    failure messages.
    """
    n = ok = empty = 0
    errors: Counter[str] = Counter()
    for code in programs:
        n += 1
        if not adds_code("", code):
            empty += 1
            continue
        passed, err = compiles(code)
        ok += passed
        if not passed:
            errors[err] += 1
    return {
        "samples": n,
        "parsed": ok,
        "parse_rate": ok / n if n else 0.0,
        "empty": empty,
        "errors": dict(errors.most_common(5)),
    }


def parse_rate(sequences: Iterable[Sequence[int]], tokenizer: SymbolicTokenizer) -> dict[str, Any]:
    """Share of token sequences (model samples) whose table-less restore compiles.

    A sample ends at its first ``<|endoftext|>``. Returns :func:`parse_report`'s
    ``{"samples", "parsed", "parse_rate", "empty", "errors"}``: an empty sample does not pass.
    """
    return parse_report(tokenizer.restore_sample(seq) for seq in sequences)


def judge_completion(
    prompt: str, text: str, hit_eot: bool, max_new_tokens: int
) -> tuple[str, str, bool, str]:
    """One completion of the syntax check: (kept text, ``"stop"`` or ``"length"``, passed,
    error). It fails when prompt + kept does not compile, when it adds no code (``NO_CODE``),
    or when the token limit cut it, even where the text so far compiles (``unfinished``)."""
    kept, reason = cut_completion(prompt, text, hit_eot=bool(hit_eot))
    ok, err = compiles(prompt + kept)
    if ok and not adds_code(prompt, kept):
        ok, err = False, NO_CODE
    if ok and reason == "length":  # compiles as cut, but the function never ended
        ok, err = False, unfinished(max_new_tokens)
    return kept, reason, ok, err


def syntax_pass_rate(
    generate_fn: GenerateFn,
    prompts: Sequence[str],
    n: int = 100,
    max_new_tokens: int = 256,
    batch_size: int | Callable[[int], int] = 16,
    examples: int = 3,
) -> dict[str, Any]:
    """Sample ``n`` completions (cycling through ``prompts``) and count those that compile.

    ``generate_fn(prompts, max_new_tokens)`` returns one ``(text, hit_eot)`` per prompt, the
    text being the completion only. A completion passes when it finished (a top-level
    statement or end-of-text followed it), prompt + completion compiles and the completion
    adds code (:func:`adds_code`: not only whitespace, comments, ``pass``, ``...`` or a
    docstring); ``no_code`` counts those that added nothing. A completion cut by the token
    limit fails even when the text so far compiles: a model caught in a loop
    (``return None, None, None, ...``) is cut wherever the limit falls, often at a point that
    compiles. The report has the pass rate over all completions and over the completed ones,
    how many were cut by the token limit (and how many of those compiled as cut), the commonest
    errors (``"adds no code"`` among them) and a few failing examples.

    A ``None`` from ``generate_fn`` is a completion it did not run (its deadline passed):
    ``n`` counts only those that ran, ``not_run`` the others, and no later batch is asked for.
    ``batch_size`` may be a function of the completions done so far giving the next batch's
    size (sized to the time left at the pace seen so far); 0 asks for no more, and the rest
    count as not run. Batches take the cycle in order, so what ran is always its first ``n``.
    """
    if n < 1:
        raise LmlabError(f"syntax pass rate: n must be >= 1, got {n}")
    if not prompts:
        raise LmlabError(
            "syntax pass rate: no prompts (give function headers or [''] for unconditional)"
        )
    if (not callable(batch_size) and batch_size < 1) or max_new_tokens < 1:
        raise LmlabError("syntax pass rate: batch_size and max_new_tokens must be >= 1")
    next_size = batch_size if callable(batch_size) else lambda _done: batch_size
    todo = [prompts[i % len(prompts)] for i in range(n)]
    stats = Counter()
    errors: Counter[str] = Counter()
    failing: list[dict[str, str]] = []
    cut_but_compiled = unfinished(max_new_tokens)  # judge_completion's error for that case
    lo = 0
    while lo < n:
        size = min(n - lo, next_size(lo))
        if size < 1:
            stats["not_run"] += n - lo
            break
        batch = todo[lo : lo + size]
        lo += size
        outputs = generate_fn(list(batch), max_new_tokens)
        if len(outputs) != len(batch):
            raise LmlabError(
                f"generate_fn returned {len(outputs)} completions for {len(batch)} prompts"
            )
        for prompt, output in zip(batch, outputs):
            if output is None:
                stats["not_run"] += 1
                continue
            kept, reason, ok, err = judge_completion(prompt, *output, max_new_tokens)
            stats[reason] += 1
            stats["no_code"] += err == NO_CODE
            stats["compiled_length"] += err == cut_but_compiled
            stats[f"passed_{reason}"] += int(ok)
            if not ok:
                errors[err] += 1
                if len(failing) < examples:
                    failing.append(
                        {"prompt": prompt[-200:], "completion": kept[:400], "error": err}
                    )
        if stats["not_run"]:
            stats["not_run"] += n - lo  # the batches never asked for
            break
    return _syntax_report(n, stats, errors, failing)


def _syntax_report(
    n: int, stats: Counter, errors: Counter[str], failing: list[dict[str, str]]
) -> dict[str, Any]:
    """syntax_pass_rate's report from its tallies."""
    completed, length = stats["stop"], stats["length"]
    passed = stats["passed_stop"]
    ran = n - stats["not_run"]
    return {
        "n": ran,
        "not_run": stats["not_run"],
        "passed": passed,
        "pass_rate": passed / ran if ran else None,
        "completed": completed,
        "passed_completed": stats["passed_stop"],
        "pass_rate_completed": stats["passed_stop"] / completed if completed else None,
        "cut_by_length": length,
        "compiled_cut_by_length": stats["compiled_length"],
        "no_code": stats["no_code"],
        "top_errors": errors.most_common(5),
        "examples": failing,
    }


def function_header_prompts(
    files: Sequence[Path | str], limit: int = 0, require_docstring: bool = True
) -> list[str]:
    """Function-header prompts from held-out Python files (undecodable or unparsable ones skipped)."""
    prompts: list[str] = []
    for path in files:
        try:
            source = Path(path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        prompts.extend(extract_function_headers(source, require_docstring=require_docstring))
        if limit and len(prompts) >= limit:
            return prompts[:limit]
    return prompts


__all__ = [
    "adds_code",
    "compiles",
    "cut_completion",
    "extract_function_headers",
    "function_ended",
    "function_header_prompts",
    "humaneval_program",
    "mbpp_program",
    "mean_pass_at_k",
    "parse_rate",
    "parse_report",
    "pass_at_k",
    "run_humaneval",
    "run_mbpp",
    "syntax_pass_rate",
]
