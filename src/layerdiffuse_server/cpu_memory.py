"""Freed CPU memory kept for the next tensor, instead of handed back to the kernel at once.

A CPU generation allocates and frees activations of a few megabytes thousands of times: the
transparent decoder's eight full-resolution passes alone, hundreds per image. With glibc's default
settings such blocks come from fresh ``mmap`` regions or a heap that is trimmed at every free, so the
kernel maps and zeroes their pages again each time: measured on the tiny preset at 256², one
thread, 110–136 of the decoder's 570–640 ms CPU time was the kernel's, and with freed memory kept
none was (``benchmarks/cpu_decoder.py --allocator-baseline`` compares both). PyTorch's CPU tuning
guide swaps in jemalloc or tcmalloc for this reason; glibc's own ``mallopt`` does it here with
nothing to install: blocks below 32 MiB come from the heap, and up to 256 MiB of free heap stays
mapped. Larger tensors (the full-size decoder's at 1024²) still get their own mapping.

A user who configures the allocator (any ``MALLOC_*_`` variable, a ``glibc.malloc`` tunable, or an
allocator in ``LD_PRELOAD``) keeps their choice; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping

logger = logging.getLogger(__name__)

#: ``mallopt`` parameters, from glibc's ``malloc.h``.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks below this come from the heap (glibc's largest dynamic threshold on 64-bit machines).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap up to this much stays mapped for the next allocations.
TRIM_THRESHOLD = 256 * 2**20


def allocator_chosen_by_user(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the process's allocator was configured by whoever started it."""
    if any(name.startswith("MALLOC_") and name.endswith("_") for name in environ):
        return True
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return True
    return "malloc" in environ.get("LD_PRELOAD", "")


def running_on_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # no such name here: not glibc
        return False


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Tell glibc's allocator to keep freed blocks for reuse; ``True`` where it took effect."""
    if not running_on_glibc() or allocator_chosen_by_user(environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not applied:
        logger.warning("glibc refused the allocator settings; freed CPU memory goes back to the kernel at once")
    return applied
