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


def test_refinement_adds_half_steps_around_the_best_and_chooses_among_all_points():
    import math
    import random

    peak = 1.7e-3  # between the grid's 1e-3 and 3e-3, nearer 1e-3 * 3.16**0.5

    def score(lr):
        return ValScore(1 - abs(math.log10(lr / peak)), 1.0)

    protocol = Protocol(GRID, refine=True)
    final, finished, rounds = _run_all(protocol, score)
    assert rounds == 3  # the coarse grid, the half-steps, the finals
    assert final.chosen_lr not in GRID and final.chosen_lr == max(final.grid, key=lambda lr: score(lr).metric)
    half = (3e-3 / 1e-4) ** (1 / 6)  # the square root of the grid's mean ratio
    assert final.refined == (pytest.approx(1e-3 / half, rel=0.01), pytest.approx(1e-3 * half, rel=0.01))
    assert sorted(final.grid) == sorted([*GRID, *final.refined])
    assert {s for lr, s in finished if lr in final.refined and lr != final.chosen_lr} == {0, 1}  # tuning seeds only
    assert sorted(s for lr, s in finished if lr == final.chosen_lr) == [0, 1, 2, 3, 4]
    # deterministic: the same finished runs give the same plan in any order, and a resumed plan asks nothing new
    coarse = {key: value for key, value in finished.items() if key[0] in GRID}
    shuffled = list(coarse.items())
    random.Random(0).shuffle(shuffled)
    assert stage(protocol, dict(shuffled)) == stage(protocol, coarse) and stage(protocol, coarse).chosen_lr is None
    assert set(stage(protocol, coarse).missing) == {(lr, s) for lr in final.refined for s in (0, 1)}
    assert stage(protocol, finished) == final and final.finished
    # where the coarse best stays best, it is kept; refinement never looks at more than the two half-steps
    kept, finished, _ = _run_all(protocol, _score)
    assert kept.chosen_lr == 1e-3 and len(kept.grid) == len(GRID) + 2


def test_refinement_after_an_extension_steps_from_the_grown_edge():
    protocol = Protocol(GRID, max_extensions=1, refine=True)
    final, finished, _ = _run_all(protocol, lambda lr: ValScore(lr, 1.0))  # larger is always better
    assert final.grid[-1] == final.chosen_lr and final.chosen_lr > 9e-3  # the half-step beyond the grown edge
    assert len(final.grid) == len(GRID) + 1 + 2
