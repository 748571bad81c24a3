"""The tuned protocol's decisions: learning-rate choice on validation scores, grid extension, Holm."""

import math
import random

import pytest

from inilora.experiments.bench.tuning import (ValScore, choose_lr, curve_auc, extension, geometric_grid, holm,
                                              steps_to_reach, win_rate)


def test_geometric_grid_spans_and_ratio():
    grid = geometric_grid(1e-4, 3e-3, 4)
    assert grid[0] == 1e-4 and grid[-1] == 3e-3
    assert grid[-1] / grid[0] >= 30
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert max(ratios) / min(ratios) < 1.01  # evenly spaced in log scale (up to rounding)
    with pytest.raises(ValueError):
        geometric_grid(1e-3, 1e-4, 4)


def test_choose_lr_best_mean_metric_then_lower_loss():
    scores = {1e-4: [ValScore(0.70, 0.5), ValScore(0.72, 0.5)],
              3e-4: [ValScore(0.80, 0.6), ValScore(0.70, 0.6)],  # same mean metric as 1e-3, higher loss
              1e-3: [ValScore(0.75, 0.4), ValScore(0.75, 0.4)],
              3e-3: [ValScore(0.60, 0.3), ValScore(0.90, 0.3)]}  # the best single seed; mean 0.75 too
    # 3e-4, 1e-3 and 3e-3 all average 0.75: the lowest mean loss wins
    assert choose_lr(scores) == 3e-3
    scores[3e-3] = [ValScore(0.60, 0.3), ValScore(0.80, 0.3)]  # mean 0.70 now
    assert choose_lr(scores) == 1e-3


def test_extension_only_at_an_edge_and_within_budget():
    grid = [1e-4, 3e-4, 1e-3, 3e-3]
    assert extension(grid, 3e-3, max_extensions=1, extended=0) == pytest.approx(9e-3, rel=0.02)
    assert extension(grid, 1e-4, max_extensions=1, extended=0) == pytest.approx(3.33e-5, rel=0.02)
    assert extension(grid, 3e-4, max_extensions=1, extended=0) is None
    assert extension(grid, 3e-3, max_extensions=1, extended=1) is None


def _holm_reference(pvalues):
    """Holm by its step-down definition: reject in ascending order while p_(k) <= alpha / (m - k + 1);
    the adjusted p is the smallest alpha at which a hypothesis is rejected."""
    names = sorted(pvalues, key=pvalues.get)
    m = len(names)
    out = {}
    for i, name in enumerate(names):
        out[name] = min(1.0, max((m - k) * pvalues[names[k]] for k in range(i + 1)))
    return out


def test_holm_matches_its_definition_and_never_lowers_a_p():
    rng = random.Random(0)
    for _ in range(50):
        pvalues = {f"m{i}": rng.random() ** 3 for i in range(rng.randint(1, 7))}
        adjusted = holm(pvalues)
        reference = _holm_reference(pvalues)
        for name, p in pvalues.items():
            assert adjusted[name] == pytest.approx(reference[name])
            assert p <= adjusted[name] <= 1.0


def test_holm_skips_missing():
    adjusted = holm({"a": 0.01, "b": None, "c": float("nan"), "d": 0.04})
    assert adjusted["b"] is None and adjusted["c"] is None
    assert adjusted["a"] == pytest.approx(0.02) and adjusted["d"] == pytest.approx(0.04)


def test_win_rate_counts_ties_half_and_respects_direction():
    method, base = {0: 0.8, 1: 0.7, 2: 0.6, 3: 0.5}, {0: 0.7, 1: 0.7, 2: 0.7, 3: 0.7}
    assert win_rate(method, base) == pytest.approx(1.5 / 4)
    assert win_rate(method, base, higher_is_better=False) == pytest.approx(2.5 / 4)
    assert win_rate({}, base) is None


def test_curve_auc_is_the_mean_level_and_steps_to_reach():
    curve = [(0, 1.0), (10, 0.5), (20, 0.5)]
    assert curve_auc(curve) == pytest.approx((10 * 0.75 + 10 * 0.5) / 20)
    assert curve_auc([(5, 0.3)]) == 0.3
    assert math.isnan(curve_auc([]))
    metric = [(10, 0.6), (20, 0.8), (30, 0.75)]
    assert steps_to_reach(metric, 0.75) == 20
    assert steps_to_reach(metric, 0.9) is None
    assert steps_to_reach(curve, 0.6, higher_is_better=False) == 10


def test_half_steps_split_the_grid_step_in_log_scale():
    from inilora.experiments.bench.tuning import half_steps

    low, high = half_steps([2e-4, 6e-4, 2e-3, 6e-3], 2e-3)
    half = 30 ** (1 / 6)  # the square root of the mean ratio, (6e-3 / 2e-4) ** (1 / 3)
    assert low == pytest.approx(2e-3 / half, rel=0.005) and high == pytest.approx(2e-3 * half, rel=0.005)
    assert half_steps([1e-3, 1e-2], 1e-3) == [0.000316, 0.00316]  # ×√10 steps: ×√3.16 on each side


def test_the_budget_check_reads_the_last_quarter_of_the_validation_loss():
    from inilora.experiments.bench.tuning import budget_check, last_quarter_fall

    assert last_quarter_fall([(s, 1.0) for s in range(1, 9)]) == 0.0
    # 8 evaluations of 16 steps: 3/4 is step 12, a logged point; 0.5 -> 0.4 is a 20 % fall
    assert last_quarter_fall([(2 * s, 1.0 if s < 6 else {6: 0.5, 7: 0.45, 8: 0.4}[s]) for s in range(1, 9)]) == \
        pytest.approx(0.2)
    assert last_quarter_fall([(4, 1.0), (8, 0.8)]) == pytest.approx((0.9 - 0.8) / 0.9)  # interpolated at step 6
    assert last_quarter_fall([(3, 1.0)]) is None

    def run(lr, seed, losses):
        return {"lr": lr, "seed": seed, "val_curve": [[step, loss, None] for step, loss in enumerate(losses, 1)]}

    entry = {"chosen_lr": 1e-3, "test": {"seeds": [0, 1]}}
    flat, falling = [1.0, 0.6, 0.5, 0.5], [1.0, 0.6, 0.5, 0.4]
    runs = [run(1e-3, 0, flat), run(1e-3, 1, falling), run(1e-2, 0, [1, 1, 1, 0.1]), run(1e-3, 2, [1, 1, 1, 0.1])]
    check = budget_check(runs, entry)  # the other rate and the seed outside the finals are not read
    assert check["val_loss_fall_last_quarter"] == pytest.approx((0.5 - 0.45) / 0.5) and check["converged"] is False
    assert budget_check(runs[:1], entry) == {"converged": True, "val_loss_fall_last_quarter": 0.0}
    assert budget_check(runs, {"chosen_lr": None, "test": {"seeds": []}})["converged"] is None
    assert budget_check(runs, None)["converged"] is None
    from inilora.experiments.bench.tuned_report import markdown

    task = {"model": "m", "metric": "accuracy", "majority": None, "methods": {}, **check}
    shown = markdown({"command": "c", "cpu_hours": 0.0, "tasks": {"t": task}}, {}, {})
    assert "Not converged: `lora`'s validation loss still fell 10.0% over the last quarter" in shown
    assert "Not converged" not in markdown({"command": "c", "cpu_hours": 0.0, "tasks": {"t": {
        **task, **budget_check(runs[:1], entry)}}}, {}, {})
