"""Rewrite the README's generated block of tuned results from the committed ``results/tuned/results.json``
(run after ``inilora bench --preset tuned --aggregate-only --out results/tuned``). ``--check`` only says
whether the README is up to date (exit 1 if not); tests/test_readme.py runs the same comparison.

    python benchmarks/readme_tables.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inilora.experiments.bench.tuned_report import README_BEGIN, README_END, readme_block

ROOT = Path(__file__).resolve().parents[1]


def regenerated(readme: str, results: dict) -> str:
    """``readme`` with its block between the markers replaced by the block ``results`` gives."""
    start, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    return readme[:start] + readme_block(results) + readme[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    fresh = regenerated(readme, json.loads((ROOT / "results" / "tuned" / "results.json").read_text()))
    if args.check:
        return 0 if fresh == readme else 1
    readme_path.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
