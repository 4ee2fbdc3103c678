"""`lmlab eval RUN --code humaneval|mbpp`: a tiny trained run, a handful of local tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lmlab.eval.passk
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.eval.code import humaneval_program, mbpp_program, pass_at_k
from lmlab.eval.passk import cut_mbpp_completion, mbpp_prompt, parse_ks
from lmlab.eval.sandbox import SandboxConfig, run_in_sandbox
from lmlab.sample_text import Sample
from lmlab_train_fixtures import tiny_config, write_dataset
from sandbox_fixtures import needs_sandbox

pytestmark = pytest.mark.filterwarnings("ignore:lmlab will execute model-written code")

# Small character set on purpose: the run's char tokenizer is trained on this text.
PROBLEMS = [
    {"task_id": "T/0", "prompt": "def add(a, b):\n", "canonical_solution": "    return a + b\n",
     "test": "def check(c):\n    assert c(1, 2) == 3\n", "entry_point": "add"},
    {"task_id": "T/1", "prompt": "def sub(a, b):\n", "canonical_solution": "    return a - b\n",
     "test": "def check(c):\n    assert c(3, 2) == 1\n", "entry_point": "sub"},
    {"task_id": "T/2", "prompt": "def one():\n", "canonical_solution": "    return 1\n",
     "test": "def check(c):\n    assert c() == 1\n", "entry_point": "one"},
]  # fmt: skip
MBPP_TASKS = [
    {"task_id": 11, "text": "add two", "code": "def add(a, b):\n    return a + b\n",
     "test_list": ["assert add(1, 2) == 3"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 12, "text": "sub two", "code": "def sub(a, b):\n    return a - b\n",
     "test_list": ["assert sub(3, 2) == 1"], "test_setup_code": "", "challenge_test_list": []},
]  # fmt: skip


@pytest.fixture(scope="module")
def code_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    from lmlab.train.loop import train

    needs_sandbox()
    base = tmp_path_factory.mktemp("codeeval")
    he = base / "he.jsonl"
    he.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    mb = base / "mbpp.jsonl"
    mb.write_text("".join(json.dumps(t) + "\n" for t in MBPP_TASKS))
    docs = [p["prompt"] + p["canonical_solution"] + "\n" + p["test"] for p in PROBLEMS] * 6
    docs += [mbpp_prompt(t) + t["code"] for t in MBPP_TASKS] * 6
    data = write_dataset(base / "ds", docs, val_docs=4)
    train(tiny_config(data, base / "run", train__max_steps=6))
    return base / "run", he, mb


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_needs_the_opt_in_flag(code_run, capsys):
    run, he, _ = code_run
    assert main(["eval", str(run), "--code", "humaneval", "--problems", str(he)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("lmlab: error: ")
        and "--allow-code-execution" in err
        and len(err.splitlines()) == 1
    )
    assert not (run / "eval").exists()


def test_pass_at_k_from_a_trained_run(code_run, capsys):
    run, he, _ = code_run
    args = ["eval", str(run), "--code", "humaneval", "--problems", str(he), "--samples", "3", "--k", "1,2",
            "--allow-code-execution", "--max-new-tokens", "24", "--temperature", "0.9", "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"] == 3 and out["samples_per_task"] == 3 and {"pass@1", "pass@2"} <= set(out)
    records = _lines(run / "eval" / "humaneval.jsonl")
    assert len(records) == 9 and [r["sample"] for r in records] == [0, 1, 2] * 3
    # Each stored verdict is what the sandbox says of that completion, and pass@k follows.
    by_id = {p["task_id"]: p for p in PROBLEMS}
    sb = SandboxConfig(allow_code_execution=True)
    for r in records:
        again = run_in_sandbox(humaneval_program(by_id[r["task_id"]], r["completion"]), sb)
        assert (again.passed, again.reason) == (r["passed"], r["reason"])
    for k in (1, 2):
        counts = [(3, sum(r["passed"] for r in records if r["task_id"] == t)) for t in by_id]
        assert out[f"pass@{k}"] == pytest.approx(sum(pass_at_k(n, c, k) for n, c in counts) / 3)
    summary = json.loads((run / "eval" / "humaneval.json").read_text())
    assert summary["per_task"]["T/0"]["n"] == 3 and summary["settings"]["temperature"] == 0.9
    # The plain text form names every k and the task count; rerunning replaces lmlab's own files.
    assert main(args[:-1] + ["--tasks", "1"]) == 0
    text = capsys.readouterr().out
    assert "pass@1 " in text and "pass@2 " in text and "over 1 tasks" in text
    assert len(_lines(run / "eval" / "humaneval.jsonl")) == 3


def _fake_generate(texts_by_prompt: dict[str, list[str]]):
    def generate(model, tokenizer, prompt, *, num_samples=1, **kw):
        texts = texts_by_prompt[prompt]
        assert len(texts) == num_samples
        return [Sample(text=t, tokens=[], prompt_tokens=[], finish_reason="eot") for t in texts]

    return generate


def test_scores_what_the_completions_do(code_run, capsys, monkeypatch):
    # Stand-in sampler: a right answer and an early exit per task; only the first may pass.
    run, he, mb = code_run
    fake = {
        p["prompt"]: [p["canonical_solution"], "    import sys\n    sys.exit(0)\n"]
        for p in PROBLEMS
    }
    monkeypatch.setattr(lmlab.eval.passk, "generate", _fake_generate(fake))
    assert main(["eval", str(run), "--code", "humaneval", "--problems", str(he), "--samples", "2",
                 "--k", "1,2", "--allow-code-execution", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["pass@1"] == pytest.approx(0.5) and out["pass@2"] == 1.0
    reasons = [r["reason"] for r in _lines(run / "eval" / "humaneval.jsonl")]
    assert reasons == ["passed", "exited before the end of the program (exit status 0)"] * 3

    fake = {
        mbpp_prompt(t): [t["code"] + "\nassert False\n", "import os\nos._exit(0)\n"]
        for t in MBPP_TASKS
    }
    monkeypatch.setattr(lmlab.eval.passk, "generate", _fake_generate(fake))
    assert main(["eval", str(run), "--code", "mbpp", "--problems", str(mb), "--samples", "2", "--tasks", "1",
                 "--allow-code-execution", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"] == 1 and out["pass@1"] == 0.5  # the cut drops the model's own assert
    records = _lines(run / "eval" / "mbpp.jsonl")
    assert records[0]["completion"] == mbpp_prompt(MBPP_TASKS[0]) + MBPP_TASKS[0]["code"] + "\n"
    assert not records[1]["passed"]


def test_never_overwrites_a_users_file(code_run, capsys, monkeypatch):
    run, he, _ = code_run
    fake = {p["prompt"]: ["    return 0\n"] for p in PROBLEMS}
    monkeypatch.setattr(lmlab.eval.passk, "generate", _fake_generate(fake))
    args = [
        "eval",
        str(run),
        "--code",
        "humaneval",
        "--problems",
        str(he),
        "--allow-code-execution",
    ]
    assert main(args) == 0
    capsys.readouterr()
    mine = run / "eval" / "humaneval.jsonl"
    mine.write_text("my notes\n")  # the user edits (or replaces) lmlab's file
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "humaneval.jsonl" in err and "not lmlab's" in err
    assert mine.read_text() == "my notes\n"


def test_flag_checks_and_cutting():
    needs_sandbox()
    assert parse_ks("10,1", 10) == [1, 10]
    with pytest.raises(LmlabError, match="--samples >= 10"):
        parse_ks("1,10", 5)
    with pytest.raises(LmlabError, match="--k"):
        parse_ks("one", 5)
    code = "def f(x):\n    return x\n\n\ndef g():\n    pass\n"
    assert (
        cut_mbpp_completion("import os\n" + code + "assert f(1) == 1\nprint(f(2))\n")
        == "import os\n" + code
    )
    assert cut_mbpp_completion(code) == code
    prog = mbpp_program(MBPP_TASKS[0], mbpp_prompt(MBPP_TASKS[0]) + MBPP_TASKS[0]["code"])
    assert run_in_sandbox(prog, SandboxConfig(allow_code_execution=True)).passed
