"""Keep resident memory flat while many same-sized temporaries come and go."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


TRIM_BYTES = 8 * 2**20  # freed temporaries handed back once they add up to this much (64 MiB let the fit on MiniLM rise 20 % of the model)
_untrimmed = 0


def release_freed_memory(freed_bytes: int | None = None) -> None:
    """Hand memory freed by the last matrix or chunk back to the OS. glibc keeps freed heap memory
    otherwise, and with small allocations interleaved, each layer's temporaries land in fresh memory:
    resident memory would creep up by a few matrices per layer. A no-op where there is no glibc.
    ``freed_bytes``: what the caller just freed; the trim then waits until such frees add up to ``TRIM_BYTES``
    (a trim takes milliseconds, and the next temporaries fault in fresh pages: on a small layer the two cost
    more than installing it), so the creep stays under that."""
    global _untrimmed
    if freed_bytes is not None:
        _untrimmed += freed_bytes
        if _untrimmed < TRIM_BYTES:
            return
    _untrimmed = 0
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
