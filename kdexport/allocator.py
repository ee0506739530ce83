"""Keep freed memory for reuse: on glibc Linux, CPU training otherwise pays the kernel for every big tensor.

glibc's malloc serves each request above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and gives it
back with ``munmap`` when freed. A training step on 32x32 images at batch 1,024 makes activations and gradients of
50-160 MB, so every step maps them anew and the kernel zero-fills each 4 KiB page on first touch: on the 2-core
AMD EPYC of ``benchmarks/results/bench_allocator.md`` that was a fifth of a fastcifar training step. Intel's and
PyTorch's CPU tuning guides preload jemalloc or tcmalloc for this; :func:`keep_freed_memory` gets the same from
glibc itself, in-process, with two ``mallopt`` calls: serve everything from the heap (``M_MMAP_MAX`` = 0) and
never trim it back (``M_TRIM_THRESHOLD`` = 2 GiB - 1), so freed pages stay mapped and the next step reuses them.
The cost is resident memory that stays at the process's peak instead of shrinking between steps.

The CLI asks for it at start (:func:`prefer_kept`) and ``load_dataset`` applies it once the data's mode is known
(:func:`settle`): for data held in memory, not for stream mode, where glibc's defaults stay untouched. There a
memory bound is what the mode is for, and kept memory let the heap grow over a long epoch of 224-px photos
(``bench_stream_5k_*.md``: +21% peak PSS after 5,000 photos; ``bench_stream_kept.md``: 2,874 MiB after 100,000).
Benchmark scripts that train on synthetic tensors call :func:`keep_freed_memory` directly; the library does nothing
on import. ``KDEXPORT_MALLOC=system`` leaves glibc's defaults everywhere (``kept``, the default, asks for the
above). Every environment stamp records which was in force when it was written (``malloc``): it changes timings,
never results.
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
_preferred = False


def state() -> str:
    """What this process's malloc does with big frees: 'kept' (after :func:`keep_freed_memory`), 'kept for data in
    memory' (asked for by :func:`prefer_kept`, applied when such data loads: a stamp written before that), or
    'system'."""
    if _state == "system" and _preferred and _glibc() and _wanted(warn=False):
        return "kept for data in memory"
    return _state


def _glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _wanted(warn: bool = True) -> bool:
    value = os.environ.get(ENV, "").strip().lower() or "kept"
    if value not in ("kept", "system"):
        if warn:
            warnings.warn(f"{ENV}={os.environ[ENV]!r} is neither 'kept' nor 'system'; keeping glibc's defaults",
                          stacklevel=3)
        return False
    return value == "kept"


def prefer_kept() -> None:
    """Ask for kept memory from the first dataset held in memory on (:func:`settle`); what the CLI does at start."""
    global _preferred
    _preferred = True


def settle(streamed: bool) -> str:
    """Called by ``load_dataset`` once the data's mode is known: after :func:`prefer_kept`, keep freed memory for
    data held in memory; leave malloc alone for streamed data. Returns :func:`state`."""
    if _preferred and not streamed:
        keep_freed_memory()
    return state()


def keep_freed_memory() -> str:
    """Tell glibc's malloc to keep freed memory for reuse now (see the module doc); idempotent. Returns
    :func:`state`. A no-op, returning 'system', where ``KDEXPORT_MALLOC=system`` is set or the C library is
    not glibc (macOS, musl: their allocators differ and are left alone)."""
    global _state
    if _state == "kept" or not _wanted() or not _glibc():
        return _state
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return _state
    if ok:
        _state = "kept"
    return _state

