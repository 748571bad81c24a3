"""Keep resident memory flat while many same-sized temporaries come and go."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def release_freed_memory() -> None:
    """Hand memory freed by the last matrix or chunk back to the OS. glibc keeps freed heap memory
    otherwise, and with small allocations interleaved, each layer's temporaries land in fresh memory:
    resident memory would creep up by a few matrices per layer. A no-op where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
