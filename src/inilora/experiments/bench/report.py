"""The benchmark's outputs: a Markdown table, PNG plots (loss curves, final metrics) and
``results.json``, rebuilt from the finished runs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..._io import write_json_atomic
from ..train.config import REFERENCES
from .stats import BASELINE, load_runs, method_order, summarize
from .tuning import mean_curve


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _fmt_seeds(mean: float, std: float, seeds: int, digits: int = 3) -> str:
    """``mean ± std`` over several seeds; one seed has no spread to show, so its value alone."""
    return _fmt(mean, std, digits) if seeds != 1 or math.isnan(mean) else f"{mean:.{digits}f} (one seed)"


def _fmt_test(test: dict | None, digits: int = 3) -> str:
    if not test or test["n"] == 0:
        return ""
    if test["verdict"] == "undefined":
        return f"{test['diff_mean']:+.{digits}f}, p undefined (same difference on every seed)"
    if math.isnan(test["p"]):
        return f"{test['diff_mean']:+.{digits}f} ({test['verdict']})"
    return f"{test['diff_mean']:+.{digits}f}, p={_pvalue(test['p'])} ({test['verdict']})"


def _pvalue(p: float) -> str:
    """Two decimals, or two significant digits below 0.01: a small p never prints as 0.00."""
    return f"{p:.2f}" if p >= 0.01 else f"{p:.1e}"


def markdown(summary: dict) -> str:
    lines = []
    for name, task in summary.items():
        primary = task["metrics"][0]
        lines += [f"### {name} — {task['model']}, {task['n_train']} training / {task['n_eval']} held-out examples", "",
                  f"| method | seeds | {primary} ↑ | Δ vs lora (paired) | held-out loss ↓ | Δ vs lora (paired) | s/run |",
                  "|---|---|---|---|---|---|---|"]
        for method, row in task["rows"].items():
            n = len(row["seeds"])
            lines.append(f"| {method} | {n} | {_fmt_seeds(*row[primary], n)} | "
                         f"{_fmt_test(row.get(f'{primary}_vs_lora'))} | {_fmt_seeds(*row['eval_loss'], n)} | "
                         f"{_fmt_test(row.get('eval_loss_vs_lora'))} | {row['seconds']:.0f} |")
        if task.get("same_start"):
            lines.append("")
        for methods in task.get("same_start", []):
            lines.append(f"Note: {' and '.join(f'`{m}`' for m in methods)} started from identical factors on every "
                         "seed (same digest of A0, B0), so their runs are the same.")
        lines.append("")
    lines.append("Mean ± sample std over seeds. Δ: mean paired difference from `lora` (same seed: same data order, "
                 "same classifier head); p: two-sided paired t-test over seeds; a difference counts as better/worse "
                 "only at p < 0.05, otherwise it is within seed noise; one seed gives no spread and no p, and the "
                 "same difference on every seed leaves the t-test undefined. `full`: full fine-tuning; `base`: the model "
                 "as loaded, not trained.")
    return "\n".join(lines) + "\n"


LEARNED = 0.02  # lora counts as having learned a task when it ends more than this above the majority class


def _where(value: float, majority: float) -> str:
    """Where ``value`` stands against the majority class, in words that match the printed figures: "at" only
    when both print the same (3 decimals)."""
    if f"{value:.3f}" == f"{majority:.3f}":
        return f"at the majority class ({majority:.3f})"
    if value < majority:
        return f"below the majority class ({majority:.3f})"
    return f"less than {LEARNED * 100:.0f} points above the majority class ({majority:.3f})"


def reading(summary: dict) -> str:
    """A few plain sentences under the table: whether ``lora`` learned at all (against the majority class),
    and for each method what differs from ``lora`` and whether it is within seed noise."""
    lines = []
    for name, task in summary.items():
        primary = task["metrics"][0]
        rows = task["rows"]
        lora = rows.get(BASELINE)
        if lora is None or math.isnan(lora[primary][0]):
            continue
        mean, std = lora[primary]
        shown = _fmt_seeds(mean, std, len(lora["seeds"]))
        majority = task.get("majority")
        if majority is not None:
            values = lora.get("values", {}).get(primary, {})
            stuck = sorted(seed for seed, value in values.items() if value <= majority + LEARNED)
            if not stuck:
                learned = (f"{(mean - majority) * 100:+.1f} points over the majority class ({majority:.3f}) on "
                           f"{'its one seed' if len(values) == 1 else 'every seed'}")
            elif len(stuck) < len(values):
                learned = (f"above the majority class ({majority:.3f}) on {len(values) - len(stuck)} of {len(values)} "
                           f"seeds; seed(s) {', '.join(f'{s} ({values[s]:.3f})' for s in stuck)} ended no more than "
                           f"{LEARNED * 100:.0f} points above it: this "
                           "budget or learning rate is unstable for lora")
            else:
                learned = f"{_where(mean, majority)}: this budget is too small to compare initializations"
            lines.append(f"{name}: lora reaches {primary} {shown}, {learned}.")
        else:
            lines.append(f"{name}: lora reaches {primary} {shown}.")
        for method, row in rows.items():
            test = row.get(f"{primary}_vs_lora")
            if not test or test["n"] == 0:
                continue
            if test["verdict"] == "too few seeds":
                lines.append(f"  {method}: {test['diff_mean']:+.3f} vs lora on one seed (too few to judge).")
                continue
            if test["verdict"] == "undefined":
                lines.append(f"  {method}: {test['diff_mean']:+.3f} {primary} vs lora on every one of {test['n']} seeds "
                             "(p undefined: the same difference on every seed leaves the t-test no spread to "
                             "measure; more seeds or a larger test set are needed to judge).")
                continue
            if test["verdict"] == "within seed noise":
                verdict = "within seed noise"
            else:
                verdict = f"{test['verdict']} than lora"
            lines.append(f"  {method}: {test['diff_mean']:+.3f} {primary} vs lora (paired over {test['n']} seeds, "
                         f"p = {_pvalue(test['p'])}): {verdict}.")
    if lines:
        lines.append("Uncorrected paired t-tests over few seeds: a first look, not a verdict (the tuned preset, "
                     "with learning rates chosen on validation and Holm's correction, is).")
    return "\n".join(lines) + ("\n" if lines else "")


def plots(runs: list[dict], summary: dict, out: Path) -> list[Path]:
    """Training-loss curves per method (mean over seeds) and the final metric per method with error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = list(summary)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        by_method: dict[str, list] = {}
        for run in runs:
            if run["task"] == name and run["loss_history"]:
                by_method.setdefault(run["method"], []).append(dict(map(tuple, run["loss_history"])))
        for method in method_order(by_method):
            curve = mean_curve(by_method[method])
            if curve:
                ax.plot(*zip(*curve), label=method)
        ax.set(title=f"{name}: training loss (mean over seeds)", xlabel="step", ylabel="loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "loss_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # top row: each task's own metric; bottom row: held-out loss (the informative one where the metric is flat)
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 8), squeeze=False)
    for column, name in enumerate(names):
        task = summary[name]
        methods = list(task["rows"])
        colors = ["tab:gray" if m == BASELINE else "tab:orange" if m in REFERENCES else "tab:blue"
                  for m in methods]
        for ax, metric in zip(axes[:, column], (task["metrics"][0], "eval_loss")):
            means = [task["rows"][m][metric][0] for m in methods]
            stds = [task["rows"][m][metric][1] for m in methods]
            ax.bar(range(len(methods)), means, yerr=stds, capsize=4, color=colors)
            ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
            finite = [m for m in means if not math.isnan(m)]
            if finite and metric == "accuracy":
                ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05))
            label = "held-out loss" if metric == "eval_loss" else metric
            ax.set(title=f"{name}: {label} (mean ± std over seeds)", ylabel=label)
    fig.tight_layout()
    written.append(out / "final_metrics.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def aggregate(out: str | os.PathLike, make_plots: bool = True) -> dict:
    """Read every run under ``out``; write ``results.json``, ``results.md`` and the PNG plots."""
    out = Path(out)
    runs = load_runs(out)
    summary = summarize(runs)
    table = markdown(summary) if summary else "No finished runs.\n"
    out.mkdir(parents=True, exist_ok=True)
    invocations = json.loads((out / "invocations.json").read_text()) if (out / "invocations.json").is_file() else []
    write_json_atomic(out / "results.json", {"summary": summary, "runs": runs, "invocations": invocations})
    (out / "results.md").write_text(table)
    files = plots(runs, summary, out) if make_plots and summary else []
    for stale in {"loss_curves.png", "final_metrics.png"} - {f.name for f in files}:  # an earlier report's plots
        (out / stale).unlink(missing_ok=True)
    return {"summary": summary, "table": table, "reading": reading(summary), "files": [str(f) for f in files],
            "runs": len(runs)}
