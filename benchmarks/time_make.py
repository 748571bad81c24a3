"""Time ``make test`` or ``make quick`` in a clean clone and write the measurement as JSON (what the README's
block reads) with a Markdown write-up rendered from it, so the two cannot disagree:

- ``test`` (the default): ``results/test_suite.json`` and ``.md``; the clone's ``.venv`` may be installed already;
- ``quick``: the clone is made fresh first (``git clean -xdf``: no ``.venv``, no runs), so the time includes
  creating the environment; its runs replace ``results/quick``'s, with ``make_quick.json`` and ``README.md``.

    git clone <this repo> /tmp/clean && python benchmarks/time_make.py /tmp/clean [--target quick]

The clone is brought to this checkout's commit first (``git fetch`` + ``checkout``); pass ``--no-sync`` to time
it as it is. Stop other work on the machine first: the figures are what a quiet machine takes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^=*\s*(\d+) passed\b.* in ([\d.]+)s", re.M)  # pytest's last line


def git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True, check=True).stdout.strip()


def _made(clone: Path, target: str) -> dict:
    """What every timing record starts with: the command, the clone's commit, the machine's cores."""
    return {"command": f"time make {target}", "commit": git(clone, "rev-parse", "--short", "HEAD"),
            "cpus": os.cpu_count()}


def _clock(seconds: float) -> str:
    """``486.873`` -> ``8m6.873s``, as ``time`` prints it."""
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.3f}s"


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
    return {**_made(clone, "test"), "passed": int(passed), "warnings": int(warnings[1]) if warnings else 0,
            "pytest_seconds": float(seconds), "real_seconds": round(real, 3)}


def markdown(record: dict) -> str:
    return f"""# `make test`, measured

A clean clone of commit {record['commit']} on this project's {record['cpus']}-core CPU machine (`.venv` installed earlier in that clone,
nothing else running), `time make test` as `benchmarks/time_make.py` runs it:

    {record['passed']} passed, {record['warnings']} warnings in {record['pytest_seconds']:.2f}s
    real    {_clock(record['real_seconds'])}

`.ci/run` runs the same `make test` on a clean clone.

Written together with [`test_suite.json`](test_suite.json), which the README reads; `tests/test_readme.py`
checks that the two say the same.
"""


def measure_quick(clone: Path) -> dict:
    """``git clean -xdf`` then ``make quick`` in ``clone``: wall, user and system seconds (the children's)."""
    git(clone, "clean", "-xdfq")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(["make", "quick"], cwd=clone, capture_output=True, text=True)
    real = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"make quick failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return {**_made(clone, "quick"), "real_seconds": round(real, 3),
            "user_seconds": round(after.ru_utime - before.ru_utime, 3),
            "sys_seconds": round(after.ru_stime - before.ru_stime, 3)}


def quick_markdown(record: dict, bench_seconds: float) -> str:
    return f"""# `make quick`, measured

A clean clone of commit {record['commit']}, made fresh (`git clean -xdf`: no `.venv`, no runs), then `time make quick`
(creates `.venv`, installs the pinned packages from a warm pip cache, runs `inilora bench --quick`) as
`benchmarks/time_make.py --target quick` runs it, on this project's {record['cpus']}-core CPU machine with nothing else running:

    real    {_clock(record['real_seconds'])}
    user    {_clock(record['user_seconds'])}
    sys     {_clock(record['sys_seconds'])}

The benchmark itself took {bench_seconds:.0f} s of that (`invocations.json`). The runs, table and plots here are that
clone's `runs/quick`. A cold pip cache adds the download of the wheels (torch itself installs from local disk on
this machine).

`lora_at_tuned_lr/` (not remeasured here): `inilora bench --quick --methods lora --lr <rate>` — lora at the rate
the tuned benchmark chose on reviews at its own, longer budget, run on this budget (the README's quick block
names the rate and what it did).

Written together with [`make_quick.json`](make_quick.json), which the README reads; `tests/test_readme.py`
checks that the two say the same.
"""


QUICK_OUTPUTS = ("results.json", "results.md", "invocations.json", "final_metrics.png", "loss_curves.png", "runs")


def adopt_quick_runs(clone: Path) -> float:
    """Replace results/quick's runs, table and plots with the clone's ``runs/quick``; the benchmark's wall seconds."""
    source, target = clone / "runs" / "quick", ROOT / "results" / "quick"
    for name in QUICK_OUTPUTS:
        old = target / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        if (source / name).is_dir():
            shutil.copytree(source / name, old)
        elif (source / name).exists():
            shutil.copy2(source / name, old)
    (invocation,) = json.loads((target / "invocations.json").read_text())
    return invocation["wall_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", type=Path, help="a clone of this repository (not this checkout)")
    parser.add_argument("--no-sync", action="store_true", help="time the clone at its own commit")
    parser.add_argument("--target", choices=["test", "quick"], default="test", help="what to time (default: test)")
    args = parser.parse_args()
    if args.clone.resolve() == ROOT:
        sys.exit("time a separate clean clone, not this checkout")
    if not args.no_sync:
        git(args.clone, "fetch", "-q", str(ROOT), "HEAD")
        git(args.clone, "checkout", "-q", "--detach", "FETCH_HEAD")
    if git(args.clone, "status", "--porcelain", "--untracked-files=no"):
        sys.exit(f"{args.clone} has local changes: not a clean clone")
    if args.target == "quick":
        record = {"markdown": "results/quick/README.md", "measured_by": "benchmarks/time_make.py --target quick",
                  **measure_quick(args.clone)}
        text, saved = quick_markdown(record, adopt_quick_runs(args.clone)), "results/quick/make_quick.json"
    else:
        record = {"markdown": "results/test_suite.md", "measured_by": "benchmarks/time_make.py", **measure(args.clone)}
        text, saved = markdown(record), "results/test_suite.json"
    (ROOT / saved).write_text(json.dumps(record, indent=1) + "\n")
    (ROOT / record["markdown"]).write_text(text)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
