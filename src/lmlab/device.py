"""Device and precision resolution: turn ``train.device`` / ``train.dtype`` into torch objects.

``auto`` picks CUDA when present (then MPS, then CPU); ``dtype = auto`` picks bfloat16 on a
CUDA device that supports it, float16 on older CUDA devices (with a GradScaler in the loop)
and float32 everywhere else. Mixed precision runs under :func:`autocast`; weights and the
optimizer stay in float32.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from lmlab.errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Dense peak TFLOPS by CUDA device-name fragment, for MFU (bf16/fp16 tensor cores, fp32).
# The first fragment found in torch.cuda.get_device_name() wins, so longer names come first.
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("H200", 989.0, 67.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100", 989.0, 67.0),
    ("A100", 312.0, 19.5),
    ("A10G", 125.0, 31.2),
    ("A10", 125.0, 31.2),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
    ("4090", 165.0, 82.6),
    ("3090", 71.0, 35.6),
    ("V100", 125.0, 15.7),
    ("T4", 65.0, 8.1),
]


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` -> a torch.device (ConfigError if absent).

    Under DDP (``local_rank`` given) a plain ``cuda``/``auto`` becomes ``cuda:<local_rank>``.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name!r} requested but CUDA is not available")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {name!r} but only {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ConfigError("train.device: 'mps' requested but MPS is not available")
    elif dev.type != "cpu":
        raise ConfigError(f"train.device: unsupported device {name!r}")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on capable CUDA, fp16 on older CUDA, fp32 otherwise; or the named dtype."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in _DTYPES:
        raise ConfigError(f"train.dtype: expected auto|float32|bfloat16|float16, got {name!r}")
    dtype = _DTYPES[name]
    if dtype is torch.float16 and device.type == "cpu":
        raise ConfigError("train.dtype: float16 is not supported on CPU; use bfloat16 or float32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """Mixed-precision context for forward passes; a no-op for float32."""
    if dtype is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense peak FLOP/s of one device at ``dtype``, or None where unknown (CPU, unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, half, single in PEAK_TFLOPS:
        if fragment in name:
            return (single if dtype is torch.float32 else half) * 1e12
    return None


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (for honest timings); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
