"""Resource accounting from a config alone: parameters, FLOPs, memory, MFU and time.

Everything here is analytic (no model is built), and mirrors :mod:`lmlab.model`:
``count_params(m)["total"] == sum(p.numel() for p in build_model(m).parameters())`` exactly
for every architecture and switch (the tests check a grid).

Conventions, stated once:

- FLOPs count matrix multiplies only, 2*m*n*k each (a multiply and an add). Norms,
  activations, softmax, RoPE, residual adds and the embedding lookup are left out (well
  under 1-2% for models that are not tiny). Biases are left out.
- Attention scores: per token, QK^T costs 2*T*n_head*head_dim and the weighted sum of values
  the same, with T the full sequence length: the causal mask is NOT halved, following the
  common convention (Kaplan et al., PaLM, nanoGPT's MFU), so MFU figures are comparable with
  published ones. Actual kernels skip about half of that work.
- Training FLOPs = 3 x forward (backward costs two forwards: gradients for the inputs and
  for the weights). ``6 * N`` per token is this with attention ignored.
- Memory (bytes) for AdamW training with mixed precision: fp32 weights (4/param), fp32
  gradients (4/param), AdamW moments (8/param), plus activations saved for the backward pass
  (formula in :func:`activation_bytes_per_token`). Not included: the CUDA context and
  kernels' workspace (~0.5-1 GB), allocator fragmentation (~10%), DDP buckets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.account_model import resolve_model, resolve_vocab
from lmlab.config import Config, ModelConfig
from lmlab.device import PEAK_FLOPS, detect_peak_flops, known_peak_flops
from lmlab.errors import ConfigError, LmlabError
from lmlab.io import read_json
from lmlab.model.transformer import resolve_d_ff

# --- parameters -------------------------------------------------------------------------------


def _d_ff(m: ModelConfig) -> int:
    return resolve_d_ff(m)


def _norm_params(m: ModelConfig) -> int:
    if m.norm == "rmsnorm":
        return m.d_model
    if m.norm == "layernorm":
        return m.d_model * (2 if m.bias else 1)
    return 0


def _attn_params(m: ModelConfig, n_head: int, n_kv_head: int) -> int:
    hd = m.d_model // n_head
    qkv_out = (n_head + 2 * n_kv_head) * hd
    n = m.d_model * qkv_out + n_head * hd * m.d_model
    if m.bias:
        n += qkv_out + m.d_model
    if m.qk_norm:  # one RMSNorm gain over head_dim for queries, one for keys
        n += 2 * hd
    return n


def _mlp_params(m: ModelConfig) -> int:
    d_ff = _d_ff(m)
    fc_out = 2 * d_ff if m.mlp == "swiglu" else d_ff
    n = m.d_model * fc_out + d_ff * m.d_model
    if m.bias:
        n += fc_out + m.d_model
    return n


def _heads(m: ModelConfig) -> tuple[int, int]:
    return m.n_head, m.n_kv_head or m.n_head


def _cross_params(m: ModelConfig) -> int:
    """One decoder block's cross-attention (q, kv, proj) of the encoder-decoder."""
    d = m.d_model
    return 4 * d * d + (4 * d if m.bias else 0)


def count_params(mcfg: ModelConfig, enc_dim: int = 0) -> dict[str, Any]:
    """Parameters per component and ``total``, exactly as ``build_model`` creates them.

    Keys: token_embedding, position_embedding, attention, mlp, norms, head (0 when tied:
    the shared matrix is counted once, under token_embedding), total, non_embedding (total
    minus the token and position tables), tied (bool). The encoder-decoder (``enc_dim``: the
    encoder's width) counts its trained decoder: cross-attention goes under attention, the
    encoder-to-decoder projection under ``encoder_proj``; the frozen encoder is not counted.
    """
    m = mcfg
    if m.vocab_size <= 0:
        raise ConfigError(f"model.vocab_size: must be > 0 to count parameters, got {m.vocab_size}")
    d, V = m.d_model, m.vocab_size
    tied = m.tie_embeddings
    pos = m.context_length * d if m.position == "learned" else 0
    attn = mlp = norms = 0
    if m.arch == "transformer":
        H, KV = _heads(m)
        attn = m.n_layer * _attn_params(m, H, KV)
        mlp = m.n_layer * _mlp_params(m)
        norms = 2 * m.n_layer * _norm_params(m)
        if m.norm_position == "pre" and m.norm != "none":
            norms += _norm_params(m)
    elif m.arch == "bigram":
        pos, tied = 0, False  # the bigram never ties its head (see baselines)
    elif m.arch == "bow":
        pos = 0
        mlp = _mlp_params(m)
        norms = 2 * _norm_params(m)  # norm1 and norm_f (0 for none)
    elif m.arch == "one_head":
        attn = _attn_params(m, 1, 1)
        norms = 2 * _norm_params(m)
    elif m.arch == "no_residual":
        H, KV = _heads(m)
        attn = m.n_layer * _attn_params(m, H, KV)
        mlp = m.n_layer * _mlp_params(m)
    elif m.arch == "encdec":
        if enc_dim <= 0:
            raise ConfigError(
                "model.encoder: the encoder's width is needed to count the encoder-decoder"
            )
        H, KV = _heads(m)
        attn = m.n_layer * (_attn_params(m, H, KV) + _cross_params(m))
        mlp = m.n_layer * _mlp_params(m)
        norms = 3 * m.n_layer * _norm_params(m)
        if m.norm_position == "pre" and m.norm != "none":
            norms += _norm_params(m)
    else:
        raise ConfigError(f"model.arch: unknown architecture {m.arch!r}")
    out = {
        "token_embedding": V * d,
        "position_embedding": pos,
        "attention": attn,
        "mlp": mlp,
        "norms": norms,
        "head": 0 if tied else V * d,
    }
    if m.arch == "encdec":
        out["encoder_proj"] = enc_dim * d + (d if m.bias else 0)
    total = sum(out.values())
    out["total"] = total
    out["non_embedding"] = total - V * d - pos
    out["tied"] = tied
    return out


# --- FLOPs ------------------------------------------------------------------------------------


def _attn_flops(m: ModelConfig, n_head: int, n_kv_head: int, seq_len: int) -> dict[str, float]:
    hd = m.d_model // n_head
    return {
        "attention_qkv": 2.0 * m.d_model * (n_head + 2 * n_kv_head) * hd,
        "attention_scores": 2.0 * seq_len * n_head * hd,  # q . k for every key (no causal halving)
        "attention_values": 2.0 * seq_len * n_head * hd,  # probabilities x values
        "attention_proj": 2.0 * n_head * hd * m.d_model,
    }


def _mlp_flops(m: ModelConfig) -> float:
    d_ff = _d_ff(m)
    fc_out = 2 * d_ff if m.mlp == "swiglu" else d_ff
    return 2.0 * m.d_model * fc_out + 2.0 * d_ff * m.d_model


def forward_flops(
    mcfg: ModelConfig, seq_len: int | None = None, enc_dim: int = 0, source_len: int = 0
) -> dict[str, float]:
    """Forward FLOPs per token at ``seq_len`` (default context_length), per component + total.

    Components: attention_qkv, attention_scores, attention_values, attention_proj, mlp, head
    (matmuls only, 2*m*n*k, attention over the full T x T: see the module docstring). The
    encoder-decoder adds ``cross_attention`` (q and output projections per token, scores and
    values over ``source_len`` encoder states) and ``encoder_side`` (the encoder states'
    projection and keys/values, once per sequence, spread over its ``seq_len`` tokens); the
    frozen encoder's own forward pass is not counted.
    """
    m = mcfg
    if m.vocab_size <= 0:
        raise ConfigError(f"model.vocab_size: must be > 0 to count FLOPs, got {m.vocab_size}")
    T = seq_len or m.context_length
    out = {
        k: 0.0
        for k in ("attention_qkv", "attention_scores", "attention_values", "attention_proj", "mlp")
    }
    layers, with_attn, with_mlp, heads = 0, False, False, _heads(m)
    if m.arch in ("transformer", "no_residual", "encdec"):
        layers, with_attn, with_mlp = m.n_layer, True, True
    elif m.arch == "one_head":
        layers, with_attn, heads = 1, True, (1, 1)
    elif m.arch == "bow":
        layers, with_mlp = 1, True
    elif m.arch != "bigram":
        raise ConfigError(f"model.arch: unknown architecture {m.arch!r}")
    if with_attn:
        for k, v in _attn_flops(m, *heads, T).items():
            out[k] = layers * v
    if with_mlp:
        out["mlp"] = layers * _mlp_flops(m)
    if m.arch == "encdec":
        d, S = m.d_model, source_len
        out["cross_attention"] = layers * (4.0 * d * d + 4.0 * S * d)
        out["encoder_side"] = (2.0 * enc_dim * d + layers * 4.0 * d * d) * S / T
    out["head"] = 2.0 * m.d_model * m.vocab_size
    out["total"] = sum(out.values())
    return out


def flops_per_token(mcfg: ModelConfig, seq_len: int | None = None) -> dict[str, float]:
    """Forward FLOPs per token (same as :func:`forward_flops`); training is 3x ``total``."""
    return forward_flops(mcfg, seq_len)


def training_flops_per_token(mcfg: ModelConfig, seq_len: int | None = None) -> float:
    return 3.0 * forward_flops(mcfg, seq_len)["total"]


def mfu(tokens_per_sec: float, mcfg: ModelConfig, seq_len: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over ``peak_flops`` (FLOP/s)."""
    if peak_flops <= 0:
        return 0.0
    return tokens_per_sec * training_flops_per_token(mcfg, seq_len) / peak_flops


# --- memory -----------------------------------------------------------------------------------

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def activation_bytes_per_token(mcfg: ModelConfig, compute_dtype: str = "bfloat16") -> float:
    """Bytes of activations kept for the backward pass, per token of the micro-batch.

    ``a`` = bytes of the compute dtype, ``r`` = 4 (the residual stream stays fp32 under
    autocast), d = d_model, H/KV/hd the heads, f = d_ff. Per transformer layer:

    - norm inputs 2*r*d (when there are norms) and the two matmul inputs 2*a*d;
    - attention: q, k, v a*(H + 2*KV)*hd, the SDPA output a*H*hd plus 4*H (log-sum-exp),
      and its contiguous copy fed to the projection a*H*hd; no T x T matrix (flash /
      memory-efficient SDPA; the CPU math backend also keeps a*H*T); with RoPE the rotated
      q and k a*(H + KV)*hd besides the unrotated projection output;
    - MLP: fc output and activation output, a*2f (swiglu: a*4f: gate|up, silu(gate), product;
      relu2: relu's output and its square);
    - qk_norm: the normed q and k, a*(H + KV)*hd;
    - dropout masks 1 byte * 3d when dropout > 0.

    For GPT-2 shapes (a=2, f=4d, H*hd=d) this is Korthikanti et al.'s 34*d bytes per layer.
    Head: final norm input r*d, head input a*d, logits a*V, log-softmax in fp32 4*V and the
    transient fp32 copy of the logits 4*V when a < 4.
    """
    m = mcfg
    a, r, d, V = _DTYPE_BYTES[compute_dtype], 4, m.d_model, m.vocab_size
    f = _d_ff(m)
    mlp_act = a * (4 * f if m.mlp == "swiglu" else 2 * f)
    drop = 3 * d if m.dropout > 0 else 0

    def attn_act(H: int, KV: int) -> float:
        hd = d // H
        rope = a * (H + KV) * hd if m.position == "rope" else 0
        qk_norm = a * (H + KV) * hd if m.qk_norm else 0  # the normed q and k
        return a * (H + 2 * KV) * hd + 2 * a * H * hd + 4 * H + rope + qk_norm

    H, KV = _heads(m)
    has_norm = m.norm != "none"
    if m.arch in ("transformer", "encdec"):
        per_layer = 2 * a * d + (2 * r * d if has_norm else 0) + attn_act(H, KV) + mlp_act + drop
        if m.arch == "encdec":  # cross-attention: norm input, q input, q, output, projection input
            per_layer += (r * d if has_norm else 0) + 4 * a * d
        body = m.n_layer * per_layer
    elif m.arch == "no_residual":
        body = m.n_layer * (2 * a * d + attn_act(H, KV) + mlp_act + drop)
    elif m.arch == "one_head":
        body = a * d + (r * d if has_norm else 0) + attn_act(1, 1) + drop
    elif m.arch == "bow":
        body = r * d * 2 + a * d + (r * d if has_norm else 0) + mlp_act + drop
    else:  # bigram
        body = 0
    head = r * d + a * d + a * V + 4 * V + (4 * V if a < 4 else 0)
    return float(body + head)


def training_memory(
    mcfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    compute_dtype: str = "bfloat16",
    enc_dim: int = 0,
) -> dict[str, float]:
    """Bytes for AdamW training: weights, gradients, optimizer, activations, total.

    Weights and gradients are fp32 (4 bytes/param) as the trainer keeps them, AdamW adds
    two fp32 moments (8 bytes/param); activations are ``batch_size * seq_len`` tokens of
    :func:`activation_bytes_per_token`.
    """
    n = count_params(mcfg, enc_dim)["total"]
    out = {
        "weights": 4.0 * n,
        "gradients": 4.0 * n,
        "optimizer": 8.0 * n,
        "activations": batch_size * seq_len * activation_bytes_per_token(mcfg, compute_dtype),
    }
    out["total"] = sum(out.values())
    return out


def max_batch_size(
    mcfg: ModelConfig,
    seq_len: int,
    memory_bytes: float,
    compute_dtype: str = "bfloat16",
    enc_dim: int = 0,
) -> int:
    """The largest micro-batch (sequences) whose :func:`training_memory` fits ``memory_bytes``."""
    static = training_memory(mcfg, 0, seq_len, compute_dtype, enc_dim)["total"]
    per_seq = seq_len * activation_bytes_per_token(mcfg, compute_dtype)
    if memory_bytes <= static:
        return 0
    return int((memory_bytes - static) // per_seq)


def training_time_seconds(
    mcfg: ModelConfig, seq_len: int, tokens: float, mfu_fraction: float, peak_flops: float
) -> float:
    """Seconds to train on ``tokens`` at ``mfu_fraction`` of ``peak_flops`` (FLOP/s)."""
    if mfu_fraction <= 0 or peak_flops <= 0:
        raise LmlabError("training time needs --mfu > 0 and a peak (--peak-tflops)")
    return tokens * training_flops_per_token(mcfg, seq_len) / (mfu_fraction * peak_flops)


# --- everything `lmlab account` reports (the tables: lmlab.account_report) ------------------------


def resolve_vocab_size(cfg: Config) -> int:
    """model.vocab_size, else the tokenizer's, the dataset's or the tokenizer stage's (lmlab.account_model)."""
    return resolve_vocab(cfg)[0]


# Widths of encoders that can only be named (hub names, offline): model.encoder's hidden size.
KNOWN_ENCODER_WIDTHS = {"answerdotai/ModernBERT-base": 768, "answerdotai/ModernBERT-large": 1024}


def encoder_width(name_or_path: str) -> int:
    """model.encoder's hidden size: a local folder's config.json, else a known hub name's."""
    cfg_file = Path(name_or_path) / "config.json"
    if cfg_file.is_file():
        conf = read_json(cfg_file)
        width = conf.get("hidden_size") or conf.get("d_model")
        if isinstance(width, int) and width > 0:
            return width
        raise ConfigError(f"model.encoder: {cfg_file} names no hidden_size")
    if name_or_path in KNOWN_ENCODER_WIDTHS:
        return KNOWN_ENCODER_WIDTHS[name_or_path]
    raise ConfigError(
        f"model.encoder: {name_or_path!r} is not a local folder with config.json nor a known encoder "
        f"({', '.join(KNOWN_ENCODER_WIDTHS)}); its width is needed to count the decoder"
    )


def account(
    cfg: Config,
    seq_len: int = 0,
    batch_size: int = 0,
    memory_gb: float = 0.0,
    tokens: float = 0.0,
    mfu_fraction: float = 0.4,
    peak_tflops: float = 0.0,
) -> dict[str, Any]:
    """Everything `lmlab account` reports, as one JSON-ready dict."""
    resolved = resolve_model(cfg)
    m = resolved.model
    enc_dim = encoder_width(m.encoder) if m.arch == "encdec" else 0
    source_len = cfg.encdec.max_source_tokens if m.arch == "encdec" else 0
    T = seq_len or m.context_length
    t = cfg.train
    B = (
        batch_size
        or t.micro_batch_size
        or (max(1, t.batch_tokens // T) if t.batch_tokens else t.batch_size)
    )
    device, peak = detect_peak_flops()
    if peak_tflops > 0:
        peak = peak_tflops * 1e12
    # "auto" follows the trainer: bf16 autocast on a GPU, float32 on the CPU.
    dtype = t.dtype if t.dtype != "auto" else ("float32" if device == "cpu" else "bfloat16")
    params = count_params(m, enc_dim)
    fwd = forward_flops(m, T, enc_dim, source_len)
    total = fwd["total"]
    mem = training_memory(m, B, T, dtype, enc_dim)
    out: dict[str, Any] = {
        "arch": m.arch,
        "vocab_size": m.vocab_size,
        "vocab_source": resolved.vocab_source,
        "model_source": resolved.model_source,
        "seq_len": T,
        "batch_size": B,
        "compute_dtype": dtype,
        "params_total": params["total"],
        "params_non_embedding": params["non_embedding"],
        "params": params,
        "forward_flops_total": total,
        "forward_flops": {
            k: {"flops": v, "share": v / total} for k, v in fwd.items() if k != "total"
        },
        "training_flops_per_token": 3 * total,
        "forward_flops_per_sequence": total * T,
        "training_flops_per_sequence": 3 * total * T,
        "six_n": 6 * params["total"],
        "memory_bytes": mem,
        "activation_bytes_per_token": activation_bytes_per_token(m, dtype),
        "device": device,
        "peak_flops": peak,
    }
    if memory_gb > 0:
        out["memory_gb"] = memory_gb
        out["max_batch_size"] = max_batch_size(m, T, memory_gb * 2**30, dtype, enc_dim)
    if tokens > 0:
        if not peak:
            raise LmlabError(
                f"no known peak FLOP/s for device {device!r}: pass --peak-tflops P to estimate training time"
            )
        seconds = (
            tokens * 3 * total / (mfu_fraction * peak)
        )  # training_time_seconds, with cross-attention
        out["time"] = {
            "tokens": tokens,
            "mfu": mfu_fraction,
            "training_flops": tokens * 3 * total,
            "seconds": seconds,
        }
    return out


__all__ = [
    "PEAK_FLOPS",
    "account",
    "activation_bytes_per_token",
    "count_params",
    "flops_per_token",
    "forward_flops",
    "known_peak_flops",
    "max_batch_size",
    "mfu",
    "training_flops_per_token",
    "training_memory",
    "training_time_seconds",
]
