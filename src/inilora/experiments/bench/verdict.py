"""The tuned benchmark's summary (``summary.json``) from its run records: per task and method the grid,
the learning rate chosen on validation, the test metric of the final seeds, paired tests against
``lora`` (with a step-down adjustment over every method compared with it: ``p_adjusted_all_methods``), win
rates and convergence; and the pre-declared verdict comparisons, the one family Holm's correction is
applied to and named for.

A run record holds ``method``, ``lr``, ``seed``, ``val`` ({metric, loss}: the validation split at the
end), ``val_curve`` ([step, loss, metric or None] logged during training) and ``test`` ({metric, loss}).
"""

from __future__ import annotations

import math
import statistics

from .schedule import Protocol, stage
from .stats import (TOST_LEVEL, UNDEFINED, paired_t_p, paired_values, percentile_interval,
                    read_comparison, t_interval, two_level_bootstrap)
from .tuning import curve_auc, higher_is_better, holm, mean_curve, score_of, steps_to_reach, val_score, win_rate

BASELINE = "lora"


def declared_family(preset: str = "tuned") -> tuple[tuple[tuple[str, str], ...], dict[str, float]]:
    """(the comparisons that carry the verdict, as (method, reference) benchmark row names; the equivalence
    margin per metric) from a preset's ``[declared]`` table."""
    from .plan import _read_preset_file

    table = _read_preset_file(preset)["declared"]
    comparisons = tuple(tuple(c.split(" vs ")) for c in table["comparisons"])
    if any(len(c) != 2 for c in comparisons):
        raise ValueError(f"[declared] comparisons are 'method vs reference': {table['comparisons']}")
    return comparisons, dict(table["margins"])


# fixed before any tuned run was read (the margins: before the runs of issue 30; see the preset)
DECLARED, MARGINS = declared_family()


def paired_p(method: dict[int, float], reference: dict[int, float]) -> float | None:
    """Two-sided paired t-test over the seeds both have: None with fewer than 2 seeds, and None (undefined,
    not 0 or 1) when every seed gives the same difference — a t statistic needs spread."""
    return paired_t_p(paired_values(method, reference))


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
                     "p_vs_lora": None, "p_adjusted_all_methods": None, "win_rate_vs_lora": None},
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
    for method, p in holm(raw).items():  # the same arithmetic as Holm's, over another family: named apart
        methods[method]["test"]["p_adjusted_all_methods"] = p
    return methods


LEVEL = 0.95


def _rounded(interval) -> list[float] | None:
    return None if interval is None else [float(interval[0]), float(interval[1])]


def declared_verdict(methods: dict[str, dict], per_example: dict[str, dict[int, list[float]]] | None = None,
                     families: list | None = None, seeds: int = 0, margin: float = 0.0, higher: bool = True,
                     carried: list[dict] | None = None) -> list[dict]:
    """The pre-declared comparisons of one task (:data:`DECLARED`), each paired over the seeds both methods
    have: ``delta`` (mean difference, method − reference), ``ci95`` (t interval over seeds), ``p`` (paired
    t-test; None where undefined, with ``why``), ``p_holm`` (Holm within this family only), the ``margin``
    and the ``reading`` (:func:`~.stats.read_comparison`: better/worse on the Holm p, equivalent when the 90 %
    intervals lie inside ±margin, else inconclusive).

    ``per_example``: per method and final seed, each test example's value (1/0 for right/wrong): adds the
    two-level bootstrap intervals (``ci95_two_level``, ``ci90_two_level``) resampling seeds and examples,
    whole ``families`` of examples where given (each example's family id). A comparison with fewer than
    ``seeds`` paired seeds gets no p, stays out of the family and reads inconclusive. ``carried``: an earlier
    report's rows, whose two-level intervals stand in (marked ``two_level_carried``) where ``per_example``
    is missing and the seed-level comparison (seeds paired, delta, p) is exactly the same. ``higher``:
    whether a larger value of the task's metric is better."""
    per_example = per_example or {}
    earlier = {row["comparison"]: row for row in carried or ()}
    rows, raw = [], {}
    for method, reference in DECLARED:
        if method not in methods or reference not in methods:
            continue
        a, b = methods[method]["test"], methods[reference]["test"]
        own, ref = dict(zip(a["seeds"], a["values"])), dict(zip(b["seeds"], b["values"]))
        diffs = paired_values(own, ref)
        name = f"{method} vs {reference}"
        row = {"comparison": name, "n": len(diffs), "delta": statistics.fmean(diffs) if diffs else math.nan,
               "ci95": _rounded(t_interval(diffs, LEVEL)), "ci90": _rounded(t_interval(diffs, TOST_LEVEL)),
               "ci95_two_level": None, "ci90_two_level": None, "margin": margin, "p": None}
        complete = len(diffs) >= max(seeds, 2)
        if complete:
            row["p"] = paired_t_p(diffs)
            raw[name] = 1.0 if row["p"] is None else row["p"]  # undefined: kept in the family, at its largest
        if complete and method in per_example and reference in per_example:
            common = sorted(set(per_example[method]) & set(per_example[reference]) & set(own) & set(ref))
            draws = two_level_bootstrap({s: [x - y for x, y in zip(per_example[method][s], per_example[reference][s])]
                                         for s in common}, families)
            row["ci95_two_level"] = _rounded(percentile_interval(draws, LEVEL))
            row["ci90_two_level"] = _rounded(percentile_interval(draws, TOST_LEVEL))
        elif complete and _same_comparison(earlier.get(name), row) and earlier[name].get("ci95_two_level"):
            for key in ("ci95_two_level", "ci90_two_level"):
                row[key] = earlier[name].get(key)
            row["two_level_carried"] = True
        rows.append(row)
    adjusted = holm(raw)
    for row in rows:
        name = row["comparison"]
        row["p_holm"] = adjusted.get(name) if row["p"] is not None else None
        row["reading"], why = reading_of_row(row, seeds, higher)
        if why:
            row["why"] = why
    return rows


def reading_of_row(row: dict, seeds: int, higher: bool) -> tuple[str, str | None]:
    """(the reading of one declared row from its own figures, why it is inconclusive when no figure can say
    more). Equivalence reads the 90 % t interval over seeds and, where the row has it, the two-level one:
    both must lie inside ±margin."""
    if row["n"] < max(seeds, 2):
        return "inconclusive", f"waiting for the final runs ({row['n']} of {max(seeds, 2)} paired seeds)"
    if row["p"] is None:
        return "inconclusive", UNDEFINED
    return read_comparison(row["delta"], row["p_holm"], row["margin"], (row["ci90"], row.get("ci90_two_level")),
                           higher), None


def _same_comparison(earlier: dict | None, row: dict) -> bool:
    """Whether an earlier report's row compared the same final values: same paired seeds, mean difference
    and p (None where undefined)."""
    if earlier is None or earlier.get("n") != row["n"] or earlier.get("p") != row["p"]:
        return False
    return earlier.get("delta") == row["delta"]
