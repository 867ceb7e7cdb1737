"""Keep freed tensor memory inside the process while training on a CPU (Linux with glibc).

Why this exists. glibc's ``malloc`` serves large blocks with ``mmap`` and gives them back
to the kernel as soon as they are freed (blocks above its mmap threshold: 128 KiB at start,
raised on the fly up to 32 MiB). A training step frees and re-allocates the same large
tensors every step: the first ConvNet block's output for 512 views of 32×32 images is
512 · 32 · 32 · 32 · 4 B = 67 MB, and so is its gradient. Each step then pays page faults
and the kernel zeroing fresh pages. PyTorch's performance tuning guide ("Switch memory
allocator", https://pytorch.org/tutorials/recipes/recipes/tuning_guide.html) suggests preloading
jemalloc or tcmalloc, which reuse memory, for this reason; a running notebook kernel cannot swap
its allocator, but it can retune glibc's with ``mallopt(3)``, which is what
:func:`keep_freed_memory` does. On the course's 2-core machine this made a ConvNet training
step 1.3–1.5× faster, in channels_last and in NCHW alike, and feature extraction 1.5–1.7×
faster (bench/bench_allocator.py; bench/RESULTS.md, "Engine").

The cost: while it is active, freed memory stays with the process for reuse (its resident
size stays at its peak). Elsewhere (macOS, Windows, musl) it does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import sys
import threading
from collections.abc import Iterator

__all__ = ["keep_freed_memory", "available"]

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

# What glibc's own rule converges to (mmap threshold raised up to its 32 MiB maximum, trim
# threshold twice that): restored on exit, so code that runs afterwards keeps large blocks
# at least as often as an untouched process would.
_RESTORE = ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 64 * 2**20))
_KEEP = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))   # no mmap for large blocks; never trim the heap

_lock = threading.Lock()
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _glibc()


def available() -> bool:
    """True where :func:`keep_freed_memory` has an effect (Linux with glibc)."""
    return _LIBC is not None


def _mallopt(settings) -> None:
    for parameter, value in settings:
        _LIBC.mallopt(parameter, value)


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """While active, large freed blocks stay in the process and are reused, not unmapped.

    Yields whether it took effect (``False`` when disabled or not on glibc). Nested uses
    are fine: the settings are restored when the outermost one exits.
    """
    global _depth
    if not enabled or _LIBC is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            _mallopt(_KEEP)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _mallopt(_RESTORE)
