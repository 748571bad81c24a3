"""The tuned benchmark's outputs, rebuilt from its counted runs: ``summary.json`` (the shape issue 13
fixes, so a script can check it), ``results.json`` (every run, without its per-example predictions),
``results.md`` (per task: grid, chosen rate, test mean ± std, paired and Holm-corrected p against
``lora``, win rate, convergence; then the pre-declared comparisons) and three plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..._io import write_json_atomic
from ..tasks import example_hits
from ..train.config import FULL
from .schedule import Protocol
from .tuning import higher_is_better, mean_curve
from .verdict import BASELINE, DECLARED, declared_verdict, mean_difference, mean_val_curve, summarize_task

VALIDATION_NOTE = ("Learning rates are chosen on a validation split carved from each task's training part "
                   "(tasks.carve_validation: 20 %, at most 400 examples, fixed seed); the test split is read only "
                   "to report the chosen runs.")


def _finite(value):
    """JSON has no NaN: a missing figure is null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def cpu_seconds_of(run: dict) -> float:
    """The CPU time a run took: measured (``cpu_seconds``), or for runs recorded before it was, wall time ×
    threads — an upper bound on a shared machine."""
    return run["cpu_seconds"] if run.get("cpu_seconds") is not None else run["seconds"] * run.get("threads", 1)


def final_hits(task, runs: list[dict], entries: dict[str, dict]) -> dict[str, dict[int, list[bool]]]:
    """Per method and final seed, whether each test example was right (from the runs' stored predictions;
    a method with a final run lacking them is left out)."""
    hits: dict[str, dict[int, list[bool]]] = {}
    for method, entry in entries.items():
        chosen, seeds = entry["chosen_lr"], set(entry["test"]["seeds"])
        finals = [r for r in runs if r["method"] == method and chosen is not None
                  and f"{r['lr']:.3g}" == f"{chosen:.3g}" and r["seed"] in seeds]
        if finals and all(r.get("predictions") for r in finals):
            hits[method] = {r["seed"]: example_hits(task.kind, task.eval, r["predictions"]) for r in finals}
    return hits


def summarize(suites, methods, adapter: Protocol, full: Protocol, ledger, command: str,
              previous: dict | None = None, out: Path | None = None) -> tuple[dict, dict]:
    """(``summary.json``'s content, per task the declared comparisons: kept apart, in results.json).
    With ``out``, each loadable task's test answers are saved under it (:mod:`.answers`); a task whose data
    cannot be loaded here is scored from those, if they belong to the data its runs recorded. Failing that,
    it is summarized from its runs' records (kind, majority class), and its item-level p values are carried
    over from ``previous`` (the last report's declared comparisons) where the seed-level comparison is
    unchanged, and are missing otherwise."""
    from ...errors import DataError
    from . import answers
    from .tuned import rows_of

    tasks, declared, cpu_seconds = {}, {}, 0.0
    for suite in suites:
        rows = [m for m in rows_of(suite, methods) if ledger.records[suite.name, m]]
        runs = [r for m in rows for r in ledger.records[suite.name, m]]
        cpu_seconds += sum(cpu_seconds_of(r) for r in runs)
        if not rows:
            continue
        digest = ledger.digests.get(suite.name)
        try:
            task = answers.AnswerKey.of_task(suite.load()[0], digest)
            if out is not None:
                answers.save(out, suite.name, task)
        except DataError:
            task = answers.load(out, suite.name, digest) if out is not None else None
        kind, majority = (task.kind, task.majority) if task else (runs[0]["kind"], runs[0]["majority"])
        chosen: dict[str, Protocol] = {m: full if m == FULL else adapter for m in rows}
        metric = suite.metric or ("accuracy" if kind == "classification" else "exact_match")
        entries = summarize_task(runs, chosen, kind, suite.metric)
        tasks[suite.name] = {"model": suite.model, "metric": metric, "majority": majority, "methods": entries}
        # the item-level test needs per-example right/wrong: the task's own metric, not a loss
        hits = final_hits(task, runs, entries) if suite.metric is None and task is not None else None
        carried = (previous or {}).get(suite.name) if task is None else None
        declared[suite.name] = declared_verdict(entries, hits, seeds=len(adapter.final_seeds), carried=carried)
    return {"command": command, "cpu_hours": round(cpu_seconds / 3600, 3), "tasks": _finite(tasks)}, declared


def _p(value) -> str:
    return "–" if value is None else f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def markdown(summary: dict, declared: dict, counts: dict) -> str:
    lines = ["# Tuned benchmark: every method at its own learning rate", "", VALIDATION_NOTE, "",
             f"Command: `{summary['command']}`; CPU time of the counted runs: {summary['cpu_hours']:.2f} h.", ""]
    for name, task in summary["tasks"].items():
        majority = f"; majority class {task['majority']:.3f}" if task["majority"] is not None else ""
        lines += [f"## {name} — {task['model']}, test {task['metric']}{majority}", "",
                  f"| method | runs | lr grid | chosen lr | val {task['metric']} at chosen | test {task['metric']} "
                  "(mean ± std, seeds) | Δ vs lora | p (paired t) | p (Holm) | wins vs lora | "
                  "steps to lora's final val | val-loss AUC |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for method, entry in task["methods"].items():
            test = entry["test"]
            values = test["values"]
            diff = mean_difference(test, task["methods"].get(BASELINE, {}).get("test", {}))
            chosen = entry["chosen_lr"]
            val = entry["val_by_lr"].get(f"{chosen:.3g}") if chosen is not None else None
            lines.append(
                f"| {method} | {counts.get((name, method), 0)} | {', '.join(f'{lr:.3g}' for lr in entry['lr_grid'])} | "
                f"{'tuning' if chosen is None else f'{chosen:.3g}'} | {'–' if val is None else f'{val:.3f}'} | "
                + (f"{test['mean']:.3f} ± {test['std']:.3f} ({len(values)})" if values else "–") + " | "
                + (f"{diff:+.3f}" if diff is not None and method != BASELINE else "") + " | "
                f"{_p(test['p_vs_lora'])} | {_p(test['p_holm'])} | "
                + ("–" if test["win_rate_vs_lora"] is None else f"{test['win_rate_vs_lora']:.2f}") + " | "
                + ("not reached" if entry["steps_to_lora_final"] is None and method != BASELINE and values
                   else "" if entry["steps_to_lora_final"] is None else str(entry["steps_to_lora_final"])) + " | "
                + ("–" if entry["val_loss_auc"] is None else f"{entry['val_loss_auc']:.3f}") + " |")
        if declared.get(name):
            lines += ["", "Pre-declared comparisons (paired over seeds: t-test; paired over test examples: "
                      "bootstrap, 10,000 resamples; each Holm-corrected over this family):", "",
                      "| comparison | seeds | Δ mean | p (seeds) | p (seeds, Holm) | p (items) | p (items, Holm) |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {row['comparison']} | {row['n']} | "
                      + ("–" if row["diff_mean"] is None or math.isnan(row["diff_mean"]) else f"{row['diff_mean']:+.3f}")
                      + f" | {_p(row['p'])} | "
                      f"{_p(row['p_holm'])} | {_p(row.get('p_items'))} | {_p(row.get('p_items_holm'))} |"
                      for row in declared[name]]
            if any(row.get("p_items_carried") for row in declared[name]):
                lines += ["", "This task's data could not be loaded when this report was made: its item-level p "
                          "values are those of the previous report, whose seed-level comparisons were the same."]
        lines.append("")
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- tuned-results:begin (generated by benchmarks/readme_tables.py) -->", \
    "<!-- tuned-results:end -->"


SIGNIFICANCE = 0.05


def reading_of(row: dict, higher: bool) -> str:
    """"better", "worse" or "no difference after correction": a declared comparison read on its Holm p over
    seeds (``higher``: whether a larger value of the task's metric is better)."""
    if row["p_holm"] is None or row["p_holm"] >= SIGNIFICANCE:
        return "no difference after correction"
    return "better" if (row["diff_mean"] > 0) == higher else "worse"


def declared_readings(declared: dict[str, list[dict]], metrics: dict[str, str],
                      seeds: int) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """Per declared comparison, per reading (:func:`reading_of`, or "waiting" for final seeds), the tasks read
    so, each with its mean paired difference, in the order of ``declared``."""
    readings: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for task, rows in declared.items():
        for row in rows:
            kind = "waiting" if row["n"] < seeds else reading_of(row, higher_is_better(metrics[task]))
            readings.setdefault(row["comparison"], {}).setdefault(kind, []).append((task, row["diff_mean"]))
    return readings


def overview_lines(declared: dict[str, list[dict]], metrics: dict[str, str], seeds: int) -> list[str]:
    """The verdict across tasks: per declared comparison, the tasks where it reads better, no different or
    worse (with the mean paired difference), and those still waiting for final seeds."""
    columns = ("better", "no difference after correction", "worse")
    cells = {comparison: {kind: [task if kind in ("waiting", columns[1]) else f"{task} ({diff:+.3f})"
                                 for task, diff in tasks] for kind, tasks in kinds.items()}
             for comparison, kinds in declared_readings(declared, metrics, seeds).items()}
    if not cells:
        return []
    order = [f"{m} vs {r}" for m, r in DECLARED]
    lines = [f"Verdict so far: each declared comparison on the tasks where both methods have all {seeds} final "
             f"seeds, read on its Holm p over seeds (< {SIGNIFICANCE}); Δ is the mean paired difference in the "
             "task's metric.", "",
             "| comparison | better (Δ) | no difference | worse (Δ) | waiting for finals |", "|---|---|---|---|---|"]
    for name in sorted(cells, key=order.index):
        lines.append(f"| {name} | " + " | ".join(", ".join(cells[name].get(kind, [])) or "–"
                                                for kind in (*columns, "waiting")) + " |")
    return [*lines, ""]


def verdict_lines(declared: list[dict], seeds: int, higher: bool = True) -> list[str]:
    """One line per pre-declared comparison of a task: the paired difference and whether it survives
    Holm's correction within the declared family (over seeds, and over test examples), or what it waits for
    (``higher``: whether a larger value of the task's metric is better)."""
    lines = []
    for row in declared:
        if row["n"] < seeds:
            lines.append(f"- {row['comparison']}: waiting for the final runs ({row['n']} of {seeds} paired seeds).")
            continue
        reading = reading_of(row, higher)
        items = "" if row.get("p_items_holm") is None else f", {_p(row['p_items_holm'])} over test examples"
        lines.append(f"- {row['comparison']}: {row['diff_mean']:+.3f} (Holm p {_p(row['p_holm'])} over seeds{items}): "
                     f"{reading}.")
    tested = sum(row["p"] is not None for row in declared)
    if declared and tested < len(DECLARED):
        lines.append(f"- Holm's correction is over the {tested} of the {len(DECLARED)} declared comparisons with a p "
                     "so far: a Holm p can only grow as the others arrive.")
    return lines


def readme_block(results: dict) -> str:
    """The README's compact view of the tuned results (``results.json``'s content): per task, each
    method's chosen learning rate, test mean ± std over its final seeds, the paired difference from
    ``lora`` and its Holm-corrected p — regenerated from the committed file, never typed."""
    from .tuned import protocols

    summary = results["summary"]
    runs = results["runs"]
    final_seeds = len(protocols("tuned")[0].final_seeds)  # a declared comparison is read once both have them all
    lines = [README_BEGIN, "",
             f"{len(runs)} runs counted so far, {summary['cpu_hours']:.1f} CPU hours "
             f"([`results/tuned/results.md`](results/tuned/results.md) has every column).", "",
             *overview_lines(results.get("declared", {}), {n: t["metric"] for n, t in summary["tasks"].items()},
                             final_seeds)]
    for name, task in summary["tasks"].items():
        majority = f", majority class {task['majority']:.3f}" if task["majority"] is not None else ""
        lines += [f"**{name}** ({task['model']}, test {task['metric']}{majority})", "",
                  "| method | chosen lr | test (mean ± std) | seeds | Δ vs lora | p vs lora (Holm) |",
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
                         f"{len(test['values'])} | {delta} | {_p(test['p_holm'])} |")
        budget = budget_line(name, task, runs)
        lines += ["", *([budget, ""] if budget else []),
                  *verdict_lines(results.get("declared", {}).get(name, []), final_seeds,
                                 higher_is_better(task["metric"])), ""]
    lines.append(README_END)
    return "\n".join(lines)


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


def _panels(names: list[str], draw, path: Path) -> Path:
    """One figure, a panel per task (``draw(ax, name)``), saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        draw(ax, name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(summary: dict, ledger_records: dict, out: Path) -> list[Path]:
    """tuning_curves.png (validation metric vs learning rate), test_metrics.png (test mean ± std at the
    chosen rate), val_loss_curves.png (validation loss during training, final runs, mean over seeds)."""
    tasks = summary["tasks"]

    def tuning(ax, name):
        task = tasks[name]
        for method, entry in task["methods"].items():
            points = sorted((float(lr), v) for lr, v in entry["val_by_lr"].items() if v is not None)
            if points:
                line, = ax.plot(*zip(*points), marker="o", label=method)
                if entry["chosen_lr"] is not None:
                    ax.plot([entry["chosen_lr"]], [entry["val_by_lr"][f"{entry['chosen_lr']:.3g}"]], marker="*",
                            markersize=14, color=line.get_color())
        ax.set_xscale("log")
        ax.set(title=f"{name}: validation {task['metric']} vs learning rate (★ chosen)", xlabel="learning rate",
               ylabel=f"validation {task['metric']} (mean over tuning seeds)")

    def test_metric(ax, name):
        task = tasks[name]
        methods = [m for m, e in task["methods"].items() if e["test"]["values"]]
        means = [task["methods"][m]["test"]["mean"] for m in methods]
        stds = [task["methods"][m]["test"]["std"] for m in methods]
        ax.bar(range(len(methods)), means, yerr=stds, capsize=4,
               color=["tab:gray" if m == BASELINE else "tab:blue" for m in methods])
        if task["majority"] is not None:
            ax.axhline(task["majority"], color="black", linestyle=":", label="majority class")
        if means:
            ax.set_ylim(max(0.0, min(means) - 0.05), min(1.0, max(means) + 0.05))
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set(title=f"{name}: test {task['metric']} at the chosen lr (mean ± std)", ylabel=task["metric"])

    def val_loss(ax, name):
        for method, entry in tasks[name]["methods"].items():
            if entry["chosen_lr"] is None:
                continue
            chosen = f"{entry['chosen_lr']:.3g}"
            curve = mean_curve([{int(p[0]): p[1] for p in r["val_curve"]} for r in ledger_records[name, method]
                                if f"{r['lr']:.3g}" == chosen and r["val_curve"]])
            if curve:
                ax.plot(*zip(*curve), label=method)
        ax.set(title=f"{name}: validation loss at the chosen lr", xlabel="step", ylabel="validation loss")

    names = list(tasks)
    if not names:
        return []
    return [_panels(names, draw, out / file) for draw, file in
            ((tuning, "tuning_curves.png"), (test_metric, "test_metrics.png"), (val_loss, "val_loss_curves.png"))]


def write_report(out: Path, suites, methods, adapter: Protocol, full: Protocol, ledger, command: str,
                 make_plots: bool = True) -> dict:
    """Write summary.json, results.json, results.md and the plots under ``out``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "results.json").read_text()).get("declared") if (out / "results.json").is_file() \
        else None
    summary, declared = summarize(suites, methods, adapter, full, ledger, command, previous, out)
    write_json_atomic(out / "summary.json", summary)
    runs = [{k: v for k, v in r.items() if k != "predictions"} for records in ledger.records.values() for r in records]
    write_json_atomic(out / "results.json", _finite({"summary": summary, "declared": declared, "runs": runs}))
    counts = {key: len(records) for key, records in ledger.records.items()}
    (out / "results.md").write_text(markdown(summary, declared, counts))
    files = plots(summary, {(s, m): r for (s, m), r in ledger.records.items()}, out) if make_plots else []
    for stale in {"tuning_curves.png", "test_metrics.png", "val_loss_curves.png"} - {f.name for f in files}:
        (out / stale).unlink(missing_ok=True)  # an earlier report's plots
    return {**summary, "declared": declared, "files": [str(f) for f in files]}
