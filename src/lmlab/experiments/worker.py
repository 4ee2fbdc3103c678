"""One sweep point in its own process: ``python -m lmlab.experiments.worker CONFIG [--resume]``.

The sweep starts one of these per device (with ``CUDA_VISIBLE_DEVICES`` set) when it runs
points in parallel. A failure is written to ``error.txt`` in the run folder and the exit
status is 1; SIGTERM makes the training loop checkpoint and stop (exit status 130).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from lmlab.config import load_config
from lmlab.errors import LmlabError
from lmlab.io import atomic_write_text
from lmlab.train.loop import train


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in argv
    paths = [a for a in argv if a != "--resume"]
    if len(paths) != 1:
        print("usage: python -m lmlab.experiments.worker CONFIG.toml [--resume]", file=sys.stderr)
        return 2

    cfg = load_config(paths[0])
    run_dir = Path(cfg.train.out)
    try:
        train(cfg, resume=resume, force=not resume)  # the sweep owns its point runs
    except KeyboardInterrupt:
        return 130
    except LmlabError as e:
        atomic_write_text(run_dir / "error.txt", f"{type(e).__name__}: {e}\n")
        print(f"lmlab: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - recorded for the sweep's table
        atomic_write_text(run_dir / "error.txt", "".join(traceback.format_exception(e)))
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
