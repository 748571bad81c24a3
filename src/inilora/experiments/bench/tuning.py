"""The tuned protocol's decisions, as pure functions: which learning rate a method gets (chosen on the
validation split only), when a grid must grow, Holm's correction, and the convergence figures."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class ValScore:
    """One tuning run's score on the validation split (never the test split)."""

    metric: float  # the compared metric, oriented so that higher is better (see val_score)
    loss: float  # validation loss, lower is better (breaks ties)


LOSS_METRIC = "eval_loss"  # a suite compared on its held-out loss (lower is better) instead of its task's metric


def higher_is_better(metric: str | None) -> bool:
    """Whether a larger value of ``metric`` is better (a task's own metric: yes; the held-out loss: no)."""
    return metric != LOSS_METRIC


def score_of(part: dict, metric: str | None) -> float:
    """A run's ``val`` or ``test`` entry (``{"metric", "loss"}``) read as ``metric``: the held-out loss for
    :data:`LOSS_METRIC`, else the task's own metric."""
    return part["loss"] if metric == LOSS_METRIC else part["metric"]


def val_score(run: dict, metric: str | None) -> "ValScore":
    """A run's validation score for choosing its learning rate (``ValScore`` is higher-is-better, so a loss
    metric enters negated)."""
    value = score_of(run["val"], metric)
    return ValScore(value if higher_is_better(metric) else -value, run["val"]["loss"])


def geometric_grid(low: float, high: float, points: int) -> list[float]:
    """``points`` learning rates spaced evenly in log scale from ``low`` to ``high``, rounded to 3
    significant digits so they print and key stably."""
    if points < 2 or not 0 < low < high:
        raise ValueError(f"a grid needs points >= 2 and 0 < low < high, got {points}, {low}, {high}")
    ratio = (high / low) ** (1 / (points - 1))
    return [float(f"{low * ratio ** i:.3g}") for i in range(points)]


def grid_ratio(grid: list[float]) -> float:
    """The constant factor between neighbouring grid points."""
    ordered = sorted(grid)
    return ordered[1] / ordered[0]


def mean_score(scores: list[ValScore]) -> ValScore:
    return ValScore(statistics.fmean(s.metric for s in scores), statistics.fmean(s.loss for s in scores))


def choose_lr(val_by_lr: dict[float, list[ValScore]]) -> float:
    """The learning rate with the best mean validation metric over its seeds; ties (equal to 1e-9) go to
    the lower mean validation loss, then to the smaller learning rate."""
    if not val_by_lr:
        raise ValueError("no tuning runs to choose a learning rate from")
    means = {lr: mean_score(scores) for lr, scores in val_by_lr.items() if scores}
    return min(means, key=lambda lr: (-round(means[lr].metric, 9), means[lr].loss, lr))


def extension(grid: list[float], chosen: float, max_extensions: int, extended: int) -> float | None:
    """The learning rate to add when ``chosen`` sits at an edge of ``grid`` (one more step of the same
    ratio in that direction), or None when it is inside or the extension budget is spent."""
    if extended >= max_extensions:
        return None
    ordered = sorted(grid)
    ratio = grid_ratio(ordered)
    if math.isclose(chosen, ordered[-1]):
        return float(f"{ordered[-1] * ratio:.3g}")
    if math.isclose(chosen, ordered[0]):
        return float(f"{ordered[0] / ratio:.3g}")
    return None


def half_steps(grid: list[float], chosen: float) -> list[float]:
    """The rates half a grid step on each side of ``chosen`` (× and ÷ the square root of the grid's mean
    ratio, ``(max/min)^(1/(n-1))``: ×√3.16 on a grid of ×3.16 steps), rounded to 3 significant digits."""
    ordered = sorted(grid)
    half = math.sqrt((ordered[-1] / ordered[0]) ** (1 / (len(ordered) - 1)))
    return [float(f"{chosen / half:.3g}"), float(f"{chosen * half:.3g}")]


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm–Bonferroni adjusted p-values over one family of comparisons (None stays None): the k-th
    smallest of m is multiplied by m − k + 1, kept monotone, capped at 1."""
    tested = sorted((p, name) for name, p in pvalues.items() if p is not None and not math.isnan(p))
    m = len(tested)
    adjusted: dict[str, float | None] = {name: None for name in pvalues}
    running = 0.0
    for k, (p, name) in enumerate(tested):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[name] = running
    return adjusted


def win_rate(method: dict[int, float], baseline: dict[int, float], higher_is_better: bool = True) -> float | None:
    """Share of the seeds both have where ``method`` beats ``baseline`` (ties count half)."""
    seeds = sorted(set(method) & set(baseline))
    if not seeds:
        return None
    sign = 1 if higher_is_better else -1
    wins = sum(1.0 if sign * (method[s] - baseline[s]) > 0 else 0.5 if method[s] == baseline[s] else 0.0
               for s in seeds)
    return wins / len(seeds)


def mean_curve(curves: list[dict[int, float]]) -> list[tuple[int, float]]:
    """(step, mean value) over the steps every curve (``{step: value}``) logged."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return [(s, statistics.fmean(c[s] for c in curves)) for s in steps]


CONVERGED_FALL = 0.05  # a validation loss that still falls by more than this share over the last quarter: not converged


def last_quarter_fall(curve: list[tuple[int, float]]) -> float | None:
    """How much a validation-loss curve (step, loss) still fell over the last quarter of training: (loss at 3/4 of
    the last step − final loss) / loss at 3/4, the loss at 3/4 interpolated linearly between logged steps.
    None with fewer than 2 points."""
    points = sorted(curve)
    if len(points) < 2:
        return None
    at = 0.75 * points[-1][0]
    before = [p for p in points if p[0] <= at] or points[:1]
    after = next(p for p in points if p[0] >= at)
    (s0, v0), (s1, v1) = before[-1], after
    start = v0 if s1 == s0 else v0 + (v1 - v0) * (at - s0) / (s1 - s0)
    return (start - points[-1][1]) / start


def budget_check(runs: list[dict], entry: dict | None) -> dict:
    """Whether a task's budget let a method level off (the tuned benchmark asks it of ``lora``): its validation
    loss at its chosen rate, averaged over its final seeds at every logged step, and :func:`last_quarter_fall`
    of that curve. ``converged`` is False where it still fell by more than :data:`CONVERGED_FALL`, None until
    the method has final runs with a curve. ``runs``: the method's run records; ``entry``: its summary entry."""
    chosen = entry and entry["chosen_lr"]
    finals = [r for r in runs if chosen is not None and f"{r['lr']:.3g}" == f"{chosen:.3g}"
              and r["seed"] in entry["test"]["seeds"] and r.get("val_curve")]
    fall = last_quarter_fall(mean_curve([{int(p[0]): p[1] for p in r["val_curve"]} for r in finals]))
    return {"converged": None if fall is None else fall <= CONVERGED_FALL, "val_loss_fall_last_quarter": fall}


def curve_auc(curve: list[tuple[int, float]]) -> float:
    """Area under a (step, value) curve by the trapezoid rule, divided by the steps it covers: the
    curve's mean level, so runs of different lengths compare."""
    points = sorted(curve)
    if len(points) < 2:
        return points[0][1] if points else float("nan")
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(points, points[1:]))
    return area / (points[-1][0] - points[0][0])


def steps_to_reach(curve: list[tuple[int, float]], target: float, higher_is_better: bool = True) -> int | None:
    """The first logged step at which ``curve`` reaches ``target``; None if it never does."""
    for step, value in sorted(curve):
        if (value >= target) if higher_is_better else (value <= target):
            return step
    return None
