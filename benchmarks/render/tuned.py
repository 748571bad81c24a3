"""The tuned benchmark's block on the benchmark page (results/tuned/results.json): the verdict on the declared
comparisons across tasks, and per task each method's chosen rate, test result and reading."""

from __future__ import annotations

from inilora.experiments.bench.stats import SIGNIFICANCE, TOST_LEVEL, UNDEFINED
from inilora.experiments.bench.tuned_preset import protocols
from inilora.experiments.bench.tuned_report import (READING_COLUMNS, _ci, _p, declared_readings, not_converged_lines,
                                                    words)
from inilora.experiments.bench.tuning import CONVERGED_FALL, higher_is_better
from inilora.experiments.bench.verdict import BASELINE, DECLARED, MARGINS, mean_difference, mean_val_curve

from .formatting import METRIC_NAMES, listed


def _margins_text(metrics: dict[str, str]) -> str:
    used = dict.fromkeys(metrics.values())
    return ", ".join(f"{METRIC_NAMES.get(m, m)} ±{MARGINS[m]:g}" for m in used if m in MARGINS)


UNCONVERGED_MARK = "†"


def overview_lines(declared: dict[str, list[dict]], metrics: dict[str, str], seeds: int,
                   unconverged: tuple[str, ...] = ()) -> list[str]:
    """The verdict across tasks: per declared comparison, the tasks where it reads better, worse, equivalent
    within its margin or inconclusive — each with Δ and its 95 % CI over seeds — and those still waiting for
    their final seeds. The tasks in ``unconverged`` (tuned ``lora`` still improving at the end of its budget)
    are marked wherever they appear, with a note under the table."""
    rows = {(row["comparison"], task): row for task, task_rows in declared.items() for row in task_rows}
    readings = declared_readings(declared, metrics, seeds)
    if not readings:
        return []

    def named(task: str) -> str:
        return task + UNCONVERGED_MARK * (task in unconverged)

    def cell(comparison: str, kind: str) -> str:
        tasks = [task for task, _ in readings[comparison].get(kind, [])]
        if kind == "waiting":
            return ", ".join(map(named, tasks)) or "–"
        return ", ".join(f"{named(task)} ({rows[comparison, task]['delta']:+.3f}, "
                         f"{_ci(rows[comparison, task]['ci95'])})" for task in tasks) or "–"
    order = [f"{m} vs {r}" for m, r in DECLARED]
    lines = [f"Verdict: each declared comparison on the tasks where both methods have all {seeds} final seeds. "
             "Δ is the mean paired difference (method − reference) in the task's metric, with its 95 % CI over "
             f"seeds. Better/worse: Holm p < {SIGNIFICANCE} within the task's declared family; equivalent: the "
             f"{TOST_LEVEL * 100:.0f} % intervals inside the margin declared in the preset ({_margins_text(metrics)}); "
             "otherwise inconclusive, which is not evidence of no difference.", "",
             "| comparison | better (Δ, 95 % CI) | worse (Δ, 95 % CI) | equivalent within the margin (Δ, 95 % CI) | "
             "inconclusive (Δ, 95 % CI) | waiting for finals |", "|---|---|---|---|---|---|"]
    for name in sorted(readings, key=order.index):
        lines.append(f"| {name} | " + " | ".join(cell(name, kind) for kind in (*READING_COLUMNS, "waiting")) + " |")
    marked = [task for task in declared if task in unconverged]
    if not marked:
        return [*lines, ""]
    return [*lines, "", f"{UNCONVERGED_MARK} Not converged: tuned `lora`'s validation loss still fell more than "
            f"{CONVERGED_FALL:.0%} over the last quarter of training on {listed(marked)} (under each task below).", ""]


def verdict_lines(declared: list[dict], seeds: int, higher: bool = True) -> list[str]:
    """One line per pre-declared comparison of a task: Δ with its 95 % intervals (over seeds; over seeds and
    test examples where the task has them), the Holm p within the declared family, and the reading in words,
    or what it waits for (``higher``: whether a larger value of the task's metric is better)."""
    lines = []
    for row in declared:
        if row["n"] < seeds:
            lines.append(f"- {row['comparison']}: waiting for the final runs ({row['n']} of {seeds} paired seeds).")
            continue
        two_level = "" if row.get("ci95_two_level") is None else \
            f"; {_ci(row['ci95_two_level'])} over seeds and test examples"
        p = "p undefined (the same difference on every seed)" if row.get("why") == UNDEFINED else \
            f"Holm p {_p(row['p_holm'])}"
        lines.append(f"- {row['comparison']}: Δ {row['delta']:+.3f} (95 % CI {_ci(row['ci95'])} over seeds{two_level}), "
                     f"{p}: {words(row, higher)}.")
    tested = sum(row["p"] is not None for row in declared)
    if declared and tested < len(DECLARED):
        lines.append(f"- Holm's correction is over the {tested} of the {len(DECLARED)} declared comparisons with a p "
                     "so far: a Holm p can only grow as the others arrive.")
    return lines


def readme_block(results: dict) -> str:
    """The README's compact view of the tuned results (``results.json``'s content): per task, each
    method's chosen learning rate, test mean ± std over its final seeds, the paired difference from
    ``lora`` and its p adjusted over all methods; above them the verdict on the declared comparisons —
    regenerated from the committed file, never typed."""
    summary = results["summary"]
    runs = results["runs"]
    final_seeds = len(protocols("tuned")[0].final_seeds)  # a declared comparison is read once both have them all
    lines = ["",
             f"{len(runs)} runs counted so far, {summary['cpu_hours']:.1f} CPU hours "
             f"([`results/tuned/results.md`](results/tuned/results.md) has every column).", "",
             *overview_lines(results.get("declared", {}), {n: t["metric"] for n, t in summary["tasks"].items()},
                             final_seeds, tuple(n for n, t in summary["tasks"].items() if t.get("converged") is False))]
    for name, task in summary["tasks"].items():
        majority = f", majority class {task['majority']:.3f}" if task["majority"] is not None else ""
        lines += [f"**{name}** ({task['model']}, test {task['metric']}{majority})", "", *not_converged_lines(task),
                  "| method | chosen lr | test (mean ± std) | seeds | Δ vs lora | p vs lora, adj. over all methods |",
                  "|---|---|---|---|---|---|"]
        base = task["methods"].get(BASELINE, {}).get("test", {})
        for method, entry in task["methods"].items():
            test = entry["test"]
            if entry["chosen_lr"] is None:
                done = sum(1 for r in runs if r["task"] == name and r["method"] == method)
                lines.append(f"| {method} | tuning ({done} run{'' if done == 1 else 's'}) | | | | |")
                continue
            diff = mean_difference(test, base)
            delta = f"{diff:+.3f}" if diff is not None and method != BASELINE else ""
            lines.append(f"| {method} | {entry['chosen_lr']:.3g} | {test['mean']:.3f} ± {test['std']:.3f} | "
                         f"{len(test['values'])} | {delta} | {_p(test['p_adjusted_all_methods'])} |")
        budget = budget_line(name, task, runs)
        lines += ["", *([budget, ""] if budget else []),
                  *verdict_lines(results.get("declared", {}).get(name, []), final_seeds,
                                 higher_is_better(task["metric"])), ""]
    return "\n".join(lines) + "\n"


def budget_line(name: str, task: dict, runs: list[dict]) -> str | None:
    """Whether the budget let ``lora`` level off: its validation curve at the chosen rate, the mean over its
    final seeds at every logged step (None until it has its finals)."""
    entry = task["methods"].get(BASELINE)
    if not entry or entry["chosen_lr"] is None or not entry["test"]["values"]:
        return None
    chosen = f"{entry['chosen_lr']:.3g}"
    finals = [r for r in runs if r["task"] == name and r["method"] == BASELINE and f"{r['lr']:.3g}" == chosen
              and r["seed"] in entry["test"]["seeds"] and r.get("val_curve")]
    if not finals:
        return None
    curve = mean_val_curve(finals, finals[0]["kind"])
    what = "accuracy" if finals[0]["kind"] == "classification" else "loss"
    return (f"Budget: `lora` at {chosen}, validation {what} (mean of {len(finals)} seeds) at steps "
            f"{', '.join(str(step) for step, _ in curve)}: {', '.join(f'{value:.3f}' for _, value in curve)}.")
