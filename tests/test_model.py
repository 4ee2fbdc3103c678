"""The transformer: every switch builds and learns; shapes, causality, GQA, tying, init, KV cache."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig
from lmlab.errors import ConfigError, LmlabError
from lmlab.model import build_model
from lmlab.model.presets import PRESETS
from lmlab.model.transformer import resolve_d_ff

V = 64
# Tests that compare two computations meant to be equal (cached vs full, GQA vs repeated heads,
# compiled vs eager) run in float64 (the f64 fixture): in float32 their difference is summation
# order, which differs across CPUs. Float64 roundoff is 1.1e-16 per operation; through a few
# hundred operations on O(1) values it stays below 1e-13, so F64_ATOL has 1000x margin and is
# still 1e4 below the float32 noise a real mismatch would dwarf.
F64_ATOL = 1e-10


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=V, d_model=32, n_layer=2, n_head=4, context_length=16)
    base.update(kw)
    return ModelConfig(**base)


def loss_of(model, idx):
    logits = model(idx[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())


def train_steps(model, steps: int = 12, seed: int = 0) -> tuple[float, float]:
    torch.manual_seed(seed)
    idx = torch.randint(0, V, (4, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = last = None
    for _ in range(steps):
        loss = loss_of(model, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    return first, last


SWITCHES = [
    {"norm": "rmsnorm"},
    {"norm": "layernorm"},
    {"norm": "layernorm", "bias": True},
    {"norm": "none"},
    {"norm_position": "post"},
    {"norm_position": "post", "norm": "layernorm", "bias": True},
    {"position": "learned"},
    {"position": "none"},
    {"mlp": "gelu"},
    {"mlp": "gelu_erf"},
    {"mlp": "silu"},
    {"mlp": "relu"},
    {"mlp": "relu2"},
    {"mlp": "swiglu", "d_ff": 48},
    {"qk_norm": True},
    {"qk_norm": True, "position": "none", "n_kv_head": 2},
    {"zero_init_out": True},
    {"bias": True},
    {"tie_embeddings": False},
    {"n_kv_head": 2},
    {"n_kv_head": 1},
    {"dropout": 0.1},
    PRESETS["gpt2"],
    PRESETS["llama"],
]


@pytest.mark.parametrize(
    "switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items())
)
def test_every_switch_builds_runs_and_learns(switch):
    torch.manual_seed(0)
    model = build_model(tiny(**switch))
    idx = torch.randint(0, V, (2, 16))
    logits = model(idx)
    assert logits.shape == (2, 16, V)
    assert torch.isfinite(logits).all()
    first, last = train_steps(model)
    assert last < first - 0.5, (first, last)


def test_the_two_gelu_forms():
    """``gelu`` is GPT-2's tanh approximation, ``gelu_erf`` the exact 0.5 x (1 + erf(x / sqrt 2)):
    checked in float64 against the formulas, and the two differ (by up to ~5e-4 near |x| = 2)."""
    import math

    x = torch.linspace(-4, 4, 801, dtype=torch.float64)
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    tanh = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    outs = {}
    for kind in ("gelu", "gelu_erf"):
        mlp = build_model(tiny(mlp=kind)).double().blocks[0].mlp
        with torch.no_grad():  # fc = identity on the first d_model rows, proj reads them back
            mlp.fc.weight.zero_(), mlp.proj.weight.zero_()
            mlp.fc.weight[:1, :1] = 1.0
            mlp.proj.weight[:1, :1] = 1.0
            h = torch.zeros(len(x), 1, mlp.fc.in_features, dtype=torch.float64)
            h[:, 0, 0] = x
            outs[kind] = mlp(h)[:, 0, 0]
    # float64 kernels against float64 formulas: 1e-12 is thousands of float64 ulps at |x| <= 4,
    # and far below the forms' own gap
    assert torch.allclose(outs["gelu"], tanh, rtol=0, atol=1e-12)
    assert torch.allclose(outs["gelu_erf"], exact, rtol=0, atol=1e-12)
    assert (outs["gelu"] - outs["gelu_erf"]).abs().max() > 1e-4


def test_relu2_is_relu_squared(f64):
    mlp = build_model(tiny(mlp="relu2")).blocks[0].mlp
    h = torch.randn(3, 5, mlp.fc.in_features)
    with torch.no_grad():  # the same float64 ops in the same order: equal to the last bit
        assert torch.equal(mlp(h), mlp.proj(F.relu(mlp.fc(h)) ** 2))


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(f64):
    """Each head's q and k are RMS-normalised before RoPE, so scaling their projection rows
    leaves the output unchanged; without qk_norm it changes it."""
    idx = torch.randint(0, V, (2, 16))
    for qk_norm in (True, False):
        torch.manual_seed(0)
        # eps 0: the norm is exactly scale-free, so only float64 rounding remains
        model = build_model(tiny(qk_norm=qk_norm, n_kv_head=2, norm_eps=0.0))
        attn = model.blocks[0].attn
        assert hasattr(attn, "q_norm") == hasattr(attn, "k_norm") == qk_norm
        n_qk = (attn.n_head + attn.n_kv_head) * attn.head_dim
        with torch.no_grad():
            before = model(idx)
            attn.qkv.weight[:n_qk] *= 7.0
            after = model(idx)
        changed = (after - before).abs().max().item() / before.abs().max().item()
        # float64 through two blocks: ~1e-15 relative; unnormed, scores grow 49x
        assert (changed < 1e-12) if qk_norm else (changed > 1e-2), (qk_norm, changed)


def test_zero_init_out_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    model = build_model(tiny(zero_init_out=True))
    for block in model.blocks:
        assert torch.all(block.attn.proj.weight == 0) and torch.all(block.mlp.proj.weight == 0)
        assert block.attn.qkv.weight.std() > 0  # only the output projections start at zero
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():  # every residual branch adds exact zeros: embedding -> norm -> head
        assert torch.equal(model(idx), model.head(model.norm_f(model.tok_emb(idx))))


def test_d_ff_defaults():
    assert resolve_d_ff(tiny(mlp="swiglu", d_model=96)) == 256  # 8/3*96 = 256
    assert resolve_d_ff(tiny(mlp="swiglu", d_model=32)) == 128  # 85.3 -> 128
    assert resolve_d_ff(tiny(mlp="gelu", d_model=32)) == 128
    assert resolve_d_ff(tiny(mlp="gelu", d_ff=50)) == 50
    m = build_model(tiny(mlp="swiglu", d_model=96, n_head=4))
    assert m.blocks[0].mlp.fc.weight.shape == (2 * 256, 96)
    assert m.blocks[0].mlp.proj.weight.shape == (96, 256)


@pytest.mark.parametrize("position", ["rope", "learned", "none"])
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_causal(position, norm_position, f64):
    torch.manual_seed(0)
    model = build_model(tiny(position=position, norm_position=norm_position)).eval()
    idx = torch.randint(0, V, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % V
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :8], b[:, :8], rtol=0, atol=F64_ATOL)
    assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-4)


def test_positions_matter_except_none(f64):
    # One layer without positions: the last token's output depends on the earlier tokens as
    # a set, so permuting them changes nothing. With rope or learned positions it does.
    torch.manual_seed(0)
    a = torch.tensor([[5, 7, 9, 3]])
    b = torch.tensor([[9, 5, 7, 3]])
    for position in ("rope", "learned"):
        model = build_model(tiny(position=position, n_layer=1)).eval()
        assert not torch.allclose(model(a)[0, -1], model(b)[0, -1], atol=1e-5), position
    model = build_model(tiny(position="none", n_layer=1)).eval()
    assert torch.allclose(model(a)[0, -1], model(b)[0, -1], rtol=0, atol=F64_ATOL)


def test_gqa_shapes_and_matches_repeated_heads(f64):
    torch.manual_seed(0)
    model = build_model(tiny(n_head=4, n_kv_head=2)).eval()
    attn = model.blocks[0].attn
    hd = 32 // 4
    assert attn.qkv.weight.shape == ((4 + 2 * 2) * hd, 32)
    # Same result as full multi-head attention whose k/v heads are each repeated twice.
    full = build_model(tiny(n_head=4, n_kv_head=4)).eval()
    with torch.no_grad():
        for b_g, b_f in zip(model.blocks, full.blocks):
            q, k, v = b_g.attn.qkv.weight.split((4 * hd, 2 * hd, 2 * hd))
            k = k.view(2, hd, 32).repeat_interleave(2, dim=0).reshape(4 * hd, 32)
            v = v.view(2, hd, 32).repeat_interleave(2, dim=0).reshape(4 * hd, 32)
            b_f.attn.qkv.weight.copy_(torch.cat([q, k, v]))
        for name, p in full.named_parameters():
            if "attn.qkv" not in name:
                p.copy_(dict(model.named_parameters())[name])
    idx = torch.randint(0, V, (2, 10))
    assert torch.allclose(model(idx), full(idx), rtol=0, atol=F64_ATOL)


def test_bad_configs_raise():
    with pytest.raises(ConfigError, match="n_kv_head"):
        build_model(tiny(n_head=4, n_kv_head=3))
    with pytest.raises(ConfigError, match="vocab_size"):
        build_model(tiny(vocab_size=0))
    with pytest.raises(ConfigError, match="d_model"):
        build_model(tiny(d_model=30, n_head=4))
    with pytest.raises(ConfigError, match="rope"):
        build_model(tiny(d_model=36, n_head=4))


def test_weight_tying_shares_storage():
    model = build_model(tiny(tie_embeddings=True))
    assert model.head.weight is model.tok_emb.weight
    assert model.head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    untied = build_model(tiny(tie_embeddings=False))
    assert untied.head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    assert untied.num_params() - model.num_params() == V * 32
    # tied: the one matrix gets gradient from both uses
    loss_of(model, torch.randint(0, V, (2, 9))).backward()
    assert model.tok_emb.weight.grad is not None


def test_num_params_and_config():
    cfg = tiny(position="learned", tie_embeddings=False)
    model = build_model(cfg)
    assert model.config is cfg
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params() == total
    assert model.num_params(exclude_embeddings=True) == total - V * 32 - 16 * 32


def test_init_scale():
    torch.manual_seed(0)
    cfg = tiny(d_model=128, n_layer=8, n_head=4, bias=True, norm="layernorm", vocab_size=512)
    model = build_model(cfg)
    std = cfg.init_std
    assert abs(model.tok_emb.weight.std().item() - std) < 0.1 * std
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - std) < 0.1 * std
    scaled = std / math.sqrt(2 * cfg.n_layer)
    for block in model.blocks:
        assert abs(block.attn.proj.weight.std().item() - scaled) < 0.1 * scaled
        assert abs(block.mlp.proj.weight.std().item() - scaled) < 0.1 * scaled
        assert torch.all(block.attn.qkv.bias == 0) and torch.all(block.mlp.fc.bias == 0)
        assert torch.all(block.norm1.weight == 1) and torch.all(block.norm1.bias == 0)
    assert abs(model.tok_emb.weight.mean().item()) < 0.1 * std


def test_rope_buffers_not_saved():
    model = build_model(tiny(position="rope"))
    assert not any("rotary" in k for k in model.state_dict())
    assert "pos_emb.weight" in build_model(tiny(position="learned")).state_dict()


def test_parameter_names_are_plain():
    model = build_model(tiny(**PRESETS["gpt2"]))
    names = set(dict(model.named_parameters()))
    assert {
        "tok_emb.weight",
        "pos_emb.weight",
        "blocks.0.norm1.weight",
        "blocks.0.norm1.bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight",
        "blocks.0.norm2.weight",
        "blocks.0.mlp.fc.weight",
        "blocks.0.mlp.proj.bias",
        "norm_f.weight",
        "norm_f.bias",
    } <= names
    assert "head.weight" in model.state_dict()


# --- KV cache ---------------------------------------------------------------------------------


def greedy(model, prompt, steps: int, cached: bool):
    idx = prompt
    if cached:
        cache = model.new_kv_cache(prompt.shape[0], max_len=prompt.shape[1] + steps)
        logits = model(prompt, kv_cache=cache)
    out = []
    for _ in range(steps):
        if not cached:
            logits = model(idx)
        nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        out.append(nxt)
        idx = torch.cat([idx, nxt], dim=1)
        if cached:
            logits = model(nxt, kv_cache=cache)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("position", ["rope", "learned", "none"])
@pytest.mark.parametrize(
    "extra", [{}, {"n_kv_head": 2, "norm_position": "post"}, {"qk_norm": True}, PRESETS["gpt2"]]
)
def test_kv_cache_greedy_equals_uncached(position, extra, f64):
    torch.manual_seed(0)
    model = build_model(tiny(**{**extra, "position": position}, context_length=24)).eval()
    prompt = torch.randint(0, V, (2, 5))
    with torch.no_grad():
        assert torch.equal(
            greedy(model, prompt, 12, cached=True), greedy(model, prompt, 12, cached=False)
        )
        # logits themselves agree, including a multi-token chunk after a prefill
        idx = torch.randint(0, V, (2, 14))
        cache = model.new_kv_cache(2)
        parts = [
            model(idx[:, :4], kv_cache=cache),
            model(idx[:, 4:5], kv_cache=cache),
            model(idx[:, 5:11], kv_cache=cache),
            model(idx[:, 11:], kv_cache=cache),
        ]
        assert cache.pos == 14
        assert torch.allclose(torch.cat(parts, dim=1), model(idx), rtol=0, atol=F64_ATOL)


def test_kv_cache_limits_and_reset(f64):
    model = build_model(tiny(position="learned", context_length=8)).eval()
    with pytest.raises(LmlabError, match="context_length"):
        model.new_kv_cache(1, max_len=9)
    with pytest.raises(LmlabError, match="context_length"):
        model(torch.zeros(1, 9, dtype=torch.long))
    cache = model.new_kv_cache(1)
    idx = torch.randint(0, V, (1, 8))
    with torch.no_grad():
        model(idx, kv_cache=cache)
        with pytest.raises(LmlabError, match="KV cache full"):
            model(idx[:, :1], kv_cache=cache)
        # sliding window: reset and re-prefill the last context_length - 1 tokens
        cache.reset()
        a = model(idx[:, 1:], kv_cache=cache)
        assert torch.allclose(a, model(idx[:, 1:]), rtol=0, atol=F64_ATOL)
    with pytest.raises(LmlabError, match="sequences"):
        model(idx[:, :1].repeat(2, 1), kv_cache=model.new_kv_cache(1))


def test_rope_runs_past_context_length_uncached():
    model = build_model(tiny(position="rope", context_length=8)).eval()
    with torch.no_grad():
        out = model(torch.randint(0, V, (1, 12)))
    assert out.shape == (1, 12, V) and torch.isfinite(out).all()


@pytest.mark.parametrize("extra", [{}, {"qk_norm": True}])
def test_autocast_bfloat16_forward_backward(extra):
    model = build_model(tiny(n_kv_head=2, **extra))
    idx = torch.randint(0, V, (2, 9))
    with warnings.catch_warnings():
        # e.g. "Mismatch dtype between input and weight": a float32 gain on bf16 q/k
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_of(model, idx)
        loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_under_autocast(cache_dtype):
    torch.manual_seed(0)
    model = build_model(tiny(n_kv_head=2)).eval()
    idx = torch.randint(0, V, (2, 10))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.new_kv_cache(2, dtype=cache_dtype)
        parts = [model(idx[:, :6], kv_cache=cache)] + [
            model(idx[:, i : i + 1], kv_cache=cache) for i in range(6, 10)
        ]
        full = model(idx)
    assert torch.allclose(torch.cat(parts, 1).float(), full.float(), atol=0.05)


def test_compiles_fullgraph(f64):
    pytest.importorskip("torch._dynamo")
    torch._dynamo.reset()
    model = build_model(tiny(n_kv_head=2))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    idx = torch.randint(0, V, (2, 16))
    assert torch.allclose(compiled(idx), model(idx), rtol=0, atol=F64_ATOL)


def test_presets_are_model_fields():
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for preset in PRESETS.values():
        assert set(preset) <= fields
    m = build_model(tiny(**PRESETS["llama"]))
    assert m.pos_emb is None and m.rotary is not None and m.head.weight is not m.tok_emb.weight
    assert all(p.ndim == 2 or "norm" in n for n, p in m.named_parameters())  # no biases
