"""Keep freed host memory in the process during training, instead of handing it back each step.

PyTorch's CPU tensors come from the C library's ``malloc``. A training step allocates and
frees the same activations and gradients every step, and glibc's defaults return that
memory to the kernel (trimming the top of the heap past ``M_TRIM_THRESHOLD``, and serving
blocks over ``M_MMAP_THRESHOLD`` with their own ``mmap``), so the next step takes a page fault
for every 4 KiB page it touches again. On the shakespeare-char GPT-2 step (4 x 128, batch 12
x 64, 1 thread) that was ~1,860 page faults and ~3.3 ms of kernel time per ~55 ms step;
with the thresholds raised, 9 faults and 0.5 ms (bench/RESULTS.md).

:func:`retain_freed_memory` raises both thresholds once per process (glibc only; elsewhere,
musl, macOS, Windows, it does nothing). The cost: a process keeps up to ``TRIM_THRESHOLD``
of freed memory for reuse rather than returning it, which a training process reuses at
the next step anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks below this come from the heap (and are reused) rather than a fresh mmap each time;
# larger ones (a big model's logits) still get their own mapping, returned on free.
MMAP_THRESHOLD = 256 << 20
# Free memory at the top of the heap is returned to the kernel only past this much.
TRIM_THRESHOLD = 1 << 30


@functools.cache
def retain_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds (once per process); True when applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; a glibc that refuses a value keeps its default for it
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mmap_ok and trim_ok
