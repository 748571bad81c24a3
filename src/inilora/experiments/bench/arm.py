"""What the report of an arm of the tuned preset (``[arm.NAME]``, ``--preset tuned-NAME``; the 4-bit arm of
issue 36) adds to the tuned benchmark's: each start's 4-bit error ratio (recorded by every run at its
initialization), each method's gap to the full-precision reference row read from the tuned results folder
beside the arm's, and the scatter of error ratio against the test difference to QLoRA."""

from __future__ import annotations

import statistics
from pathlib import Path

from .stats import paired_values, t_interval
from .tuning import higher_is_better
from .verdict import BASELINE, summarize_task


def reference_folder(arm: dict, out: Path) -> Path:
    """The full-precision tuned results an arm's rows are measured against: the folder beside ``out``."""
    return out.parent / arm["reference"]["folder"]


def error_ratios(runs: list[dict], entry: dict) -> dict:
    """A method's 4-bit error ratio over its final seeds (``init.quant_ratio`` of each final run: start error
    over QLoRA's on the same weights, the mean over the targeted matrices); ``mean`` None until it has one."""
    chosen, seeds = entry["chosen_lr"], entry["test"]["seeds"]
    by_seed = {r["seed"]: (r.get("init") or {}).get("quant_ratio") for r in runs
               if chosen is not None and f"{r['lr']:.3g}" == f"{chosen:.3g}" and r["seed"] in seeds}
    values = [by_seed[s] for s in seeds if by_seed.get(s) is not None]
    return {"mean": statistics.fmean(values) if values else None,
            "seeds": [s for s in seeds if by_seed.get(s) is not None], "values": values}


def reference_entry(arm: dict, folder: Path, runs: list[dict] | None, protocol, kind: str,
                    metric: str | None) -> dict:
    """The reference row of one task (its chosen rate's final seeds, :func:`~.verdict.summarize_task` on its
    counted runs in ``folder``), or why it is missing."""
    method = arm["reference"]["method"]
    head = {"method": method, "precision": "full", "folder": str(folder)}
    if not runs:
        return {**head, "missing": f"no counted full-precision {method} run of this task in {folder} (same data, "
                                   "budget and package versions)"}
    entry = summarize_task(runs, {method: protocol}, kind, metric)[method]
    if len(entry["test"]["values"]) < len(protocol.final_seeds):
        return {**head, "chosen_lr": entry["chosen_lr"], "test": entry["test"],
                "missing": f"{method} has {len(entry['test']['values'])} of its {len(protocol.final_seeds)} final "
                           f"seeds in {folder}"}
    return {**head, "chosen_lr": entry["chosen_lr"], "test": entry["test"]}


def gap(test: dict, reference: dict) -> dict | None:
    """A method's paired difference from the reference row (method − reference, by seed): ``delta``, its 95 %
    t interval over seeds, ``n`` seeds. None while the reference is missing or no seed pairs."""
    if "missing" in reference:
        return None
    diffs = paired_values(dict(zip(test["seeds"], test["values"])),
                          dict(zip(reference["test"]["seeds"], reference["test"]["values"])))
    if not diffs:
        return None
    interval = t_interval(diffs)
    return {"delta": statistics.fmean(diffs), "ci95": None if interval is None else list(interval), "n": len(diffs)}


def add_to_task(task: dict, runs: list[dict], arm: dict, reference: dict) -> dict:
    """One task of summary.json with the arm's figures: per method ``error_ratio`` and ``gap_to_reference``,
    and the task's ``reference`` row (or why it is missing)."""
    methods = {}
    for method, entry in task["methods"].items():
        own = [r for r in runs if r["method"] == method]
        methods[method] = {**entry, "error_ratio": error_ratios(own, entry),
                           "gap_to_reference": gap(entry["test"], reference)}
    return {**task, "methods": methods, "reference": reference}


def scatter_points(summary: dict) -> list[dict]:
    """One point per task × final seed × method other than QLoRA (``lora`` on the arm's 4-bit residual, at
    (1, 0) by definition): the start's error ratio and the test metric minus QLoRA's on the same seed."""
    points = []
    for name, task in summary["tasks"].items():
        base = task["methods"].get(BASELINE, {}).get("test", {})
        base = dict(zip(base.get("seeds", []), base.get("values", [])))
        for method, entry in task["methods"].items():
            ratios = dict(zip(entry["error_ratio"]["seeds"], entry["error_ratio"]["values"]))
            values = dict(zip(entry["test"]["seeds"], entry["test"]["values"]))
            if method == BASELINE:
                continue
            points += [{"task": name, "method": method, "seed": seed, "metric": task["metric"],
                        "error_ratio": ratios[seed], "diff": values[seed] - base[seed]}
                       for seed in sorted(set(ratios) & set(values) & set(base))]
    return points


SCATTER = "error_ratio_vs_test.png"


def scatter(summary: dict, path: Path) -> Path | None:
    """The error ratio (x) against the test difference to QLoRA (y): a colour and ring size per method, a marker
    per task (None when no method has paired final runs yet)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = scatter_points(summary)
    if not points:
        return None
    methods = list(dict.fromkeys(p["method"] for p in points))
    tasks = list(dict.fromkeys(p["task"] for p in points))
    markers = "osD^v<>"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, method in enumerate(methods):
        for j, task in enumerate(tasks):
            mine = [p for p in points if p["method"] == method and p["task"] == task]
            if mine:
                # rings of growing size: methods that share a start (inilora:svd and pissa: the same product)
                # land on the same points, and each ring stays visible around the others
                ax.scatter([p["error_ratio"] for p in mine], [p["diff"] for p in mine], facecolors="none",
                           edgecolors=f"C{i}", s=30 + 35 * i, linewidths=1.5, marker=markers[j % len(markers)],
                           label=f"{method} · {task}")
    ax.scatter([1.0], [0.0], color="black", marker="x", label="QLoRA (1, 0) by definition")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.axvline(1, color="gray", linewidth=0.8, linestyle=":")
    metrics = ", ".join(dict.fromkeys(f"{p['metric']} ({'higher' if higher_is_better(p['metric']) else 'lower'} "
                                      "is better)" for p in points))
    ax.set(xlabel="4-bit error ratio of the start (QLoRA = 1)",
           ylabel=f"test {metrics}\nminus QLoRA's, same seed")
    ax.set_title("Start error vs fine-tuned result: one point per task × seed × method", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
