"""Time ``make test`` in a clean clone and write the measurement: ``results/test_suite.json`` (what the README's
test-suite block reads) and ``results/test_suite.md`` rendered from it, so the two cannot disagree.

    git clone <this repo> /tmp/clean && python benchmarks/time_make.py /tmp/clean

The clone is brought to this checkout's commit first (``git fetch`` + ``checkout``); pass ``--no-sync`` to time
it as it is. Stop other work on the machine first: the figures are what a quiet machine takes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^=*\s*(\d+) passed\b.* in ([\d.]+)s", re.M)  # pytest's last line


def git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True, check=True).stdout.strip()


def measure(clone: Path) -> dict:
    """Run ``make test`` in ``clone``; its wall time and pytest's summary line (all tests must pass)."""
    start = time.perf_counter()
    done = subprocess.run(["make", "test"], cwd=clone, capture_output=True, text=True)
    real = time.perf_counter() - start
    found = list(SUMMARY.finditer(done.stdout))
    if done.returncode != 0 or not found or re.search(r"\d+ (failed|error)", found[-1][0]):
        sys.exit(f"make test failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    passed, seconds = found[-1].groups()
    warnings = re.search(r"(\d+) warnings?", found[-1][0])
    return {"command": "time make test", "commit": git(clone, "rev-parse", "--short", "HEAD"),
            "cpus": os.cpu_count(), "passed": int(passed), "warnings": int(warnings[1]) if warnings else 0,
            "pytest_seconds": float(seconds), "real_seconds": round(real, 3)}


def markdown(record: dict) -> str:
    minutes, seconds = divmod(record["real_seconds"], 60)
    return f"""# `make test`, measured

A clean clone of commit {record['commit']} on this project's {record['cpus']}-core CPU machine (`.venv` installed earlier in that clone,
nothing else running), `time make test` as `benchmarks/time_make.py` runs it:

    {record['passed']} passed, {record['warnings']} warnings in {record['pytest_seconds']:.2f}s
    real    {int(minutes)}m{seconds:.3f}s

`.ci/run` runs the same `make test` on a clean clone.

Written together with [`test_suite.json`](test_suite.json), which the README reads; `tests/test_readme.py`
checks that the two say the same.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", type=Path, help="a clone of this repository (not this checkout)")
    parser.add_argument("--no-sync", action="store_true", help="time the clone at its own commit")
    args = parser.parse_args()
    if args.clone.resolve() == ROOT:
        sys.exit("time a separate clean clone, not this checkout")
    if not args.no_sync:
        git(args.clone, "fetch", "-q", str(ROOT), "HEAD")
        git(args.clone, "checkout", "-q", "--detach", "FETCH_HEAD")
    if git(args.clone, "status", "--porcelain", "--untracked-files=no"):
        sys.exit(f"{args.clone} has local changes: not a clean clone")
    record = {"markdown": "results/test_suite.md", "measured_by": "benchmarks/time_make.py", **measure(args.clone)}
    (ROOT / "results" / "test_suite.json").write_text(json.dumps(record, indent=1) + "\n")
    (ROOT / "results" / "test_suite.md").write_text(markdown(record))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
