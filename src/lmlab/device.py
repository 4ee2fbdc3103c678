"""Device and precision resolution: turn ``train.device`` / ``train.dtype`` into torch objects.

``auto`` picks CUDA when present (then MPS, then CPU); ``dtype = auto`` picks bfloat16 on a
CUDA device that supports it, float16 on older CUDA devices (with a GradScaler in the loop)
and float32 everywhere else; the training loop refines ``auto`` on a CPU with native bf16
by measuring (:mod:`lmlab.train.precision`). Mixed precision runs under :func:`autocast`; weights and the
optimizer stay in float32.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch

from lmlab.errors import ConfigError

# Dense (no sparsity) bf16/fp16 tensor-core peaks in FLOP/s, matched against the CUDA device
# name in order (more specific names first). Sources: vendor data sheets.
PEAK_FLOPS: list[tuple[str, float]] = [
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("GH200", 989e12),  # Grace Hopper: an H100-class GPU (before "H200", which its name contains)
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
]


def known_peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak for a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3'), else None."""
    for key, peak in PEAK_FLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def detect_peak_flops() -> tuple[str, float | None]:
    """(device name, peak FLOP/s or None) for the current CUDA device; CPU gives None."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return name, known_peak_flops(name)
    return "cpu", None


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 dot products in hardware (AMX-BF16 or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def inputs_to(inputs: Any, device: torch.device | str) -> Any:
    """A batch's inputs (a tensor, or a dict of tensors) on ``device``."""
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


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
        raise ConfigError(
            f"train.device: unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name!r} requested but CUDA is not available")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device: {name!r} but only {torch.cuda.device_count()} CUDA devices"
            )
    elif dev.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ConfigError("train.device: 'mps' requested but MPS is not available")
    elif dev.type != "cpu":
        raise ConfigError(f"train.device: unsupported device {name!r}")
    return dev


def inference_device() -> str:
    """Where sample, chat and code eval run a model: the GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


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
    """Dense bf16/fp16 peak FLOP/s of one CUDA device (:data:`PEAK_FLOPS`), else None.

    None on CPU/MPS, for unlisted GPUs and for float32 (no tensor-core peak applies), so MFU
    is only reported where it means something.
    """
    if device.type != "cuda" or dtype is torch.float32:
        return None
    return known_peak_flops(torch.cuda.get_device_name(device))


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (for honest timings); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
