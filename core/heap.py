"""Handing freed memory back to the operating system between images.

Every image allocates and frees tens of megabytes of arrays (pixels, encoded bytes, class
probabilities, CRF marginals, label maps). glibc keeps freed blocks below its mmap threshold in
its heap, and raises that threshold after the first large free, so over thousands of images the
heap fragments and the resident memory grows with the image count: +24% from N to 10N images
on the local runner (benchmarks/memory.py), although nothing is held. ``malloc_trim(0)`` once
per image returns the free pages (measured: flat, at no cost in time). Where the C library is
not glibc, this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Callable, Optional


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Returns the C heap's free pages to the system; False where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
