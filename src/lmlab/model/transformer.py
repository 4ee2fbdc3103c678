"""The decoder-only transformer: every variant the config can name, in one file.

Architecture choices (all from :class:`lmlab.config.ModelConfig`):

- token embedding ``tok_emb``; positions ``rope`` (rotary, applied to q and k, HF/Llama
  "rotate half" convention), ``learned`` (``pos_emb`` table of ``context_length`` rows,
  GPT-2) or ``none`` (NoPE: causal masking alone carries order);
- ``n_layer`` blocks, each attention then MLP; norm ``rmsnorm`` | ``layernorm`` | ``none``,
  placed ``pre`` (``x + f(norm(x))``, plus a final norm ``norm_f`` before the head) or
  ``post`` (``norm(x + f(x))``, GPT-1/BERT style, no final norm);
- ``residual = false`` drops the skip connections (``f(norm(x))``, ``norm(f(x))`` post):
  the ladder's stacked model without residuals, with or without norms. With norms it keeps
  the init above; with ``norm = "none"`` it takes the ``no_residual`` baseline's
  (:func:`init_without_residuals`) and is that baseline;
- attention: one fused q/k/v projection, ``n_head`` query heads and ``n_kv_head`` key/value
  heads (grouped-query when fewer), with ``qk_norm`` each head's q and k RMS-normalised (a
  learned gain over head_dim each, ``attn.q_norm`` / ``attn.k_norm``) before RoPE,
  ``F.scaled_dot_product_attention`` with a causal mask (training in bf16 on a CPU:
  :mod:`lmlab.model.cpu_attention`, the same forward with a faster backward);
- MLP: ``swiglu`` (fused gate/up projection, ``silu(gate) * up``), ``gelu`` (GPT-2's tanh
  approximation), ``gelu_erf`` (the exact erf form: nanoGPT's ``nn.GELU()``, and on a CPU
  2-3x faster than the tanh form's kernel), ``silu``, ``relu`` or ``relu2`` (relu squared,
  modded-nanogpt's); hidden width ``d_ff`` (0: 8/3*d_model rounded up to a
  multiple of 64 for swiglu, else 4*d_model);
- ``bias`` on every linear layer and layernorm (RMSNorm and the head never have one);
- ``dropout`` on embeddings, attention probabilities and both residual branches;
- ``tie_embeddings``: the head's weight IS the token embedding (one Parameter);
- init: normal(0, init_std) for every matrix and embedding, residual output projections
  (``attn.proj``, ``mlp.proj``) scaled by 1/sqrt(2*n_layer) (zero with ``zero_init_out``:
  every block starts as the identity), biases zero, norm weights one.

Parameter names (what export maps to other formats)::

    tok_emb.weight                    (vocab_size, d_model)
    pos_emb.weight                    (context_length, d_model)        position == "learned"
    blocks.{i}.norm1.weight / .bias   (d_model,)                       bias: layernorm + bias
    blocks.{i}.attn.qkv.weight        ((n_head + 2*n_kv_head)*head_dim, d_model)
                                      rows are [q heads | k heads | v heads], head-major
    blocks.{i}.attn.qkv.bias          same rows                        bias=True
    blocks.{i}.attn.q_norm.weight     (head_dim,)                      qk_norm (k_norm alike)
    blocks.{i}.attn.proj.weight/.bias (d_model, n_head*head_dim) / (d_model,)
    blocks.{i}.norm2.weight / .bias   (d_model,)
    blocks.{i}.mlp.fc.weight/.bias    (d_ff, d_model); swiglu: (2*d_ff, d_model), rows [gate | up]
    blocks.{i}.mlp.proj.weight/.bias  (d_model, d_ff)
    norm_f.weight / .bias             (d_model,)                       pre-norm, norm != none
    head.weight                       (vocab_size, d_model)            no bias; tied: same
                                                                       tensor as tok_emb.weight

Weights are stored as ``nn.Linear`` does (out_features, in_features); GPT-2's HF ``Conv1D``
stores the transpose. RoPE uses the rotate-half pairing (dim i with dim i + head_dim/2), the
same as HF ``LlamaForCausalLM``, so q/k weights copy across without permutation.
``tests/test_model_hf_parity.py`` holds the exact mapping to ``GPT2LMHeadModel`` and
``LlamaForCausalLM`` (same logits on copied weights). With tying, ``state_dict()`` has both
``tok_emb.weight`` and ``head.weight`` naming one tensor (use safetensors' ``save_model``).

Incremental decoding::

    cache = model.new_kv_cache(batch, max_len, device, dtype)   # max_len <= context_length
    logits = model(prompt, kv_cache=cache)        # prefill: logits for every prompt position
    logits = model(next_tok[:, None], kv_cache=cache)   # then one token per step
    cache.pos                                     # tokens held so far

Rows of different lengths decode in one batch left-padded: ``cache.set_padding(pad)`` before
the prefill marks the padding columns, which no query then sees (with RoPE, or no positions,
a row's scores depend only on its tokens' relative positions, so padding changes nothing but
rounding; learned positions would shift, and are not padded).

The cache holds keys/values after RoPE. A full cache (or, with learned positions, a position
>= context_length) raises LmlabError. For a sliding window with ``rope`` or ``none``
positions, rebuild it: ``cache.reset()`` then prefill the last ``context_length - 1`` tokens
(positions restart at 0, exactly as in training). ``learned`` positions work the same way.

Logits come back in the compute dtype (bf16 under autocast); the loss, outside the model,
upcasts (``F.cross_entropy`` runs in fp32 under autocast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import lmlab.model.cpu_attention as cpu_attention
from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.model.loss import linear_cross_entropy

# --- config helpers ---------------------------------------------------------------------------


def resolve_d_ff(cfg: ModelConfig) -> int:
    """The MLP hidden width: cfg.d_ff, or the conventional default when it is 0."""
    if cfg.d_ff:
        return cfg.d_ff
    if cfg.mlp == "swiglu":
        return 64 * math.ceil(8 * cfg.d_model / 3 / 64)
    return 4 * cfg.d_model


# --- building blocks --------------------------------------------------------------------------


def make_norm(cfg: ModelConfig) -> nn.Module:
    """RMSNorm (weight only), LayerNorm (weight, bias when cfg.bias) or Identity."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    if cfg.norm == "layernorm":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
    return nn.Identity()


class Rotary(nn.Module):
    """Precomputed RoPE tables, cos/sin of shape (context_length, head_dim/2), not saved."""

    def __init__(self, head_dim: int, context_length: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        cos, sin = self._tables(context_length)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(
        self, length: int, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / self.theta ** (
            torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=device) / self.head_dim
        )
        angles = torch.outer(
            torch.arange(length, dtype=torch.float64, device=device), inv_freq
        )  # (L, hd/2)
        return angles.cos().float(), angles.sin().float()

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions start .. start+length-1, each (length, head_dim/2)."""
        if start + length <= self.cos.shape[0]:
            return self.cos[start : start + length], self.sin[start : start + length]
        # Past context_length (uncached long input): compute on the fly; quality is untrained.
        cos, sin = self._tables(start + length, device=self.cos.device)
        return cos[start:], sin[start:]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, hd) pairing dim i with i + hd/2; cos/sin are (T, hd/2)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, H, hd/2) each
    cos = cos[None, :, None, :].to(x.dtype)
    sin = sin[None, :, None, :].to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _rms_norm_as(norm: nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` with its gain in x's dtype: under autocast q and k are bf16, and a float32
    gain would send torch to its slower unfused kernel (with a warning)."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


@dataclass
class KVCache:
    """Keys and values of every layer for incremental decoding.

    ``k``/``v`` are (n_layer, B, n_kv_head, max_len, head_dim); ``pos`` is how many positions
    are filled. The model writes layer i's new keys at [pos, pos+T) and advances ``pos`` once
    per forward call.
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: int = 0
    # (B, max_len) bool, True at a left-padding position (rows of different prompt lengths in
    # one batch), or None: nothing padded
    pad: torch.Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def reset(self) -> None:
        """Forget everything (the tensors are reused); the next call is a fresh prefill."""
        self.pos = 0
        self.pad = None

    def set_padding(self, pad: torch.Tensor | None) -> None:
        """Mark the next prefill's left padding: ``pad`` (B, T) is True where a row's column
        holds no token (no query ever sees it); None, or all False, pads nothing."""
        if pad is None or not bool(pad.any()):
            self.pad = None
            return
        full = torch.zeros(self.batch_size, self.max_len, dtype=torch.bool, device=pad.device)
        full[:, self.pos : self.pos + pad.shape[1]] = pad
        self.pad = full

    def attention_mask(self, start: int, length: int) -> torch.Tensor | None:
        """(B, 1, length, start + length) bool, True where a query (positions start ..
        start + length - 1) may see a key: the causal keys that are not padding, and always
        itself, so a padding column's query (never seen by a real one) has something to
        attend to instead of a row of -inf. None when nothing is padded."""
        if self.pad is None:
            return None
        end = start + length
        device = self.pad.device
        q_pos = torch.arange(start, end, device=device)[:, None]
        k_pos = torch.arange(end, device=device)[None, :]
        causal = k_pos <= q_pos  # (length, end)
        seen = causal & ~self.pad[:, None, :end]  # (B, length, end)
        return (seen | (k_pos == q_pos))[:, None]  # (B, 1, length, end)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_head, T, hd) at the current position; return all keys/values so far."""
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with a fused qkv projection."""

    def __init__(self, cfg: ModelConfig, n_head: int | None = None, n_kv_head: int | None = None):
        super().__init__()
        self.n_head = n_head or cfg.n_head
        self.n_kv_head = n_kv_head or cfg.n_kv_head or self.n_head
        self.head_dim = cfg.d_model // self.n_head
        self.dropout = cfg.dropout
        qkv_out = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.qkv = nn.Linear(cfg.d_model, qkv_out, bias=cfg.bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=cfg.bias)
        self.proj.is_residual_out = True  # init scales it by 1/sqrt(2*n_layer)
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, hd = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv(x).view(
            B, T, H + 2 * KV, hd
        )  # (B, T, H + 2*KV, hd): q heads, k heads, v heads
        # split, not slicing: its backward is one cat, where each slice's backward zero-fills
        # a full-size gradient and copies into it (4 per layer; ~6% of a small CPU step)
        if self.qk_norm:
            q, k, v = qkv.split([H, KV, KV], dim=2)
            q, k = _rms_norm_as(self.q_norm, q), _rms_norm_as(self.k_norm, k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        elif rope is not None:
            qk, v = qkv.split([H + KV, KV], dim=2)  # (B, T, H + KV, hd), (B, T, KV, hd)
            qk = apply_rope(qk, *rope)  # q and k rotated in one pass
            q, k = qk.split([H, KV], dim=2)  # (B, T, H, hd), (B, T, KV, hd)
        else:
            q, k, v = qkv.split([H, KV, KV], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)

        mask, causal = None, True
        if cache is not None:
            start = cache.pos
            k, v = cache.update(layer, k, v)  # (B, KV, start + T, hd)
            k, v = k.to(q.dtype), v.to(q.dtype)  # a float32 cache under autocast: match q
            mask = cache.attention_mask(start, T)  # rows left-padded: a mask per row
            if mask is not None:
                causal = False
            elif start > 0:
                causal = False
                if T > 1:  # a chunk after earlier tokens: query i sees keys 0 .. start + i
                    q_pos = torch.arange(start, start + T, device=x.device)[:, None]
                    mask = (
                        torch.arange(start + T, device=x.device)[None, :] <= q_pos
                    )  # (T, start+T)
        dropout = self.dropout if self.training else 0.0
        if causal and cpu_attention.applies(q, k, dropout):  # bf16 training on a CPU
            y = cpu_attention.causal_attention(q, k, v)  # (B, H, T, hd)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=causal,
                enable_gqa=KV != H,
            )  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, H * hd)  # (B, T, H * hd)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: fc -> activation (or SwiGLU gate) -> proj."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_ff = resolve_d_ff(cfg)
        self.kind = cfg.mlp
        fc_out = 2 * d_ff if cfg.mlp == "swiglu" else d_ff
        self.fc = nn.Linear(cfg.d_model, fc_out, bias=cfg.bias)  # swiglu rows: [gate | up]
        self.proj = nn.Linear(d_ff, cfg.d_model, bias=cfg.bias)
        self.proj.is_residual_out = True
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (B, T, d_ff) or (B, T, 2*d_ff)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "gelu":
            h = F.gelu(h, approximate="tanh")
        elif self.kind == "gelu_erf":
            h = F.gelu(h)
        elif self.kind == "silu":
            h = F.silu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.relu(h)
        return self.drop(self.proj(h))  # (B, T, d_model)


class Block(nn.Module):
    """Attention then MLP, each wrapped in a residual connection with pre- or post-norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.post_norm = cfg.norm_position == "post"
        self.residual = cfg.residual
        self.norm1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope=None, cache=None, layer: int = 0) -> torch.Tensor:
        if not self.residual:  # model.residual = false: the sublayers stacked plainly
            if self.post_norm:
                return self.norm2(self.mlp(self.norm1(self.attn(x, rope, cache, layer))))
            return self.mlp(self.norm2(self.attn(self.norm1(x), rope, cache, layer)))
        if self.post_norm:
            x = self.norm1(x + self.attn(x, rope, cache, layer))
            return self.norm2(x + self.mlp(x))
        x = x + self.attn(self.norm1(x), rope, cache, layer)
        return x + self.mlp(self.norm2(x))


# --- the model --------------------------------------------------------------------------------


def init_weights(model: nn.Module, cfg: ModelConfig, n_layer: int) -> None:
    """normal(0, init_std) matrices/embeddings, residual outputs / sqrt(2*n_layer), zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            std = cfg.init_std
            if getattr(module, "is_residual_out", False):
                std = 0.0 if cfg.zero_init_out else cfg.init_std / math.sqrt(2 * n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=cfg.init_std)
        elif isinstance(module, nn.LayerNorm | nn.RMSNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def init_without_residuals(blocks: nn.Module, embeddings: list[nn.Embedding | None]) -> None:
    """Init for sublayers stacked without skip connections: activations stay O(1).

    Embeddings normal(0, 1), every linear layer in ``blocks`` normal(0, 1/sqrt(fan_in)) (no
    residual scaling), so no linear layer shrinks the signal (with init_std=0.02 each would
    shrink it ~8x at width 64, and the ablation would measure the init). Without norms the
    stack still fades: attention averages over positions and the gated MLP damps, so at
    width 64 the activations' std goes 1 -> 0.12 -> 0.04 -> 0.007 -> 0.0002 over 4 blocks
    (tests/test_model_residual.py); with norms it stays near 0.6.
    """
    for emb in embeddings:
        if emb is not None:
            nn.init.normal_(emb.weight, mean=0.0, std=1.0)
    for module in blocks.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)


class Transformer(nn.Module):
    """Decoder-only LM: ``model(idx) -> logits`` with idx (B, T) int64, logits (B, T, V)."""

    supports_kv_cache = True
    supports_fused_loss = True  # forward(idx, targets=y) returns the summed loss
    block_cls: type[nn.Module] = Block  # the encoder-decoder's decoder swaps in its own block

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Embedding(cfg.context_length, d) if cfg.position == "learned" else None
        self.rotary = (
            Rotary(d // cfg.n_head, cfg.context_length, cfg.rope_theta)
            if cfg.position == "rope"
            else None
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(self.block_cls(cfg) for _ in range(cfg.n_layer))
        has_final = cfg.norm_position == "pre" and cfg.norm != "none"
        self.norm_f = make_norm(cfg) if has_final else None
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        init_weights(self, cfg, cfg.n_layer)
        if not cfg.residual and cfg.norm == "none":
            # with norms each sublayer's input is rescaled and the standard init serves; a
            # unit-scale embedding there would only feed the tied head logits of std ~sqrt(d)
            init_without_residuals(self.blocks, [self.tok_emb, self.pos_emb])

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameters counted once (a tied head is not counted twice).

        ``exclude_embeddings`` drops the token and position tables (an untied head stays),
        the "non-embedding" count of scaling-law papers.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def new_kv_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` (default context_length)."""
        cfg = self.config
        max_len = max_len or cfg.context_length
        if cfg.position == "learned" and max_len > cfg.context_length:
            raise LmlabError(
                f"KV cache of {max_len} positions exceeds model.context_length={cfg.context_length} "
                "(learned positions cannot go further)"
            )
        ref = self.tok_emb.weight
        attn = self.blocks[0].attn
        shape = (cfg.n_layer, batch_size, attn.n_kv_head, max_len, attn.head_dim)
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        return KVCache(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )

    def forward(
        self,
        idx: torch.Tensor,
        kv_cache: KVCache | None = None,
        targets: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for idx (B, T); with a cache, idx continues the cached tokens.

        With ``targets`` (B, T) it returns the summed cross-entropy instead (-100 ignored),
        computed with the head in chunks (:func:`lmlab.model.loss.linear_cross_entropy`)
        without materialising the logits. ``last_only``: the last position's logits alone,
        (B, 1, vocab_size), what a sampler's prefill needs (the head is the largest matmul of
        a small model's prefill).
        """
        cfg = self.config
        B, T = idx.shape
        start = 0
        if kv_cache is not None:
            start = kv_cache.pos
            if start + T > kv_cache.max_len:
                raise LmlabError(
                    f"KV cache full: {start} + {T} tokens > {kv_cache.max_len}; "
                    "call cache.reset() and prefill the last context_length - 1 tokens"
                )
            if B != kv_cache.batch_size:
                raise LmlabError(
                    f"KV cache holds {kv_cache.batch_size} sequences, got a batch of {B}"
                )
        if self.pos_emb is not None and start + T > cfg.context_length:
            raise LmlabError(
                f"position {start + T - 1} >= model.context_length={cfg.context_length}: learned "
                "positions end there (crop the input, or reset the cache and re-prefill a window)"
            )
        x = self.tok_emb(idx)  # (B, T, d_model)
        if self.pos_emb is not None:
            x = x + self.pos_emb(
                torch.arange(start, start + T, device=idx.device)
            )  # (T, d_model) broadcast
        x = self.drop(x)
        rope = self.rotary(start, T) if self.rotary is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x, rope, kv_cache, i)
        if self.norm_f is not None:
            x = self.norm_f(x)
        if kv_cache is not None:
            kv_cache.pos = start + T
        if targets is not None:
            return linear_cross_entropy(
                x.flatten(0, 1), self.head.weight, targets.flatten()
            )  # () summed
        return self.head(x[:, -1:] if last_only else x)  # (B, T or 1, vocab_size)
