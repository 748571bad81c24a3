"""What a benchmark run records about the code and packages that made it, and what decides that a
finished run is stale: its configuration, data, package versions or init versions — not the commit."""

from __future__ import annotations

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
