"""The README's view of the untuned benchmark (``inilora bench --preset full``, committed as
``results/full/results.json``): one table over the tasks, rendered from the file's summary."""

from __future__ import annotations

from _common import MODEL_NAMES

from inilora.experiments.bench.plan import row_name
from inilora.experiments.bench.report import _fmt
from inilora.experiments.bench.stats import method_order

COLUMNS = (("reviews", "accuracy"), ("chain_sum", "exact_match"), ("chain_sum", "eval_loss"),
           ("gsm_symbolic", "eval_loss"))  # gsm_symbolic's exact match is 0 throughout: said in the reading instead
METRIC_NAMES = {"accuracy": "accuracy", "exact_match": "exact match", "eval_loss": "held-out loss"}
ROW_NAMES = {"inilora:svd": "inilora (closed form)", "inilora:adam": "inilora:adam (published fit)",
             "full": "full fine-tuning", "base": "untrained"}


def rows(summary: dict) -> dict[str, dict]:
    """Per task, its rows under today's names (an older bare ``inilora`` is ``inilora:svd``)."""
    return {task: {row_name(method): row for method, row in entry["rows"].items()} for task, entry in summary.items()}


def _cell(row: dict | None, metric: str) -> str:
    if row is None:
        return "–"
    if len(row["seeds"]) == 1:  # the untrained model is evaluated once: no spread to show
        return f"{row[metric][0]:.3f}"
    text = _fmt(*row[metric])
    return f"**{text}**" if row.get(f"{metric}_vs_lora", {}).get("verdict") == "better" else text


def table(results: dict) -> str:
    """What the benchmark ran, then mean ± std per method and task (bold: better than lora, paired t-test p < 0.05,
    the direction of each metric as the summary's verdict has it)."""
    summary, by_task = results["summary"], rows(results["summary"])
    runs, invocations = results["runs"], results["invocations"]
    seeds = sorted({run["seed"] for run in runs})
    cpus = "/".join(str(n) for n in sorted({invocation["cpus"] for invocation in invocations}))
    lines = [f"Full benchmark (`{invocations[0]['command']}`, {len(runs)} runs on {cpus} shared CPU "
             "cores; `inilora`",
             'fitted with the closed form `solver="svd"` in its default adam-like factorization, `inilora:adam` with the',
             f"published 20,000-step Adam fit). Mean ± std over seeds {seeds[0]}–{seeds[-1]}; **bold**: better than "
             "`lora` by a paired",
             "t-test, p < 0.05. Budgets, learning rates and how they were scaled from the published scripts:",
             "[`results/README.md`](results/README.md).", ""]
    header, shown = [], None
    for task, metric in COLUMNS:
        model = summary[task]["model"]
        header.append(f"{task} {METRIC_NAMES[metric]}" + (f" ({MODEL_NAMES[model]})" if model != shown else ""))
        shown = model
    lines += ["| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(COLUMNS)]
    for method in method_order({m for task in by_task.values() for m in task}):
        cells = [_cell(by_task[task].get(method), metric) for task, metric in COLUMNS]
        lines.append(f"| {ROW_NAMES.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
