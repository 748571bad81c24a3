"""The tuned benchmark's BIG-bench results, kept as an archive: their data can no longer be downloaded.

hyperbaton, winowhy and fact_checker_fever were read from the bigbench==1.0.0 source archive, which the package
index no longer serves, so a fresh clone cannot rerun them; the tuned preset replaced them with tasks whose
data install from a registry package (results/tuned/task_screening.md). Their run files stay committed under
results/tuned/runs/<task>/; this script rebuilds a table from those files alone, by the protocol they ran under
(each method's rate chosen on the mean validation accuracy of the tuning seeds, test accuracy of the final seeds
at that rate), and writes results/tuned/archived_bigbench.md. The table is outside the benchmark's verdict.

    python benchmarks/archived_bigbench.py
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from inilora.experiments.bench import row_name
from inilora.experiments.bench.stats import method_order
from inilora.experiments.bench.tuning import choose_lr, val_score

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "results" / "tuned" / "runs"
OUT = ROOT / "results" / "tuned" / "archived_bigbench.md"
TASKS = ("hyperbaton", "winowhy", "fact_checker_fever")
TUNE_SEEDS, FINAL_SEEDS = (0, 1), (0, 1, 2, 3, 4)  # the preset's seeds when these runs were made
BASELINE = "lora"


def runs_of(task: str) -> dict[str, list[dict]]:
    """Every run file of ``task``, by method (named as rows are now)."""
    by_method = defaultdict(list)
    for path in sorted((RUNS / task).glob("*/*/seed*.json")):
        record = json.loads(path.read_text())
        by_method[row_name(record["method"])].append(record)
    return by_method


def t_interval(diffs: list[float]) -> tuple[float, float]:
    """The 95 % t interval of the mean of ``diffs`` (over seeds)."""
    from scipy import stats

    mean, half = statistics.fmean(diffs), 0.0
    if len(diffs) > 1 and statistics.stdev(diffs) > 0:
        half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean - half, mean + half


def method_row(runs: list[dict]) -> dict:
    """The rate chosen on validation (tuning seeds only) and the test accuracy of each final seed there."""
    val_by_lr = defaultdict(list)
    for run in runs:
        if run["seed"] in TUNE_SEEDS and run.get("val"):
            val_by_lr[run["lr"]].append(val_score(run, None))
    chosen = choose_lr(val_by_lr)
    test = {run["seed"]: run["test"]["metric"] for run in runs if run["lr"] == chosen and run["seed"] in FINAL_SEEDS}
    return {"lr": chosen, "test": test, "n_lrs": len(val_by_lr),
            "val": statistics.fmean(score.metric for score in val_by_lr[chosen])}


def table(task: str) -> list[str]:
    by_method = runs_of(task)
    rows = {method: method_row(by_method[method]) for method in method_order(by_method)}
    some = next(iter(by_method.values()))[0]
    base = rows.get(BASELINE)
    lines = [f"## {task}", "",
             f"BIG-bench `{some['spec']['task']}`, MiniLM, {some['n_train']} training examples, "
             f"{some['n_eval']} test examples, majority class {some['majority']:.3f}.", "",
             "| method | chosen lr | val acc | test acc (mean ± std) | seeds | Δ vs lora | 95 % CI over seeds |",
             "|---|---|---|---|---|---|---|"]
    for method, row in rows.items():
        values = [row["test"][s] for s in sorted(row["test"])]
        spread = f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else \
            (f"{values[0]:.4f}" if values else "–")
        delta = ci = "–"
        if base and method != BASELINE:
            seeds = sorted(set(row["test"]) & set(base["test"]))
            diffs = [row["test"][s] - base["test"][s] for s in seeds]
            if len(diffs) > 1:
                low, high = t_interval(diffs)
                delta, ci = f"{statistics.fmean(diffs):+.4f}", f"({low:+.4f}, {high:+.4f})"
        lines.append(f"| {method} | {row['lr']:g} | {row['val']:.4f} | {spread} | {len(values)} | {delta} | {ci} |")
    return lines + [""]


def main() -> None:
    lines = ["# Archived: the tuned benchmark's BIG-bench tasks (data no longer downloadable)", "",
             "**These tasks can no longer be rerun from a fresh clone**: their data came from the `bigbench==1.0.0` "
             "source archive, which the package index no longer serves. They are not part of the tuned benchmark's "
             "verdict; the preset replaced them with tasks that install from a registry package "
             "(see `task_screening.md`). The figures below are rebuilt by `benchmarks/archived_bigbench.py` from "
             "the run files kept in `runs/<task>/`: each method's learning rate is the one with the best mean "
             f"validation accuracy over the tuning seeds {list(TUNE_SEEDS)}; test accuracy is over the final seeds "
             f"{list(FINAL_SEEDS)} at that rate. Δ vs lora is paired by seed; its 95 % t interval is over seeds "
             "only (no correction for the number of comparisons). Methods missing from a table were never run "
             "on that task.", ""]
    for task in TASKS:
        lines += table(task)
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
