"""Accounting: parameter and FLOP counts by hand and against the built model, memory, CLI."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmlab.accounting import (
    activation_bytes_per_token,
    count_params,
    forward_flops,
    known_peak_flops,
    max_batch_size,
    mfu,
    training_memory,
    training_time_seconds,
)
from lmlab.cli import main
from lmlab.config import ModelConfig
from lmlab.model import build_model
from lmlab.model.presets import PRESETS


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=64, d_model=32, n_layer=2, n_head=4, context_length=16)
    base.update(kw)
    return ModelConfig(**base)


GPT2ISH = dict(norm="layernorm", position="learned", mlp="gelu", bias=True, tie_embeddings=True)
LLAMAISH = dict(
    norm="rmsnorm", position="rope", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2
)


def test_params_by_hand_gpt2ish():
    p = count_params(tiny(**GPT2ISH))
    # tok 64*32; pos 16*32; per layer: qkv 32*96+96, proj 32*32+32, fc 32*128+128,
    # proj 128*32+32, two layernorms 2*(32+32); final layernorm 64; head tied
    assert p["token_embedding"] == 2048
    assert p["position_embedding"] == 512
    assert p["attention"] == 2 * (3168 + 1056)
    assert p["mlp"] == 2 * (4224 + 4128)
    assert p["norms"] == 2 * 128 + 64
    assert p["head"] == 0 and p["tied"] is True
    assert p["total"] == 28032
    assert p["non_embedding"] == 28032 - 2048 - 512


def test_params_by_hand_llamaish():
    p = count_params(tiny(**LLAMAISH))
    # head_dim 8, qkv rows (4 + 2*2)*8 = 64; swiglu d_ff = 64*ceil(32*8/3/64) = 128
    assert p["attention"] == 2 * (32 * 64 + 32 * 32)
    assert p["mlp"] == 2 * (32 * 256 + 128 * 32)
    assert p["norms"] == 2 * 2 * 32 + 32
    assert p["head"] == 2048 and p["position_embedding"] == 0
    assert p["total"] == 2048 + 6144 + 24576 + 160 + 2048


GRID = {
    "norm": ["rmsnorm", "layernorm", "none"],
    "norm_position": ["pre", "post"],
    "position": ["rope", "learned", "none"],
    "mlp": ["swiglu", "gelu", "relu"],
    "bias": [False, True],
    "tie_embeddings": [False, True],
}


def _grid():
    keys = list(GRID)
    for values in itertools.product(*GRID.values()):
        yield dict(zip(keys, values))


def test_params_match_built_model_over_grid():
    for arch in ("transformer", "bigram", "bow", "one_head", "no_residual"):
        for i, switches in enumerate(_grid()):
            if arch != "transformer" and i % 5:  # baselines: a fifth of the grid is plenty
                continue
            for extra in ({}, {"n_kv_head": 2, "d_ff": 40}):
                cfg = tiny(arch=arch, **switches, **extra)
                model = build_model(cfg)
                actual = sum(p.numel() for p in model.parameters())
                assert count_params(cfg)["total"] == actual, (arch, switches, extra)
    for extra in ({"qk_norm": True}, {"qk_norm": True, "n_kv_head": 2, "bias": True}):
        cfg = tiny(**extra)
        assert count_params(cfg)["total"] == sum(p.numel() for p in build_model(cfg).parameters())
    for preset in PRESETS.values():
        cfg = tiny(**preset)
        assert count_params(cfg)["total"] == build_model(cfg).num_params()
        assert count_params(cfg)["non_embedding"] == build_model(cfg).num_params(
            exclude_embeddings=True
        )


def test_flops_by_hand():
    f = forward_flops(tiny(**GPT2ISH), seq_len=16)
    # per layer: qkv 2*32*96, scores 2*16*32, values 2*16*32, proj 2*32*32, mlp 2*(32*128+128*32)
    assert f["attention_qkv"] == 2 * 6144
    assert f["attention_scores"] == 2 * 1024
    assert f["attention_values"] == 2 * 1024
    assert f["attention_proj"] == 2 * 2048
    assert f["mlp"] == 2 * 16384
    assert f["head"] == 2 * 32 * 64
    assert f["total"] == 57344
    # attention grows with seq_len (full T x T, no causal halving)
    assert forward_flops(tiny(**GPT2ISH), seq_len=32)["attention_scores"] == 2 * 2048


@pytest.mark.parametrize("arch", ["transformer", "one_head", "bow", "bigram", "no_residual"])
@pytest.mark.parametrize("switches", [GPT2ISH, LLAMAISH])
def test_flops_match_torch_flop_counter(arch, switches):
    # torch's counter sees every matmul; the math SDPA backend makes the T x T products visible.
    cfg = tiny(arch=arch, **switches)
    model = build_model(cfg)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 64, (2, 16)))
    assert counter.get_total_flops() == 2 * 16 * forward_flops(cfg, 16)["total"]


def test_mfu_and_time():
    cfg = tiny(**GPT2ISH)
    per_token = 3 * 57344
    assert mfu(1000.0, cfg, 16, per_token * 1000.0 * 4) == pytest.approx(0.25)
    assert training_time_seconds(cfg, 16, 1e6, 0.5, 1e9) == pytest.approx(1e6 * per_token / 0.5e9)
    assert known_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert known_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert known_peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert known_peak_flops("NVIDIA L4") == 121e12
    assert known_peak_flops("NVIDIA H200") == 989e12
    assert known_peak_flops("NVIDIA GH200 480GB") == 989e12
    assert known_peak_flops("some cpu") is None


def test_memory_formula_and_max_batch():
    cfg = tiny(**GPT2ISH)
    n = 28032
    mem = training_memory(cfg, batch_size=3, seq_len=16, compute_dtype="bfloat16")
    assert mem["weights"] == 4 * n and mem["gradients"] == 4 * n and mem["optimizer"] == 8 * n
    # per layer (a=2, r=4, d=32, f=128): matmul inputs 2*2*32, norm inputs 2*4*32,
    # qkv 2*96, sdpa out + copy 2*2*32 + lse 4*4, mlp 2*2*128; head: 4*32 + 2*32 + 2*64 + 4*64 + 4*64
    per_layer = 128 + 256 + 192 + 128 + 16 + 512
    head = 128 + 64 + 128 + 256 + 256
    assert activation_bytes_per_token(cfg, "bfloat16") == 2 * per_layer + head
    assert mem["activations"] == 3 * 16 * (2 * per_layer + head)
    assert mem["total"] == 16 * n + mem["activations"]
    budget = training_memory(cfg, 7, 16)["total"]
    assert max_batch_size(cfg, 16, budget) == 7
    assert max_batch_size(cfg, 16, budget - 1) == 6
    assert max_batch_size(cfg, 16, 100.0) == 0


@pytest.mark.parametrize("switches", [GPT2ISH, LLAMAISH, {"norm": "none"}])
def test_activation_estimate_close_to_saved_tensors(switches):
    # Measure what autograd really keeps (fp32 on the CPU) and compare with the estimate.
    cfg = ModelConfig(
        vocab_size=512, d_model=128, n_layer=3, n_head=4, context_length=64, **switches
    )
    model = build_model(cfg)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        saved[st.data_ptr()] = max(saved.get(st.data_ptr(), 0), st.nbytes())
        return t

    idx = torch.randint(0, 512, (4, 65))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(idx[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    measured = sum(v for k, v in saved.items() if k not in params)
    estimate = 4 * 64 * activation_bytes_per_token(cfg, "float32")
    assert 0.75 < estimate / measured < 1.25, (estimate, measured)


def _write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


MODEL_TOML = """[model]
vocab_size = 64
n_layer = 2
n_head = 4
d_model = 32
context_length = 16
norm = "layernorm"
position = "learned"
mlp = "gelu"
bias = true
[train]
batch_size = 3
"""


def test_account_cli_json(tmp_path, capsys):
    path = _write(tmp_path, MODEL_TOML)
    assert (
        main(
            ["account", path, "--json", "--memory-gb", "1", "--tokens", "1e6", "--peak-tflops", "1"]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["params_total"] == 28032
    assert res["forward_flops_total"] == 57344
    assert res["params"]["mlp"] == 2 * (4224 + 4128)
    assert res["forward_flops"]["mlp"]["share"] == pytest.approx(32768 / 57344)
    assert res["batch_size"] == 3 and res["seq_len"] == 16
    assert res["max_batch_size"] > 1000
    assert res["time"]["seconds"] == pytest.approx(1e6 * 3 * 57344 / (0.4 * 1e12))


def test_account_cli_table_and_errors(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, MODEL_TOML)
    assert main(["account", path, "--seq-len", "8", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "28,032" in out and "attention_scores" in out and "activations" in out
    monkeypatch.setattr("lmlab.accounting.detect_peak_flops", lambda: ("cpu", None))
    assert main(["account", path, "--tokens", "1e9"]) == 2
    assert "--peak-tflops" in capsys.readouterr().err


def test_account_vocab_from_dataset_or_override(tmp_path, capsys):
    no_vocab = MODEL_TOML.replace("vocab_size = 64\n", "")
    path = _write(tmp_path, no_vocab)
    assert main(["account", path, "--json"]) == 2
    assert "--model.vocab_size" in capsys.readouterr().err
    assert main(["account", path, "--json", "--model.vocab_size=64"]) == 0
    assert json.loads(capsys.readouterr().out)["params_total"] == 28032
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "meta.json").write_text(json.dumps({"format": "lmlab-tokens-v1", "vocab_size": 64}))
    path = _write(tmp_path, no_vocab + f'[data]\npath = "{ds}"\n')
    assert main(["account", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 64
