"""Peak resident memory of a callable, measured as the rise of the process's VmHWM over its RSS
before the call (Linux: /proc/self/clear_refs resets the high-water mark)."""

from __future__ import annotations

import gc
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn, *args, **kwargs):
    """Run ``fn`` and return ``(result, seconds, peak_rise_bytes)``."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return result, seconds, (peak - before) * 1024
