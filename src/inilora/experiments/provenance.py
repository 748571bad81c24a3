"""What a benchmark run records about the code, packages and machine that made it, and what decides that a
finished run is stale: its configuration, data, package versions or init versions — not the commit, nor the
machine (recorded because the last bits of a BLAS or LAPACK result differ between CPUs)."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from pathlib import Path

PACKAGES = ("inilora", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "numpy")


def git_state(directory: str | None = None) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout holding this package (None
    outside a git checkout, e.g. an installed wheel). Untracked files do not count as dirty, nor do changes
    under ``results/`` (what benchmarks write while they run: data, not code)."""
    where = directory or str(Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                 ":(top,exclude)results"], cwd=where,
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


@cache
def versions() -> dict:
    """Installed versions of the packages that decide a run's numbers, and Python's."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


@cache
def machine() -> dict:
    """The processor's model name (Linux: ``/proc/cpuinfo``; elsewhere what :mod:`platform` says), the logical
    CPU count, the OS, and the GPU's name when torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    found = {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform()}
    import torch

    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
    return found
