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
:func:`keep_freed_memory` does. On the course's 2-core machine it took the page faults of a
ConvNet training step from 68,000–176,000 to almost none and made the step typically 1.3–1.5×
faster (1.1–1.75× over six runs on a noisy machine), in channels_last and NCHW alike, and feature
extraction 1.5–1.7× faster (bench/bench_allocator.py; bench/RESULTS.md, "Engine").

While it is active, freed memory stays with the process for reuse, so its resident size stays
near its peak; on exit the free memory is handed back to the kernel (``malloc_trim``). It does
nothing elsewhere (macOS, Windows, musl), and nothing where the user already chose an allocator
(jemalloc, tcmalloc or mimalloc in ``LD_PRELOAD``, ``MALLOC_*_`` variables, ``GLIBC_TUNABLES``).

What it cannot do: glibc has no way to read its settings back or to switch its adaptive mmap
threshold on again once ``mallopt`` was called. On exit it therefore sets fixed values near
where that adaptive rule ends up (an mmap threshold of 32 MiB, its maximum); code that runs
later in the same process keeps large blocks at least as often as in a fresh process, so it
runs as fast as or faster than there. Blocks over 64 MiB requested by threads other than the
main one may still be mmapped (glibc's per-thread arenas); PyTorch's CPU autograd runs on the
calling thread.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator

from . import environment

__all__ = ["keep_freed_memory", "available"]

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

# Near where glibc's adaptive rule ends up (mmap threshold raised to its 32 MiB maximum, trim
# threshold twice that); set on exit, since the state before cannot be read back.
_RESTORE = ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 64 * 2**20))
_KEEP = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))   # no mmap for large blocks; never trim the heap

_lock = threading.Lock()
_depth = 0


def _user_chose_an_allocator(environ=None) -> bool:
    """True when the environment already configures or replaces malloc: leave that choice alone
    (:attr:`sslcourse.environment.Environment.custom_allocator`)."""
    return environment.read(environ).custom_allocator


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc on Linux and nobody chose another allocator, else None."""
    if not sys.platform.startswith("linux") or _user_chose_an_allocator():
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):   # e.g. "glibc 2.36"; unset on musl
            return None
        return ctypes.CDLL("libc.so.6")
    except (OSError, ValueError):
        return None


_LIBC = _glibc()


def available() -> bool:
    """True where :func:`keep_freed_memory` has an effect (Linux with glibc, malloc not replaced)."""
    return _LIBC is not None


def _mallopt(settings) -> bool:
    """Apply ``(parameter, value)`` pairs with ``mallopt``; True when every call succeeded."""
    return all(_LIBC.mallopt(parameter, value) == 1 for parameter, value in settings)


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """While active, large freed blocks stay in the process and are reused, not unmapped.

    Yields whether it took effect (``False`` when disabled, where :func:`available` is
    False, or when glibc refused a setting). Nested uses are fine: the outermost one sets
    the fixed values described in the module docstring on exit, also after an exception,
    and hands free memory back to the kernel.
    """
    global _depth
    if not enabled or _LIBC is None:
        yield False
        return
    with _lock:
        if _depth == 0 and not _mallopt(_KEEP):
            _mallopt(_RESTORE)
            active = False
        else:
            _depth += 1
            active = True
    if not active:
        yield False
        return
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _mallopt(_RESTORE)
                _LIBC.malloc_trim(0)
