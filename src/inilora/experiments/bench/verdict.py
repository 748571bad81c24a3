"""The tuned benchmark's summary (``summary.json``) from its run records: per task and method the grid,
the learning rate chosen on validation, the test metric of the final seeds, paired tests against
``lora`` with Holm's correction, win rates and convergence; and the pre-declared verdict comparisons.

A run record holds ``method``, ``lr``, ``seed``, ``val`` ({metric, loss}: the validation split at the
end), ``val_curve`` ([step, loss, metric or None] logged during training) and ``test`` ({metric, loss}).
"""

from __future__ import annotations

import math
import statistics

from .schedule import Protocol, stage
from .tuning import curve_auc, higher_is_better, holm, mean_curve, score_of, steps_to_reach, val_score, win_rate

BASELINE = "lora"
# the comparisons that carry the verdict, fixed before any tuned run was read: (method, reference), by benchmark
# row name (inilora names its solver there; the published fit inilora:adam is compared the same way)
DECLARED = (("inilora:svd", "lora"), ("inilora:svd", "pissa"), ("inilora:adam", "lora"), ("inilora:adam", "pissa"),
            ("inilora-alpha", "lora"), ("inilora-beta", "lora"))


def paired_p(method: dict[int, float], reference: dict[int, float]) -> float | None:
    """Two-sided paired t-test over the seeds both have (None with fewer than 2; a constant non-zero
    difference is p = 0, no difference at all p = 1)."""
    seeds = sorted(set(method) & set(reference))
    if len(seeds) < 2:
        return None
    diffs = [method[s] - reference[s] for s in seeds]
    if all(d == diffs[0] for d in diffs):
        return 1.0 if diffs[0] == 0 else 0.0
    from scipy import stats

    return float(stats.ttest_rel([method[s] for s in seeds], [reference[s] for s in seeds]).pvalue)


BOOTSTRAP_RESAMPLES = 10_000


def paired_bootstrap_p(method: dict[int, list[bool]], reference: dict[int, list[bool]],
                       resamples: int = BOOTSTRAP_RESAMPLES) -> float | None:
    """Item-level two-sided p of the mean accuracy difference over the seeds both have, by a paired
    bootstrap over test examples (the same resampled examples for every seed; fixed seed): how often a
    resample's difference moves from the observed one by at least the observed one. It measures what the
    seed-level t-test does not — the finite test set — and complements it. None without a common seed."""
    import numpy as np

    seeds = sorted(set(method) & set(reference))
    if not seeds:
        return None
    per_example = np.mean([np.asarray(method[s], float) - np.asarray(reference[s], float) for s in seeds], axis=0)
    observed = float(per_example.mean())
    if not per_example.any():
        return 1.0
    rng = np.random.default_rng(0)
    means = np.array([per_example[rng.integers(0, len(per_example), len(per_example))].mean()
                      for _ in range(resamples)])
    return float((np.sum(np.abs(means - observed) >= abs(observed)) + 1) / (resamples + 1))


def _finals(runs: list[dict], protocol: Protocol, metric: str | None) -> tuple[list[float], float | None,
                                                                             dict[str, float], list[dict]]:
    """(grid, chosen lr, mean validation ``metric`` per lr over the tuning seeds — what the choice reads, so the
    final seeds at the chosen lr do not make it look better or worse than its neighbours — the final runs at
    the chosen lr)."""
    finished = {(r["lr"], r["seed"]): val_score(r, metric) for r in runs}
    now = stage(protocol, finished)
    by_lr: dict[str, list[float]] = {}
    for r in runs:
        if r["seed"] in protocol.tune_seeds:
            by_lr.setdefault(f"{r['lr']:.3g}", []).append(score_of(r["val"], metric))
    val_by_lr = {lr: statistics.fmean(v) for lr, v in sorted(by_lr.items(), key=lambda kv: float(kv[0]))}
    if now.chosen_lr is None:
        return list(now.grid), None, val_by_lr, []
    chosen = f"{now.chosen_lr:.3g}"
    finals = [r for r in runs if f"{r['lr']:.3g}" == chosen and r["seed"] in protocol.final_seeds]
    return list(now.grid), now.chosen_lr, val_by_lr, sorted(finals, key=lambda r: r["seed"])


def _curve(run: dict, kind: str) -> list[tuple[int, float]]:
    """The convergence curve: validation accuracy for classification, validation loss for generation."""
    column = 2 if kind == "classification" else 1
    return [(int(p[0]), float(p[column])) for p in run.get("val_curve", []) if p[column] is not None]


def mean_val_curve(runs: list[dict], kind: str) -> list[tuple[int, float]]:
    """The convergence curve averaged over ``runs`` (validation accuracy, or loss for generation)."""
    return mean_curve([dict(_curve(r, kind)) for r in runs])


def mean_difference(test: dict, reference: dict) -> float | None:
    """The mean paired difference of two ``summary.json`` test entries over the seeds both have."""
    own, ref = dict(zip(test["seeds"], test["values"])), dict(zip(reference.get("seeds", []),
                                                                  reference.get("values", [])))
    seeds = sorted(set(own) & set(ref))
    return statistics.fmean(own[s] - ref[s] for s in seeds) if seeds else None


def summarize_task(runs: list[dict], protocols: dict[str, Protocol], kind: str,
                   metric: str | None = None) -> dict[str, dict]:
    """Per method of one task: the entry of ``summary.json``'s ``methods``, compared on ``metric`` (None: the
    task's own, which the run records hold as ``metric``; ``"eval_loss"``: the held-out loss, lower is better)."""
    higher = kind == "classification"  # the convergence curve: validation accuracy, or validation loss
    methods: dict[str, dict] = {}
    finals: dict[str, list[dict]] = {}
    for method, protocol in protocols.items():
        grid, chosen, val_by_lr, final_runs = _finals([r for r in runs if r["method"] == method], protocol, metric)
        finals[method] = final_runs
        values = [score_of(r["test"], metric) for r in final_runs]
        aucs = [curve_auc([(int(c[0]), float(c[1])) for c in r["val_curve"]]) for r in final_runs]
        methods[method] = {
            "lr_grid": grid, "chosen_lr": chosen, "val_by_lr": val_by_lr,
            "test": {"mean": statistics.fmean(values) if values else float("nan"),
                     "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else float("nan"),
                     "seeds": [r["seed"] for r in final_runs], "values": values,
                     "p_vs_lora": None, "p_holm": None, "win_rate_vs_lora": None},
            "steps_to_lora_final": None,
            "val_loss_auc": statistics.fmean(aucs) if aucs else float("nan"),
        }
    # a method is tested against lora once both have all their final seeds: an interim p would join (and
    # shift) the Holm family of the complete comparisons
    complete = {m: len(finals[m]) == len(p.final_seeds) for m, p in protocols.items()}
    base = {r["seed"]: score_of(r["test"], metric) for r in finals.get(BASELINE, [])}
    base_curve = mean_val_curve(finals.get(BASELINE, []), kind)
    raw = {}
    for method, entry in methods.items():
        if method == BASELINE or not base:
            continue
        own = dict(zip(entry["test"]["seeds"], entry["test"]["values"]))
        raw[method] = paired_p(own, base) if complete[method] and complete.get(BASELINE) else None
        entry["test"]["p_vs_lora"] = raw[method]
        entry["test"]["win_rate_vs_lora"] = win_rate(own, base, higher_is_better=higher_is_better(metric))
        if base_curve and finals[method]:
            entry["steps_to_lora_final"] = steps_to_reach(mean_val_curve(finals[method], kind), base_curve[-1][1],
                                                          higher_is_better=higher)
    for method, p in holm(raw).items():
        methods[method]["test"]["p_holm"] = p
    return methods


def declared_verdict(methods: dict[str, dict], hits: dict[str, dict[int, list[bool]]] | None = None,
                     seeds: int = 0, carried: list[dict] | None = None) -> list[dict]:
    """The pre-declared comparisons of one task, paired over seeds, Holm-corrected within the family; with
    ``hits`` (per method and final seed, whether each test example was right), also the item-level paired
    bootstrap p (:func:`paired_bootstrap_p`), Holm-corrected the same way. A comparison with fewer than
    ``seeds`` paired seeds gets no p and stays out of the family until its final runs are in. ``carried``:
    an earlier report's rows, whose item-level p stands in (marked ``p_items_carried``) where ``hits`` are
    missing and the seed-level comparison (seeds paired, mean difference, p) is exactly the same."""
    hits = hits or {}
    earlier = {row["comparison"]: row for row in carried or ()}
    rows, raw, items = [], {}, {}
    for method, reference in DECLARED:
        if method not in methods or reference not in methods:
            continue
        a, b = methods[method]["test"], methods[reference]["test"]
        own, ref = dict(zip(a["seeds"], a["values"])), dict(zip(b["seeds"], b["values"]))
        diff = mean_difference(a, b)
        name = f"{method} vs {reference}"
        paired = len(set(own) & set(ref))
        raw[name] = paired_p(own, ref) if paired >= seeds else None
        row = {"comparison": name, "diff_mean": math.nan if diff is None else diff, "n": paired, "p": raw[name]}
        if method in hits and reference in hits and paired >= seeds:
            items[name] = paired_bootstrap_p(hits[method], hits[reference])
        elif _same_comparison(earlier.get(name), row) and earlier[name].get("p_items") is not None:
            items[name], row["p_items_carried"] = earlier[name]["p_items"], True
        rows.append({**row, "p_items": items.get(name)})
    adjusted, adjusted_items = holm(raw), holm(items)
    for row in rows:
        row["p_holm"] = adjusted[row["comparison"]]
        row["p_items_holm"] = adjusted_items.get(row["comparison"])
    return rows


def _same_comparison(earlier: dict | None, row: dict) -> bool:
    """Whether an earlier report's row compared the same final values: same paired seeds, mean difference
    and p (null where a figure was missing)."""
    if earlier is None or earlier.get("n") != row["n"] or row["p"] is None or earlier.get("p") != row["p"]:
        return False
    diff = row["diff_mean"]
    return earlier.get("diff_mean") == (None if math.isnan(diff) else diff)
