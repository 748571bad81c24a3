"""Statistics over finished runs: mean ± std over seeds per method and task, and the paired
comparison with ``lora`` (same seed: same data order, same head) by a paired t-test."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import inilora

from ..train.config import BASE, REFERENCES
from .plan import CLOSED_FORM, row_name

PRIMARY = {"classification": "accuracy", "generation": "exact_match"}
BASELINE = "lora"


def load_runs(out: str | os.PathLike) -> list[dict]:
    """Every finished run record, its method named as rows are now (an older bare ``inilora``: ``inilora:svd``)."""
    runs = []
    for path in sorted(Path(out).glob("runs/*/*/seed*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # a file being written by another process
        runs.append({**record, "method": row_name(record["method"])} if "method" in record else record)
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_test(method: dict[int, float], baseline: dict[int, float], higher_is_better: bool = True) -> dict:
    """Paired comparison over the seeds both have: mean difference, its std, a paired t-test and a
    verdict (``better``/``worse`` when p < 0.05, else ``within seed noise``)."""
    seeds = sorted(set(method) & set(baseline))
    diffs = [method[s] - baseline[s] for s in seeds]
    result = {"n": len(seeds), "diff_mean": float("nan"), "diff_std": float("nan"), "p": float("nan"),
              "verdict": "n/a"}
    if not diffs:
        return result
    result["diff_mean"], result["diff_std"] = _mean_std(diffs)
    if len(diffs) < 2:
        result["verdict"] = "too few seeds"
        return result
    if all(d == diffs[0] for d in diffs):
        # no spread at all: the t statistic is undefined; a constant non-zero shift is still a difference
        result["p"] = 1.0 if diffs[0] == 0 else 0.0
    else:
        from scipy import stats

        result["p"] = float(stats.ttest_rel([method[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    good = result["diff_mean"] > 0 if higher_is_better else result["diff_mean"] < 0
    result["verdict"] = ("better" if good else "worse") if result["p"] < 0.05 else "within seed noise"
    return result


def summarize(runs: list[dict]) -> dict:
    """Per task and method: mean ± std of each metric over seeds and the paired test against lora."""
    tasks: dict[str, dict] = {}
    for run in sorted(runs, key=lambda r: r.get("started", 0)):  # tasks in the order they were first run
        task = tasks.setdefault(run["task"], {"kind": run["kind"], "model": run["model"], "methods": {},
                                              "n_train": run["n_train"], "n_eval": run["n_eval"],
                                              "config": run["config"], "majority": run.get("majority")})
        task["methods"].setdefault(run["method"], []).append(run)
    summary = {}
    for name, task in tasks.items():
        metrics = [PRIMARY[task["kind"]], "eval_loss"]
        rows = {}
        baseline = task["methods"].get(BASELINE, [])
        for method in method_order(task["methods"]):
            method_runs = task["methods"][method]
            row = {"seeds": sorted(r["seed"] for r in method_runs),
                   "seconds": _mean_std([r["seconds"] for r in method_runs])[0]}
            for metric in metrics:
                values = {r["seed"]: r["metrics"][metric] for r in method_runs if metric in r["metrics"]}
                row[metric] = _mean_std(list(values.values()))
                row.setdefault("values", {})[metric] = values
                if method not in (BASELINE, BASE):  # the untrained model is not compared
                    base_values = {r["seed"]: r["metrics"][metric] for r in baseline if metric in r["metrics"]}
                    row[f"{metric}_vs_lora"] = paired_test(values, base_values, higher_is_better=metric != "eval_loss")
            rows[method] = row
        starts: dict[tuple, list[str]] = {}
        for method in rows:
            digests = tuple(sorted((r["seed"], r.get("init", {}).get("digest")) for r in task["methods"][method]))
            if all(d for _, d in digests):
                starts.setdefault(digests, []).append(method)
        task["same_start"] = [methods for methods in starts.values() if len(methods) > 1]
        summary[name] = {k: v for k, v in task.items() if k != "methods"} | {"metrics": metrics, "rows": rows}
    return summary


def method_order(methods) -> list[str]:
    """Registry order, each method's closed form (``inilora:svd``) then its other solvers (``inilora:adam``),
    references last."""
    order = [*inilora.METHODS, *REFERENCES]

    def position(name: str) -> tuple[int, bool, str]:
        method, _, solver = name.partition(":")
        return (order.index(method) if method in order else len(order), solver not in ("", CLOSED_FORM), solver)
    return sorted(methods, key=position)
