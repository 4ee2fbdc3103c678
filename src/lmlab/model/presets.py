"""Named architecture presets: ModelConfig field overrides (sizes are left to the recipe).

``gpt2``: LayerNorm (pre), learned positions, GELU (tanh approximation), biases, tied
embeddings: the layout of HF ``GPT2LMHeadModel``.
``llama``: RMSNorm (pre), RoPE, SwiGLU, no biases, untied head: the layout of HF
``LlamaForCausalLM``.

Apply one with ``dataclasses.replace(mcfg, **PRESETS["gpt2"])``.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "arch": "transformer",
        "norm": "layernorm",
        "norm_position": "pre",
        "norm_eps": 1e-5,
        "position": "learned",
        "mlp": "gelu",
        "bias": True,
        "tie_embeddings": True,
        "n_kv_head": 0,
    },
    "llama": {
        "arch": "transformer",
        "norm": "rmsnorm",
        "norm_position": "pre",
        "norm_eps": 1e-5,
        "position": "rope",
        "rope_theta": 10000.0,
        "mlp": "swiglu",
        "bias": False,
        "tie_embeddings": False,
    },
}
