"""Keep freed memory for reuse: on glibc Linux, CPU training otherwise pays the kernel for every big tensor.

glibc's malloc serves each request above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and gives it
back with ``munmap`` when freed. A training step on 32x32 images at batch 1,024 makes activations and gradients of
50-160 MB, so every step maps them anew and the kernel zero-fills each 4 KiB page on first touch: on the 2-core
AMD EPYC of ``benchmarks/results/bench_allocator.md`` that was a fifth of a fastcifar training step. Intel's and
PyTorch's CPU tuning guides preload jemalloc or tcmalloc for this; :func:`keep_freed_memory` gets the same from
glibc itself, in-process, with two ``mallopt`` calls: serve everything from the heap (``M_MMAP_MAX`` = 0) and
never trim it back (``M_TRIM_THRESHOLD`` = 2 GiB - 1), so freed pages stay mapped and the next step reuses them.
The cost is resident memory that stays at the process's peak instead of shrinking between steps.

The CLI calls it once at start, as do the benchmark scripts; the library never does it on import.
``KDEXPORT_MALLOC=system`` leaves glibc's defaults (``kept``, the default, asks for the above). Every environment
stamp records which was in force (``malloc``): it changes timings, never results.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import warnings

ENV = "KDEXPORT_MALLOC"
_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # the largest an int holds: freed heap memory is never given back

_state = "system"


def state() -> str:
    """What this process's malloc does with big frees: 'kept' (after :func:`keep_freed_memory`) or 'system'."""
    return _state


def keep_freed_memory() -> str:
    """Tell glibc's malloc to keep freed memory for reuse (see the module doc); idempotent. Returns
    :func:`state`. A no-op, returning 'system', where ``KDEXPORT_MALLOC=system`` is set or the C library is
    not glibc (macOS, musl: their allocators differ and are left alone)."""
    global _state
    wanted = os.environ.get(ENV, "").strip().lower() or "kept"
    if wanted not in ("kept", "system"):
        warnings.warn(f"{ENV}={os.environ[ENV]!r} is neither 'kept' nor 'system'; keeping glibc's defaults",
                      stacklevel=2)
        return _state
    if _state == "kept" or wanted == "system":
        return _state
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return _state
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return _state
    if ok:
        _state = "kept"
    return _state
