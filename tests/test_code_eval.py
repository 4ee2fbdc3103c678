"""pass@k, the HumanEval/MBPP harness, completion cutting and the syntax pass rate."""

from __future__ import annotations

import ast
import gzip
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import pytest

from lmlab.data.benchmarks import MBPP_SPLITS, load_humaneval, load_mbpp, mbpp_split
from lmlab.errors import DataError, LmlabError
from lmlab.eval.code import (
    adds_code,
    compiles,
    cut_completion,
    extract_function_headers,
    function_ended,
    function_header_prompts,
    humaneval_program,
    mbpp_program,
    mean_pass_at_k,
    parse_report,
    pass_at_k,
    run_humaneval,
    run_mbpp,
    syntax_pass_rate,
)
from lmlab.eval.sandbox import SandboxConfig
from sandbox_fixtures import needs_sandbox

pytestmark = pytest.mark.filterwarnings("ignore:lmlab will execute model-written code")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HUMANEVAL = DATA / "human-eval" / "HumanEval.jsonl.gz"
MBPP = DATA / "mbpp" / "mbpp.jsonl"
SANDBOX = SandboxConfig(allow_code_execution=True, timeout_s=20.0)


def needs(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"{path} missing (shared test data not present)")


# --- pass@k ---------------------------------------------------------------------------------


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n", [1, 2, 5, 10, 37])
def test_pass_at_k_matches_binomial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_known_values_and_large_n():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 1, 10) == 1.0
    # Large n, where C(n, k) overflows floats: still finite and equal to the exact value.
    got = pass_at_k(2000, 7, 1000)
    assert math.isfinite(got)
    assert got == pytest.approx(float(exact_pass_at_k(2000, 7, 1000)), rel=1e-9)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 6)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_mean_pass_at_k_leaves_out_k_above_smallest_n():
    out = mean_pass_at_k([(2, 1), (4, 0)], ks=(1, 2, 4))
    assert set(out) == {"pass@1", "pass@2"}
    assert out["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["pass@2"] == pytest.approx((1.0 + 0.0) / 2)


# --- data -----------------------------------------------------------------------------------


def test_mbpp_split_boundaries():
    assert [mbpp_split(i) for i in (1, 10, 11, 510, 511, 600, 601, 974)] == [
        "prompt", "prompt", "test", "test", "validation", "validation", "train", "train",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        mbpp_split(975)


def test_load_mbpp_standard_split_sizes():
    needs(MBPP)
    sizes = {name: len(load_mbpp(MBPP, split=name)) for name in MBPP_SPLITS}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    assert len(load_mbpp(MBPP)) == 974
    with pytest.raises(LmlabError, match="split"):
        load_mbpp(MBPP, split="dev")


def test_loaders_report_bad_files(tmp_path):
    bad = tmp_path / "he.jsonl"
    bad.write_text('{"task_id": "x"}\n')
    with pytest.raises(DataError, match=r"he.jsonl:1: missing field"):
        load_humaneval(bad)
    bad.write_text("not json\n")
    with pytest.raises(DataError, match=r"he.jsonl:1: malformed JSON"):
        load_humaneval(bad)
    with pytest.raises(DataError, match="file not found"):
        load_mbpp(tmp_path / "nope.jsonl")
    gz = tmp_path / "he.jsonl.gz"
    row = {"task_id": "T/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
           "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}  # fmt: skip
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    assert load_humaneval(gz) == [row]


def test_program_builders():
    problem = {
        "prompt": "def f(x):\n",
        "test": "def check(c):\n    assert c(2) == 4\n",
        "entry_point": "f",
    }
    prog = humaneval_program(problem, "    return x * 2\n")
    assert prog.startswith("def f(x):\n    return x * 2\n") and prog.endswith("check(f)\n")
    task = {
        "test_setup_code": "y = 3",
        "test_list": ["assert g(y) == 4"],
        "challenge_test_list": ["assert g(0) == 1"],
    }
    prog = mbpp_program(task, "def g(v):\n    return v + 1")
    assert prog.index("def g") < prog.index("y = 3") < prog.index("assert g(y)")
    assert "g(0)" not in prog and "assert g(0) == 1" in mbpp_program(task, "", challenge=True)
    exec(compile(prog, "<p>", "exec"), {})  # the built program is runnable as is


# --- the harness (through the sandbox) --------------------------------------------------------


def test_harness_needs_opt_in():
    problems = [{"task_id": "T/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
                 "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}]  # fmt: skip
    with pytest.raises(LmlabError, match="--allow-code-execution"):
        run_humaneval({"T/0": ["    return 1\n"]}, problems, SandboxConfig())
    with pytest.raises(LmlabError, match="unknown HumanEval task"):
        run_humaneval({"T/9": ["x"]}, problems, SANDBOX)


def test_humaneval_canonical_passes_and_empty_bodies_fail():
    needs_sandbox()
    needs(HUMANEVAL)
    problems = load_humaneval(HUMANEVAL)
    assert len(problems) == 164
    subset = problems[::16]  # a fixed spread of 11 tasks; the full set runs in bench/code_eval.py
    completions = {
        p["task_id"]: [p["canonical_solution"], "    pass\n", "    return None\n"] for p in subset
    }
    report = run_humaneval(completions, problems, SANDBOX, ks=(1, 2, 3))
    assert report["tasks"] == len(subset) and report["samples"] == 3 * len(subset)
    for task_id, entry in report["per_task"].items():
        assert entry["n"] == 3 and entry["passed"] == 1, (task_id, entry)
    assert report["pass@1"] == pytest.approx(1 / 3)
    assert report["pass@2"] == pytest.approx(2 / 3)
    assert report["pass@3"] == 1.0
    canonical = run_humaneval(
        {p["task_id"]: [p["canonical_solution"]] for p in subset}, problems, SANDBOX
    )
    assert (
        canonical["pass@1"] == 1.0 and set(canonical) >= {"pass@1"} and "pass@10" not in canonical
    )
    empty = run_humaneval({p["task_id"]: ["    pass\n"] for p in subset}, problems, SANDBOX)
    assert empty["pass@1"] == 0.0 and len(empty["failed_tasks"]) == len(subset)


def test_mbpp_reference_code_passes():
    needs_sandbox()
    needs(MBPP)
    tasks = load_mbpp(MBPP, split="test")[:10]
    report = run_mbpp({t["task_id"]: [t["code"]] for t in tasks}, MBPP, SANDBOX)
    assert report["pass@1"] == 1.0, report["failed_tasks"]
    wrong = run_mbpp(
        {t["task_id"]: ["def nothing():\n    pass\n"] for t in tasks[:3]}, MBPP, SANDBOX
    )
    assert wrong["pass@1"] == 0.0
    assert all(e["reasons"] for e in wrong["per_task"].values())


# --- prompts, cutting, syntax pass rate -----------------------------------------------------

MODULE = '''\
import functools


def add(a, b):
    """Add two numbers."""
    return a + b


def no_doc(x):
    return x


def one_liner(): return 1


@functools.lru_cache(maxsize=None)
def cached(
    n: int,
    m: int = 2,
) -> int:
    """Multi-line signature,
with a docstring line at column 0."""
    return n * m


class Box:
    def size(self):
        """How big the box is."""
        return 3

    async def fetch(self):
        """Fetch it."""
        return None
'''


def test_extract_function_headers():
    prompts = extract_function_headers(MODULE)
    assert 'def add(a, b):\n    """Add two numbers."""\n' in prompts
    assert "def no_doc(x):\n" in prompts
    assert not any("one_liner" in p for p in prompts)
    cached = next(p for p in prompts if "cached" in p)
    assert cached.startswith("@functools.lru_cache") and cached.endswith('column 0."""\n')
    assert 'def size(self):\n    """How big the box is."""\n' in prompts  # method dedented
    assert any(p.startswith("async def fetch(self):") for p in prompts)
    for p in prompts:
        assert compiles(p + "    pass\n")[0], p
    with_doc = extract_function_headers(MODULE, require_docstring=True)
    assert not any("no_doc" in p for p in with_doc) and len(with_doc) == len(prompts) - 1
    assert extract_function_headers("def broken(:\n") == []
    # top_level: the module's own functions only (no methods, none nested)
    top = extract_function_headers(MODULE, require_docstring=True, top_level=True)
    assert [re.search(r"def (\w+)", p).group(1) for p in top] == ["add", "cached"]


def test_cut_completion():
    prompt = 'def f(x):\n    """Double."""\n'
    body = "    y = x * 2\n\n    return y\n"
    assert cut_completion(prompt, body + "\ndef g():\n    pass\n") == (body + "\n", "stop")
    assert cut_completion(prompt, body + "print(f(2))\n") == (body, "stop")
    # Column-0 text inside a string, or a column-0 comment, does not end the function.
    tricky = '    s = """\nnot code\n"""\n# note\n    return s\n'
    assert cut_completion(prompt, tricky + "x = 1\n") == (tricky, "stop")
    # No top-level statement: the token limit cut it unless the sampler hit end-of-text.
    assert cut_completion(prompt, "    return (x +") == ("    return (x +", "length")
    assert cut_completion(prompt, body, hit_eot=True) == (body, "stop")
    assert cut_completion(prompt, body + "<|endoftext|>def h(): pass") == (body, "stop")
    # Unconditional documents end only at end-of-text.
    assert cut_completion("", "import os\nx = 1\n") == ("import os\nx = 1\n", "length")
    assert cut_completion("", "import os\n<|endoftext|>junk") == ("import os\n", "stop")


def test_syntax_pass_rate_sizes_each_batch_by_a_callable():
    """``batch_size`` as a function of the completions done: batches take the cycle in
    order, and a 0 leaves the rest not run."""
    prompts = ["def a():\n", "def b():\n", "def c():\n"]
    seen, sizes = [], iter([2, 4, 0])
    asked = []

    def next_size(done: int) -> int:
        asked.append(done)
        return next(sizes)

    def generate(batch, max_new_tokens):
        seen.extend(batch)
        return [("    return 1\n", True)] * len(batch)

    report = syntax_pass_rate(generate, prompts, n=10, batch_size=next_size)
    assert asked == [0, 2, 6]
    assert seen == [prompts[i % 3] for i in range(6)]  # the cycle's first 6
    assert report["n"] == 6 and report["passed"] == 6 and report["not_run"] == 4
    # a size past what is left is cut to it
    report = syntax_pass_rate(generate, prompts, n=3, batch_size=lambda done: 50)
    assert report["n"] == 3 and report["not_run"] == 0


def test_syntax_pass_rate_with_fake_generator():
    prompt = "def f(x):\n"
    outputs = [
        ("    return x\n\ndef g():\n    pass\n", False),  # completed, compiles
        ("    return x +\n\nprint(1)\n", False),  # completed, syntax error
        ("    return [x,", False),  # cut by length, does not compile
        ("    return x\n", True),  # hit end-of-text, compiles
        ("    if x:\n        return 1\n    else", False),  # cut by length, syntax error
        ("    return None, None, None, None,", False),  # a loop the limit cut where it compiles
    ]
    calls = []

    def generate(batch, max_new_tokens):
        calls.append((len(batch), max_new_tokens))
        start = sum(c[0] for c in calls[:-1])
        return [outputs[(start + i) % len(outputs)] for i in range(len(batch))]

    report = syntax_pass_rate(generate, [prompt], n=12, max_new_tokens=32, batch_size=5)
    assert calls == [(5, 32), (5, 32), (2, 32)]
    assert (
        report["n"] == 12 and report["passed"] == 4 and report["pass_rate"] == pytest.approx(4 / 12)
    )
    assert report["completed"] == 6 and report["passed_completed"] == 4
    assert report["pass_rate_completed"] == pytest.approx(4 / 6)
    # the looping one compiles where the limit cut it, and still fails: it never finished
    assert report["cut_by_length"] == 6 and report["compiled_cut_by_length"] == 2
    assert dict(report["top_errors"])["not finished within 32 tokens"] == 2
    assert len(report["examples"]) == 3

    with pytest.raises(LmlabError, match="returned 1 completions"):
        syntax_pass_rate(lambda b, m: [("x", True)], [prompt], n=3, batch_size=3)
    with pytest.raises(LmlabError, match="n must be"):
        syntax_pass_rate(generate, [prompt], n=0)
    with pytest.raises(LmlabError, match="no prompts"):
        syntax_pass_rate(generate, [], n=5)


def test_completions_left_undone_by_a_deadline_are_not_counted():
    """A generate_fn returns None for prompts it did not run (its deadline passed): those are
    left out of n and the rate, counted as not_run, and no further batch is asked for."""
    prompt = 'def f(x):\n    """Return x."""\n'
    calls = []

    def generate(batch, max_new_tokens):
        calls.append(len(batch))
        if len(calls) == 1:
            return [("    return x\n", True)] * len(batch)
        return [("    return x\n", True)] + [None] * (len(batch) - 1)  # ran out mid-batch

    report = syntax_pass_rate(generate, [prompt], n=10, max_new_tokens=8, batch_size=4)
    assert calls == [4, 4]  # the third batch is never asked for
    assert report["n"] == 5 and report["not_run"] == 5
    assert report["passed"] == 5 and report["pass_rate"] == 1.0


def test_function_header_prompts_skips_bad_files(tmp_path):
    (tmp_path / "good.py").write_text(MODULE)
    (tmp_path / "latin1.py").write_bytes(b"def f():\n    '''caf\xe9'''\n    pass\n")
    (tmp_path / "broken.py").write_text("def broken(:\n")
    files = sorted(tmp_path.glob("*.py"))
    prompts = function_header_prompts(files)
    assert len(prompts) == 4 and all('"""' in p for p in prompts)
    assert len(function_header_prompts(files, limit=2)) == 2


@pytest.mark.parametrize("module", ["textwrap.py", "shlex.py", "json/__init__.py"])
def test_cut_completion_recovers_real_functions(module):
    # Prompt = a real top-level function's header; completion = the rest of the file. The cut
    # must keep exactly that function's body (so prompt + kept compiles) and stop at the next
    # top-level statement, or run to the end ("length") for the file's last statement.
    import sysconfig

    path = Path(sysconfig.get_paths()["stdlib"]) / module
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    offset = [0]
    for line in lines:
        offset.append(offset[-1] + len(line))
    checked = 0
    for i, node in enumerate(tree.body):
        if not isinstance(node, ast.FunctionDef) or node.decorator_list:
            continue
        prompt = next(
            p for p in extract_function_headers(source) if p.startswith(f"def {node.name}(")
        )
        start = offset[node.lineno - 1]
        assert source[start:].startswith(prompt)
        kept, reason = cut_completion(prompt, source[start + len(prompt) :])
        end = start + len(prompt) + len(kept)
        assert compiles(prompt + kept)[0], node.name
        assert end >= offset[node.end_lineno]  # the whole function is kept
        if i + 1 < len(tree.body):
            nxt = tree.body[i + 1]
            first = min([nxt.lineno] + [d.lineno for d in getattr(nxt, "decorator_list", [])])
            assert reason == "stop" and end <= offset[first - 1]  # and nothing of the next
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("module", ["textwrap.py", "shlex.py", "json/decoder.py"])
def test_function_ended_stops_where_the_whole_completion_is_cut(module):
    # Decoding may stop at the first prefix function_ended accepts only if cutting that prefix
    # keeps what cutting the whole completion keeps. Growing a real file's rest piece by piece
    # (pieces of 1 to 7 characters, as tokens come), the first accepted prefix must cut to the
    # same body, and no prefix before the whole function is accepted.
    import random
    import sysconfig

    source = (Path(sysconfig.get_paths()["stdlib"]) / module).read_text(encoding="utf-8")
    rng = random.Random(0)
    checked = 0
    for prompt in extract_function_headers(source, top_level=True):
        rest = source[source.index(prompt) + len(prompt) :]
        whole, reason = cut_completion(prompt, rest)
        end = 0
        while end < len(rest):
            end += rng.randint(1, 7)
            if function_ended(prompt, rest[:end]):
                break
        if reason == "length":
            assert end >= len(rest), prompt  # the file's last function never ends early
            continue
        assert len(whole) < end <= len(rest), prompt
        assert cut_completion(prompt, rest[:end]) == (whole, "stop"), prompt
        checked += 1
    assert checked >= 3
    assert not function_ended("", "x = 1\ny = 2\n")  # no prompt: only end-of-text ends it
    assert not function_ended("def f():\n", "    return 1\n    ")  # still in the body
    assert not function_ended("def f():\n", '    s = """\nx = 1\n')  # a string's line


def test_parse_report_counts_empty_outputs_apart_and_as_failures():
    report = parse_report(["x = 1\n", "def f(:\n", "  \n", "", "for i in y:\n    pass\n"])
    assert (report["samples"], report["parsed"], report["empty"]) == (5, 2, 2)
    assert report["parse_rate"] == 2 / 5
    assert sum(report["errors"].values()) == 1 and all(
        k.startswith("SyntaxError") for k in report["errors"]
    )
    assert parse_report([])["parse_rate"] == 0.0


# --- metrics a model cannot game ------------------------------------------------------------

EARLY_EXITS = [
    "    import sys\n    sys.exit(0)\n",
    "    exit()\n",
    "    quit()\n",
    "    import os\n    os._exit(0)\n",
    "    raise SystemExit\n",
    "    import os\n    os.kill(os.getpid(), 9)\n",
    "    import sys, os\n    sys.stdout.close()\n    os.close(1)\n    os.close(2)\n    return None\n",
]


def _module_level(body: str) -> str:
    """The same ending as module-level code (MBPP programs are whole modules)."""
    return "\n".join(line[4:] for line in body.splitlines()) + "\n"


def test_ending_the_program_early_scores_zero_on_a_local_task():
    needs_sandbox()
    problems = [{"task_id": "T/0", "prompt": "def f(x):\n", "canonical_solution": "    return 2 * x\n",
                 "test": "def check(c):\n    assert c(2) == 4\n", "entry_point": "f"}]  # fmt: skip
    completions = {"T/0": [*EARLY_EXITS, "    return 2 * x\n"]}
    report = run_humaneval(completions, problems, SANDBOX, ks=(1,))
    entry = report["per_task"]["T/0"]
    assert entry["n"] == len(EARLY_EXITS) + 1 and entry["passed"] == 1, entry
    assert entry["reasons"]["passed"] == 1
    assert entry["reasons"].get("exited before the end of the program (exit status 0)", 0) >= 4


def test_ending_the_program_early_scores_zero_on_humaneval_and_mbpp():
    needs_sandbox()
    needs(HUMANEVAL)
    needs(MBPP)
    problems = load_humaneval(HUMANEVAL)[:3]
    report = run_humaneval(
        {p["task_id"]: EARLY_EXITS for p in problems}, problems, SANDBOX, ks=(1,)
    )
    assert report["pass@1"] == 0.0, report["per_task"]
    tasks = load_mbpp(MBPP, split="test")[:2]
    code = {t["task_id"]: [_module_level(e) for e in EARLY_EXITS] for t in tasks}
    report = run_mbpp(code, tasks, SANDBOX, ks=(1,))
    assert report["pass@1"] == 0.0, report["per_task"]
    ok = run_mbpp({t["task_id"]: [t["code"]] for t in tasks}, tasks, SANDBOX, ks=(1,))
    assert ok["pass@1"] == 1.0


NOTHING_ADDED = ["", "\n\n", "    pass\n", "    # TODO\n", "    ...\n", '    """More doc."""\n',
                 "    pass  # later\n    ...\n"]  # fmt: skip


def test_adds_code():
    prompt = 'def f(x):\n    """Double."""\n'
    for completion in NOTHING_ADDED:
        assert not adds_code(prompt, completion), completion
    for completion in (
        "    return x * 2\n",
        "    x += 1\n",
        "    def g():\n        pass\n",
        "    return (x +",
    ):
        assert adds_code(prompt, completion), completion
    assert not adds_code("", "# a comment\n'''doc'''\n") and adds_code("", "import os\n")


def test_a_generator_that_stops_at_once_scores_zero():
    prompts = ['def f(x):\n    """Double."""\n', "def g():\n"]

    def stops(batch, max_new_tokens):
        return [("", True) for _ in batch]

    report = syntax_pass_rate(stops, prompts, n=8, batch_size=4)
    assert report["pass_rate"] == 0.0 and report["passed"] == 0 and report["no_code"] == 4
    assert dict(report["top_errors"])["adds no code"] == 4  # the other 4 do not compile
    outputs = iter(NOTHING_ADDED * 2)

    def trivial(batch, max_new_tokens):
        return [(next(outputs), True) for _ in batch]

    report = syntax_pass_rate(trivial, prompts[:1], n=len(NOTHING_ADDED), batch_size=3)
    assert report["pass_rate"] == 0.0 and report["no_code"] == len(NOTHING_ADDED)
    assert parse_report(["# only a comment\n", "pass\n", "x = 1\n"])["parsed"] == 1
