"""Training-step costs that no timing shows reliably on a shared CPU, checked structurally:
the attention's backward graph and the host allocator's page faults (bench/RESULTS.md has
the timings)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.model import build_model
from lmlab.train import loop
from lmlab_train_fixtures import make_text, tiny_config, write_dataset


def _backward_nodes(loss: torch.Tensor) -> list[str]:
    seen, todo, names = set(), [loss.grad_fn], []
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("n_kv_head", [0, 1])
def test_attention_backward_has_no_slice_copies(position, n_kv_head):
    # a slice's backward zero-fills a gradient of the whole qkv tensor and copies into it;
    # split's backward is one cat (exactly the same values)
    cfg = ModelConfig(
        n_layer=2, n_head=2, n_kv_head=n_kv_head, d_model=16, context_length=8,
        vocab_size=11, position=position,
    )  # fmt: skip
    model = build_model(cfg)
    x = torch.randint(0, 11, (2, 8))
    names = _backward_nodes(model(x).square().sum())
    assert "SplitWithSizesBackward0" in names
    assert "SliceBackward0" not in names


def _page_faults(retain: bool) -> int:
    """Minor page faults of a child that 20 times allocates (and touches) 1 MiB then 32 x
    256 KiB, and frees them: a training step's pattern in miniature.

    The child first pins glibc's thresholds at 128 KiB: its defaults adapt to the process's
    history (a freed mapped block raises them), so whether they fault varies from run to run;
    pinned, every block is mapped afresh each round unless ``retain_freed_memory`` raises them."""
    code = f"""
import ctypes, ctypes.util, resource, torch
from lmlab.train.host_memory import retain_freed_memory
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
assert libc.mallopt(-3, 128 << 10) == 1 and libc.mallopt(-1, 128 << 10) == 1  # mmap, trim
if {retain}:
    assert retain_freed_memory()
def churn():
    big = torch.ones(1 << 18)
    small = [torch.ones(1 << 16) for _ in range(32)]
    del big, small
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


PAGES_PER_ROUND = (1 << 20) // 4096 + 32 * (1 << 18) // 4096  # 2304 pages of 4 KiB


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc mallopt"
)
def test_retained_memory_is_reused_without_page_faults():
    # at 128 KiB thresholds every block is mapped afresh, so every round faults its pages in
    # again; retained, later rounds reuse the first round's pages
    default, retained = _page_faults(False), _page_faults(True)
    assert default > 20 * PAGES_PER_ROUND // 2
    assert retained < 20 * PAGES_PER_ROUND // 20


def test_training_on_cpu_retains_freed_memory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "retain_freed_memory", lambda: calls.append(1) or True)
    data = write_dataset(tmp_path / "ds", make_text(20, seed=0))
    cfg = tiny_config(
        data, tmp_path / "run", train__max_steps=1, train__eval_every=0,
        train__checkpoint_every=0, eval__samples=0,
    )  # fmt: skip
    loop.train(cfg)
    assert calls == [1]
