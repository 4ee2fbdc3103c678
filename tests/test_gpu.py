"""GPU-only paths (skipped without CUDA; bench/gpu/check.sh runs them with ``pytest -m gpu``).

CUDA autocast and the peak-FLOPs table reach the step line (MFU, max memory); AdamW takes the
fused CUDA kernel; the flash SDPA kernel accepts the model's attention; the memory probe finds
a micro-batch under a real CUDA out-of-memory, in line with accounting.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from lmlab_train_fixtures import make_text, tiny_config, write_dataset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("gpu") / "ds", make_text(60))


def test_step_line_has_mfu_and_max_memory_on_a_known_gpu(dataset, tmp_path):
    from lmlab.accounting import known_peak_flops
    from lmlab.train.loop import train

    train(
        tiny_config(
            dataset,
            tmp_path / "r",
            train__device="cuda",
            train__dtype="bfloat16",
            train__max_steps=4,
        )
    )
    recs = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "train_loss" in r]
    assert all(r["max_mem_gb"] > 0 for r in steps)
    if known_peak_flops(torch.cuda.get_device_name(0)):
        assert all(0 < r["mfu"] < 1 for r in steps)


def test_adamw_is_fused_on_cuda():
    from lmlab.config import OptimConfig
    from lmlab.train.optim import build_optimizer

    model = torch.nn.Linear(8, 8).cuda()
    opt = build_optimizer(model, OptimConfig(), 1e-3, torch.device("cuda"))
    assert opt.defaults.get("fused") is True


def test_flash_sdpa_runs_the_models_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lmlab.config import ModelConfig
    from lmlab.model import build_model

    model = build_model(
        ModelConfig(vocab_size=256, n_layer=2, n_head=4, d_model=256, context_length=128)
    ).cuda()
    x = torch.randint(0, 256, (2, 128), device="cuda")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    assert torch.isfinite(loss)


def test_probe_under_a_real_cuda_limit_agrees_with_accounting(dataset, tmp_path, capsys):
    from lmlab import accounting
    from lmlab.train.loop import train

    cfg = tiny_config(
        dataset,
        tmp_path / "r",
        model__d_model=256,
        model__n_layer=4,
        model__n_head=4,
        model__context_length=256,
        train__device="cuda",
        train__dtype="bfloat16",
        train__batch_size=1024,
        train__micro_batch_size=0,
        train__max_steps=1,
        train__eval_every=0,
        eval__samples=0,
    )
    m = dataclasses.replace(cfg.model, vocab_size=64)
    total = torch.cuda.get_device_properties(0).total_memory
    limit = 2 * 2**30  # 2 GiB of this GPU, through the caching allocator's own limit
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(limit / total)
    try:
        train(cfg)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    found = int(
        re.search(r"memory probe: up to (\d+) sequences fit", capsys.readouterr().out).group(1)
    )
    predicted = accounting.max_batch_size(m, 256, limit, "bfloat16")
    assert abs(found - predicted) / predicted <= 0.2, (found, predicted)
