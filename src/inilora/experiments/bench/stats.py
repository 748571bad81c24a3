"""Statistics over finished runs: mean ± std over seeds per method and task, and the paired
comparison with ``lora`` (same seed: same data order, same head) by a paired t-test.

The paired primitives the tuned benchmark's declared comparisons read are here too: the mean paired difference
with its t interval over seeds, the paired t-test (undefined, not 0, when every seed gives the same
difference), a two-level bootstrap interval that resamples seeds and test examples (whole families of
examples where a task has them), and the reading of a comparison from those figures."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Hashable, Sequence

import inilora

from ..train.config import BASE, REFERENCES
from .plan import CLOSED_FORM, row_name

PRIMARY = {"classification": "accuracy", "generation": "exact_match"}
BASELINE = "lora"
SIGNIFICANCE = 0.05  # a corrected p below it reads "better" or "worse"
TOST_LEVEL = 0.90  # equivalence: this interval inside ±margin (two one-sided tests at 5 % each)
BOOTSTRAP_RESAMPLES = 10_000
READINGS = ("better", "worse", "equivalent", "inconclusive")
UNDEFINED = ("undefined: every seed gives the same difference, so the paired t-test has no spread to "
             "measure")


def paired_values(method: dict[int, float], reference: dict[int, float]) -> list[float]:
    """The paired differences ``method − reference`` over the seeds both have, in seed order."""
    return [method[s] - reference[s] for s in sorted(set(method) & set(reference))]


def zero_spread(diffs: Sequence[float]) -> bool:
    """Whether every paired difference is the same, to floating-point rounding (a t statistic is then
    undefined: 0.80 − 0.70 and 0.81 − 0.71 differ in their last bits)."""
    return len(diffs) > 1 and all(math.isclose(d, diffs[0], rel_tol=1e-9, abs_tol=1e-12) for d in diffs)


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` t interval of the mean of ``diffs`` (None with fewer than 2; a single point when every
    difference is the same)."""
    if len(diffs) < 2:
        return None
    mean = statistics.fmean(diffs)
    if zero_spread(diffs):
        return mean, mean
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean - half, mean + half


def paired_t_p(diffs: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test on ``diffs``; None with fewer than 2 or when every difference is the
    same (the test is undefined there: see :data:`UNDEFINED`)."""
    if len(diffs) < 2 or zero_spread(diffs):
        return None
    from scipy import stats

    return float(stats.ttest_1samp(list(diffs), 0.0).pvalue)


def two_level_bootstrap(per_seed: dict[int, Sequence[float]], families: Sequence[Hashable] | None = None,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0):
    """Bootstrap draws of the mean paired difference over seeds and test examples: each draw resamples the
    seeds with replacement and, independently, the test examples with replacement — whole families of
    examples when ``families`` gives each example's family id — the same examples for every seed (each seed
    was scored on the same test set). ``per_seed``: per seed, the per-example differences (method −
    reference), all of one length. A draw is the mean over its seeds of the mean over its examples."""
    import numpy as np

    seeds = sorted(per_seed)
    diffs = np.asarray([np.asarray(per_seed[s], float) for s in seeds])  # seeds × examples
    ids = list(range(diffs.shape[1])) if families is None else list(families)
    if len(ids) != diffs.shape[1]:
        raise ValueError(f"{len(ids)} family ids for {diffs.shape[1]} examples")
    index = {f: k for k, f in enumerate(dict.fromkeys(ids))}
    member = np.asarray([index[f] for f in ids])
    sums = np.zeros((len(seeds), len(index)))  # seeds × families: the summed differences of each family
    np.add.at(sums, (slice(None), member), diffs)
    sizes = np.bincount(member, minlength=len(index)).astype(float)
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, 1000):
        count = min(1000, resamples - start)
        taken = rng.multinomial(len(index), np.full(len(index), 1 / len(index)), size=count)  # draws × families
        chosen = rng.multinomial(len(seeds), np.full(len(seeds), 1 / len(seeds)), size=count)  # draws × seeds
        per_seed_mean = (taken @ sums.T) / (taken @ sizes)[:, None]  # draws × seeds
        draws.append((chosen * per_seed_mean).sum(axis=1) / len(seeds))
    return np.concatenate(draws)


def percentile_interval(draws, level: float = 0.95) -> tuple[float, float]:
    import numpy as np

    low, high = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


def read_comparison(delta: float, p_corrected: float | None, margin: float, intervals: Sequence[tuple | None],
                    higher_is_better: bool = True) -> str:
    """"better"/"worse" when the corrected p is below :data:`SIGNIFICANCE` (the direction from ``delta`` and
    the metric), "equivalent" (within ±``margin``) when every one of the :data:`TOST_LEVEL` ``intervals``
    that exists lies inside ±margin and at least one exists, otherwise "inconclusive"."""
    if p_corrected is not None and p_corrected < SIGNIFICANCE:
        return "better" if (delta > 0) == higher_is_better else "worse"
    known = [ci for ci in intervals if ci is not None]
    if known and all(-margin < lo and hi < margin for lo, hi in known):
        return "equivalent"
    return "inconclusive"


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
    verdict: ``better``/``worse`` when p < 0.05, ``within seed noise`` otherwise, ``too few seeds`` with one
    seed (no p), ``undefined`` when every seed gives the same difference (no p: a t-test needs spread)."""
    diffs = paired_values(method, baseline)
    result = {"n": len(diffs), "diff_mean": float("nan"), "diff_std": float("nan"), "p": float("nan"),
              "verdict": "n/a"}
    if not diffs:
        return result
    result["diff_mean"], result["diff_std"] = _mean_std(diffs)
    if len(diffs) < 2:
        result["verdict"] = "too few seeds"
        return result
    p = paired_t_p(diffs)
    if p is None:
        result["verdict"] = "undefined"
        return result
    result["p"] = p
    good = result["diff_mean"] > 0 if higher_is_better else result["diff_mean"] < 0
    result["verdict"] = ("better" if good else "worse") if p < SIGNIFICANCE else "within seed noise"
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
