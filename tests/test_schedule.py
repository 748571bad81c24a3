"""The tuned protocol's schedule: grid first, an extension at an edge, then the final seeds."""

import pytest

from inilora.experiments.bench.schedule import Protocol, stage
from inilora.experiments.bench.tuning import ValScore

GRID = (1e-4, 3e-4, 1e-3, 3e-3)


def _score(lr: float) -> ValScore:
    """A validation curve over learning rates peaking at 1e-3 (inside the grid)."""
    import math

    return ValScore(1 - abs(math.log10(lr) + 3), 1.0)


def _run_all(protocol, score):
    finished, rounds = {}, 0
    while True:
        now = stage(protocol, finished)
        if now.finished:
            return now, finished, rounds
        for lr, seed in now.missing:
            assert (lr, seed) not in finished, "a finished run was scheduled again"
            finished[(lr, seed)] = score(lr)
        rounds += 1


def test_grid_then_finals_at_the_best_inside_lr():
    protocol = Protocol(GRID)
    first = stage(protocol, {})
    assert first.chosen_lr is None and len(first.missing) == len(GRID) * 2
    final, finished, rounds = _run_all(protocol, _score)
    assert final.chosen_lr == 1e-3 and final.grid == GRID
    assert sorted(s for lr, s in finished if lr == 1e-3) == [0, 1, 2, 3, 4]
    assert len(finished) == len(GRID) * 2 + 3  # the tuning seeds at 1e-3 count as finals
    assert rounds == 2


def test_best_at_an_edge_extends_the_grid_once():
    protocol = Protocol(GRID, max_extensions=1)
    final, finished, _ = _run_all(protocol, lambda lr: ValScore(lr, 1.0))  # larger is always better
    assert final.grid[:-1] == GRID and final.grid[-1] == pytest.approx(9e-3, rel=0.02)
    assert final.chosen_lr == final.grid[-1]
    assert sum(1 for lr, _ in finished if lr == final.chosen_lr) == 5


def test_protocol_validation():
    with pytest.raises(ValueError):
        Protocol((1e-3,))
    with pytest.raises(ValueError):
        Protocol(GRID, tune_seeds=(7,), final_seeds=(0, 1, 2, 3, 4))
