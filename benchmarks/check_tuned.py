"""Check the committed tuned benchmark against what issue 13 must show, and list what is still missing.

Reads ``results/tuned/results.json`` (its ``summary`` is ``summary.json``; its ``runs`` say how many seeds each
grid point has), the plots beside it and docs/benchmark.md's generated block. Exit 0 when every point is met.

    python benchmarks/check_tuned.py            # --out DIR for another results folder
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINILM_TASKS = 4  # at least this many MiniLM classification tasks ...
SMOLLM2_TASKS = ("chain_sum", "gsm_symbolic")  # ... and both SmolLM2 tasks
GRID_POINTS, GRID_SPAN, TUNE_SEEDS, FINAL_SEEDS, PEERS, CURVE_POINTS = 4, 30, 2, 5, 3, 8
PLOTS = ("tuning_curves.png", "test_metrics.png", "val_loss_curves.png")
FULL = "full"
PEER_PREFIX = "peft:"


def method_gaps(entry: dict, seeds_by_lr: dict[str, set], baseline: bool) -> list[str]:
    """What one adapter method's summary entry still lacks."""
    gaps = []
    grid = sorted(entry["lr_grid"])
    if len(grid) < GRID_POINTS or grid[-1] / grid[0] < GRID_SPAN * (1 - 1e-9):
        gaps.append(f"grid {grid}: needs >= {GRID_POINTS} rates over >= {GRID_SPAN}x")
    thin = [lr for lr in grid if len(seeds_by_lr.get(f"{lr:.3g}", ())) < TUNE_SEEDS]
    if thin:
        gaps.append(f"{len(thin)} rate(s) with < {TUNE_SEEDS} tuning seeds ({', '.join(f'{lr:g}' for lr in thin)})")
    if entry["chosen_lr"] is None:
        gaps.append("no chosen rate yet")
    elif len(entry["test"]["seeds"]) < FINAL_SEEDS:
        gaps.append(f"{len(entry['test']['seeds'])} of {FINAL_SEEDS} final seeds")
    elif not baseline and entry["test"]["p_adjusted_all_methods"] is None:
        gaps.append("no adjusted p vs lora")
    return gaps


def unmet(results: dict, out: Path, readme: str) -> list[str]:
    """Every point of the must-show that ``results`` (results.json's content) does not meet yet."""
    summary, problems = results["summary"], []
    for key, kind in (("command", str), ("cpu_hours", float), ("tasks", dict)):
        if not isinstance(summary.get(key), kind):
            problems.append(f"summary.{key} is not a {kind.__name__}")
    seeds, sparse = defaultdict(set), defaultdict(int)
    for run in results["runs"]:
        seeds[run["task"], run["method"], f"{run['lr']:.3g}"].add(run["seed"])
        if len(run["val_curve"] or ()) < min(CURVE_POINTS, run["metrics"]["steps"]):
            sparse[run["task"]] += 1
    problems += [f"{name}: {n} run(s) log the validation loss < {CURVE_POINTS} times" for name, n in sparse.items()]
    tasks = summary.get("tasks", {})
    minilm = [name for name, task in tasks.items() if task["model"] == "minilm"]
    if len(minilm) < MINILM_TASKS:
        problems.append(f"{len(minilm)} MiniLM task(s) ({', '.join(minilm)}): needs >= {MINILM_TASKS}")
    problems += [f"task {name} has no runs yet" for name in SMOLLM2_TASKS if name not in tasks]
    for name, task in tasks.items():
        peers = 0
        for method, entry in task["methods"].items():
            if method == FULL:
                continue
            by_lr = {lr: s for (t, m, lr), s in seeds.items() if (t, m) == (name, method)}
            gaps = method_gaps(entry, by_lr, baseline=method == "lora")
            problems += [f"{name} / {method}: {gap}" for gap in gaps]
            peers += method.startswith(PEER_PREFIX) and not gaps
        if peers < PEERS:
            problems.append(f"{name}: {peers} complete PEFT peer(s), needs >= {PEERS}")
        if f"**{name}**" not in readme:
            problems.append(f"{name}: not in docs/benchmark.md's generated block")
    problems += [f"plot {plot} missing" for plot in PLOTS if not (out / plot).is_file()]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "tuned")
    args = parser.parse_args()
    results = json.loads((args.out / "results.json").read_text())
    problems = unmet(results, args.out, (ROOT / "docs" / "benchmark.md").read_text())
    print("\n".join(problems) if problems else "every must-show point of issue 13 is met")
    print(f"{len(results['runs'])} runs, {results['summary']['cpu_hours']:.1f} CPU hours", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
