"""Skip sandbox tests, with the sandbox's own reason, on a machine where it refuses to run.

The sandbox fails closed: where a layer it needs is missing (user namespaces disabled for
normal users, no Landlock, an architecture without a seccomp table) every run raises
SandboxUnavailable. Tests of what the sandbox contains cannot run there; they skip and say why.
"""

from __future__ import annotations

import functools
import warnings

import pytest

from lmlab.eval.sandbox import SandboxConfig, SandboxUnavailable, run_in_sandbox


@functools.cache
def sandbox_unavailable() -> str:
    """Why the default sandbox cannot run here, or "" when it can."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            run_in_sandbox("pass", SandboxConfig(allow_code_execution=True))
        except SandboxUnavailable as e:
            return str(e)
    return ""


def needs_sandbox() -> None:
    why = sandbox_unavailable()
    if why:
        pytest.skip(why)
