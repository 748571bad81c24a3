"""The tuned benchmark's outputs, rebuilt from its counted runs: ``summary.json`` (the shape issue 13
fixes, so a script can check it), ``results.json`` (every run, without its per-example predictions),
``results.md`` (per task: grid, chosen rate, test mean ± std, paired p against ``lora`` and its adjustment
over all methods, win rate, convergence; then the pre-declared comparisons with their intervals, Holm p and
reading) and three plots. The words the README and the advice use for a declared comparison come from here
(:func:`reading_of`), and refuse to render where the row's figures contradict them."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..._io import write_json_atomic
from ..tasks import example_hits
from ..train.config import FULL
from . import arm as arms
from .schedule import Protocol
from .tuned_preset import arm as arm_of, rows_of
from .tuning import CONVERGED_FALL, budget_check, higher_is_better, mean_curve
from .stats import SIGNIFICANCE, TOST_LEVEL, UNDEFINED
from .verdict import BASELINE, declared_family, declared_verdict, mean_difference, reading_of_row, summarize_task

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
              previous: dict | None = None, out: Path | None = None, preset: str = "tuned",
              reference: dict[str, list[dict]] | None = None) -> tuple[dict, dict]:
    """(``summary.json``'s content, per task the declared comparisons: kept apart, in results.json).
    With ``out``, each loadable task's test answers are saved under it (:mod:`.answers`); a task whose data
    cannot be loaded here is scored from those, if they belong to the data its runs recorded. Failing that,
    it is summarized from its runs' records (kind, majority class), and its two-level intervals are carried
    over from ``previous`` (the last report's declared comparisons) where the seed-level comparison is
    unchanged, and are missing otherwise.

    Each task's entry holds ``declared``: its declared comparisons (:func:`~.verdict.declared_verdict`) in the
    shape of issue 30 (comparison, delta, ci95, ci95_two_level, margin, p, p_holm, reading): the family
    ``preset`` declares. An arm of the tuned preset (``tuned-4bit``) adds its figures (:func:`.arm.add_to_task`),
    its reference row read from ``reference`` (per task, the reference method's counted runs; ``out`` needed)."""
    from ...errors import DataError
    from . import answers

    comparisons, margins = declared_family(preset)
    arm = arm_of(preset)
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
        # the two-level bootstrap needs each example's value: right/wrong for the task's own metric; the runs
        # record no per-example loss, so a task compared on its loss has the interval over seeds alone
        hits = final_hits(task, runs, entries) if suite.metric is None and task is not None else None
        carried = (previous or {}).get(suite.name) if task is None else None
        declared[suite.name] = declared_verdict(
            entries, hits, families=task.families if task is not None else None, seeds=len(adapter.final_seeds),
            margin=margins[metric], higher=higher_is_better(suite.metric), carried=carried, comparisons=comparisons)
        tasks[suite.name] = {"model": suite.model, "metric": metric, "majority": majority, "methods": entries,
                             **budget_check(ledger.records.get((suite.name, BASELINE), []), entries.get(BASELINE)),
                             "declared": [declared_entry(row) for row in declared[suite.name]]}
        if arm is not None:
            row = arms.reference_entry(arm, arms.reference_folder(arm, out), (reference or {}).get(suite.name),
                                       adapter, kind, suite.metric)
            tasks[suite.name] = arms.add_to_task(tasks[suite.name], runs, arm, row)
    summary = {"command": command, "cpu_hours": round(cpu_seconds / 3600, 3)}
    if arm is not None:
        summary["arm"] = {"preset": preset, "quantize": arm.get("quantize"), "methods": arm["methods"],
                          "declared": arm["declared"], "reference": arm["reference"]}
    return {**summary, "tasks": _finite(tasks)}, declared


def declared_entry(row: dict) -> dict:
    """A declared comparison as summary.json holds it (issue 30's shape; ``why`` where it is inconclusive for
    want of a figure)."""
    keys = ("comparison", "delta", "ci95", "ci95_two_level", "margin", "p", "p_holm", "reading")
    return {key: row[key] for key in keys} | ({"why": row["why"]} if row.get("why") else {})


def not_converged_lines(task: dict) -> list[str]:
    """A task's note that tuned ``lora`` had not levelled off by the end of its budget (none when it had)."""
    if task.get("converged") is not False:
        return []
    return [f"Not converged: `{BASELINE}`'s validation loss still fell {task['val_loss_fall_last_quarter']:.1%} over "
            f"the last quarter of training (more than {CONVERGED_FALL:.0%}).", ""]


def _p(value) -> str:
    return "–" if value is None else f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def markdown(summary: dict, declared: dict, counts: dict) -> str:
    arm = summary.get("arm")
    title = "# Tuned benchmark: every method at its own learning rate" + (
        f" — arm {arm['preset']}: every adapter method on an {arm['quantize']} residual (`lora` is QLoRA)" if arm else "")
    lines = [title, "", VALIDATION_NOTE, "",
             f"Command: `{summary['command']}`; CPU time of the counted runs: {summary['cpu_hours']:.2f} h.", ""]
    for name, task in summary["tasks"].items():
        majority = f"; majority class {task['majority']:.3f}" if task["majority"] is not None else ""
        lines += [f"## {name} — {task['model']}, test {task['metric']}{majority}", "", *not_converged_lines(task),
                  f"| method | runs | lr grid | chosen lr | val {task['metric']} at chosen | test {task['metric']} "
                  "(mean ± std, seeds) | Δ vs lora | p (paired t) | p adj. over all methods | wins vs lora | "
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
                f"{_p(test['p_vs_lora'])} | {_p(test['p_adjusted_all_methods'])} | "
                + ("–" if test["win_rate_vs_lora"] is None else f"{test['win_rate_vs_lora']:.2f}") + " | "
                + ("not reached" if entry["steps_to_lora_final"] is None and method != BASELINE and values
                   else "" if entry["steps_to_lora_final"] is None else str(entry["steps_to_lora_final"])) + " | "
                + ("–" if entry["val_loss_auc"] is None else f"{entry['val_loss_auc']:.3f}") + " |")
        if declared.get(name):
            lines += ["", *declared_table(declared[name], task["metric"])]
        if arm:
            lines += ["", *arm_table(task)]
        lines.append("")
    lines += ["", ALL_METHODS_NOTE, ""]
    return "\n".join(lines)


ALL_METHODS_NOTE = ("\"p adj. over all methods\": every method's paired p against `lora` adjusted step-down over all "
                    "the methods of its task — an exploratory figure; the verdict reads only the declared comparisons "
                    "under each task and their Holm p, corrected within that family.")


def arm_table(task: dict) -> list[str]:
    """An arm's figures for one task: each method's error ratio and its gap to the full-precision reference."""
    reference = task["reference"]
    where = f"`{reference['method']}` in full precision, from {reference['folder']}"
    lines = [f"Start and reference: the 4-bit error ratio of each start (its error over QLoRA's on the same weights, "
             f"mean over the targeted matrices; final seeds) and the gap to {where} (method − reference, paired by "
             "seed, 95 % CI over seeds)" + (f". Reference missing: {reference['missing']}." if "missing" in reference
                                             else f" at its chosen rate {reference['chosen_lr']:.3g}."),
             "", "| method | error ratio | gap to the reference | seeds |", "|---|---|---|---|"]
    for method, entry in task["methods"].items():
        ratio, gap = entry["error_ratio"]["mean"], entry["gap_to_reference"]
        lines.append(f"| {method} | {'–' if ratio is None else f'{ratio:.4f}'} | "
                     + ("–" if gap is None else f"{gap['delta']:+.3f} ({_ci(gap['ci95'])})") + " | "
                     + ("–" if gap is None else str(gap["n"])) + " |")
    return lines


def _ci(interval) -> str:
    return "–" if interval is None else f"{interval[0]:+.3f} to {interval[1]:+.3f}"


def declared_table(rows: list[dict], metric: str) -> list[str]:
    """The declared comparisons of one task, as results.md shows them: Δ, both 95 % intervals, the margin, the
    paired t p, its Holm p within the family, and the reading (checked against the row's figures)."""
    lines = [f"Declared comparisons (Δ = method − reference in test {metric}, paired by seed; 95 % CI over seeds: "
             "t; over seeds × examples: two-level bootstrap, 10,000 resamples, whole example families where the task "
             "has them; Holm within this family of declared comparisons; reading: better/worse at Holm p < "
             f"{SIGNIFICANCE}, equivalent when the {TOST_LEVEL * 100:.0f} % intervals lie inside ±margin, else inconclusive):",
             "", "| comparison | seeds | Δ | 95 % CI (seeds) | 95 % CI (seeds × examples) | margin | p (paired t) | "
             "p (Holm) | reading |", "|---|---|---|---|---|---|---|---|---|"]
    higher = higher_is_better(metric)
    for row in rows:
        delta = row["delta"]
        lines.append(f"| {row['comparison']} | {row['n']} | {'–' if _missing(delta) else f'{delta:+.3f}'} | "
                     f"{_ci(row['ci95'])} | {_ci(row['ci95_two_level'])}{' (carried)' if row.get('two_level_carried') else ''} | "
                     f"±{row['margin']:g} | {'undefined' if row.get('why') == UNDEFINED else _p(row['p'])} | "
                     f"{_p(row['p_holm'])} | {words(row, higher)} |")
    notes = sorted({row["why"] for row in rows if row.get("why")})
    if any(row.get("two_level_carried") for row in rows):
        notes.append("This task's data could not be loaded when this report was made: its two-level intervals are "
                     "those of the previous report, whose seed-level comparisons were the same.")
    if rows and all(row["ci95_two_level"] is None for row in rows):
        notes.append("No two-level interval: the runs record no per-example value for this metric, or the task's "
                     "test answers are not available here.")
    return [*lines, *(["", *(f"- {note}" for note in notes)] if notes else [])]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def reading_of(row: dict, higher: bool) -> str:
    """The reading of a declared comparison — "better", "worse", "equivalent" (within ±its margin) or
    "inconclusive" — re-derived from the row's own figures (``higher``: whether a larger value of the task's
    metric is better). Refuses (ValueError) a row whose stored reading its figures do not give, and any word
    its figures contradict: better/worse without a Holm p below the threshold or against the sign of Δ,
    equivalent with a 90 % interval reaching the margin."""
    reading, _ = reading_of_row(row, 0, higher)
    if row.get("reading") not in (None, reading):
        raise ValueError(f"{row['comparison']}: the report says {row['reading']!r}, its figures give {reading!r}")
    contradicted = {
        "better": lambda: not (row["p_holm"] < SIGNIFICANCE and (row["delta"] > 0) == higher),
        "worse": lambda: not (row["p_holm"] < SIGNIFICANCE and (row["delta"] > 0) != higher),
        "equivalent": lambda: not all(-row["margin"] < lo and hi < row["margin"]
                                      for lo, hi in filter(None, (row["ci90"], row.get("ci90_two_level")))),
        "inconclusive": lambda: row["p_holm"] is not None and row["p_holm"] < SIGNIFICANCE,
    }
    if contradicted[reading]():
        raise ValueError(f"{row['comparison']}: {reading!r} is contradicted by its figures {row}")
    return reading


def words(row: dict, higher: bool) -> str:
    """The reading as the reports print it: "equivalent within ±m" names its margin."""
    reading = reading_of(row, higher)
    return f"equivalent within ±{row['margin']:g}" if reading == "equivalent" else reading


def declared_readings(declared: dict[str, list[dict]], metrics: dict[str, str],
                      seeds: int) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """Per declared comparison, per reading (:func:`reading_of`, or "waiting" for final seeds), the tasks read
    so, each with its mean paired difference, in the order of ``declared``. A task with no row for a comparison
    (one of its methods has no final run there yet) waits too."""
    comparisons = dict.fromkeys(row["comparison"] for rows in declared.values() for row in rows)
    readings: dict[str, dict[str, list[tuple[str, float]]]] = {comparison: {} for comparison in comparisons}
    for task, rows in declared.items():
        by_name = {row["comparison"]: row for row in rows}
        for comparison in comparisons:
            row = by_name.get(comparison)
            if row is None or row["n"] < seeds:
                readings[comparison].setdefault("waiting", []).append((task, math.nan if row is None else row["delta"]))
            else:
                kind = reading_of(row, higher_is_better(metrics[task]))
                readings[comparison].setdefault(kind, []).append((task, row["delta"]))
    return readings


READING_COLUMNS = ("better", "worse", "equivalent", "inconclusive")


PANEL_COLUMNS = 3  # a figure's panels wrap into rows of this many, so six tasks stay readable at page width


def _panels(names: list[str], draw, path: Path) -> Path:
    """One figure, a panel per task (``draw(ax, name)``), rows of :data:`PANEL_COLUMNS`, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(len(names), PANEL_COLUMNS)
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
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
    from matplotlib.ticker import NullFormatter

    tasks = summary["tasks"]
    # one colour per method in every panel, whichever methods a task has points for yet
    colours = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(m for t in tasks.values() for m in t["methods"]))}

    def tuning(ax, name):
        task = tasks[name]
        for method, entry in task["methods"].items():
            points = sorted((float(lr), v) for lr, v in entry["val_by_lr"].items() if v is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=method, color=colours[method])
                if entry["chosen_lr"] is not None:
                    ax.plot([entry["chosen_lr"]], [entry["val_by_lr"][f"{entry['chosen_lr']:.3g}"]], marker="*",
                            markersize=14, color=colours[method])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a grid within one decade labels its minor ticks, overlapping
        ax.set(title=f"{name}: validation {task['metric']} vs learning rate (★ chosen)", xlabel="learning rate",
               ylabel=f"validation {task['metric']} (mean over tuning seeds)")

    def test_metric(ax, name):
        task = tasks[name]
        methods = [m for m, e in task["methods"].items() if e["test"]["values"]]
        # points, not bars: the axis is cut to the values, and a bar's length from a cut axis would mislead
        for i, method in enumerate(methods):
            test, colour = task["methods"][method]["test"], "tab:gray" if method == BASELINE else "tab:blue"
            ax.scatter([i] * len(test["values"]), test["values"], s=12, color=colour, alpha=0.35,
                       label="one seed" if i == 0 else None)
            ax.errorbar([i], [test["mean"]], yerr=[test["std"] or 0.0], fmt="o", color=colour, capsize=5,
                        markersize=7, label="mean ± std" if i == 0 else None)
        if task["majority"] is not None:
            ax.axhline(task["majority"], color="black", linestyle=":", label="majority class")
        if not methods:
            ax.text(0.5, 0.5, "no final runs yet", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_yticks([])
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_xlim(-0.6, max(len(methods), 1) - 0.4)
        ax.set(title=f"{name}: test {task['metric']} at the chosen lr", ylabel=task["metric"])

    def val_loss(ax, name):
        for method, entry in tasks[name]["methods"].items():
            if entry["chosen_lr"] is None:
                continue
            chosen = f"{entry['chosen_lr']:.3g}"
            curve = mean_curve([{int(p[0]): p[1] for p in r["val_curve"]} for r in ledger_records[name, method]
                                if f"{r['lr']:.3g}" == chosen and r["val_curve"]])
            if curve:
                ax.plot(*zip(*curve), label=method, color=colours[method])
        if not ax.lines:
            ax.text(0.5, 0.5, "no rate chosen yet", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set(title=f"{name}: validation loss at the chosen lr", xlabel="step", ylabel="validation loss")

    names = list(tasks)
    if not names:
        return []
    return [_panels(names, draw, out / file) for draw, file in
            ((tuning, "tuning_curves.png"), (test_metric, "test_metrics.png"), (val_loss, "val_loss_curves.png"))]


def write_report(out: Path, suites, methods, adapter: Protocol, full: Protocol, ledger, command: str,
                 make_plots: bool = True, preset: str = "tuned", reference: dict[str, list[dict]] | None = None) -> dict:
    """Write summary.json, results.json, results.md and the plots under ``out`` (an arm: its scatter too,
    :func:`.arm.scatter`); returns the summary. ``preset``, ``reference``: see :func:`summarize`."""
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "results.json").read_text()).get("declared") if (out / "results.json").is_file() \
        else None
    summary, declared = summarize(suites, methods, adapter, full, ledger, command, previous, out, preset, reference)
    write_json_atomic(out / "summary.json", summary)
    runs = [{k: v for k, v in r.items() if k != "predictions"} for records in ledger.records.values() for r in records]
    write_json_atomic(out / "results.json", _finite({"summary": summary, "declared": declared, "runs": runs}))
    counts = {key: len(records) for key, records in ledger.records.items()}
    (out / "results.md").write_text(markdown(summary, declared, counts))
    files = plots(summary, {(s, m): r for (s, m), r in ledger.records.items()}, out) if make_plots else []
    if make_plots and "arm" in summary:
        files += [path for path in [arms.scatter(summary, out / arms.SCATTER)] if path]
    for stale in {"tuning_curves.png", "test_metrics.png", "val_loss_curves.png", arms.SCATTER} - {f.name for f in files}:
        (out / stale).unlink(missing_ok=True)  # an earlier report's plots
    return {**summary, "declared": declared, "files": [str(f) for f in files]}
