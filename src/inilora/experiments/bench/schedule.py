"""Which runs the tuned protocol needs next for one (task, method), given the runs already finished:
the grid at the tuning seeds, one step beyond an edge when the best learning rate sits there, half a step
on each side of the best (``refine``), then the final seeds at the learning rate chosen among all of them.
Selection reads validation scores only."""

from __future__ import annotations

from dataclasses import dataclass

from .tuning import ValScore, choose_lr, extension, half_steps


@dataclass(frozen=True)
class Protocol:
    """A method's tuning plan: its base grid, the seeds every grid point gets, the seeds of the final runs
    (a superset: tuning runs at the chosen learning rate count as finals), how far a grid may grow, and
    whether the best rate of the coarse grid is refined by half-steps on each side before choosing."""

    lr_grid: tuple[float, ...]
    tune_seeds: tuple[int, ...] = (0, 1)
    final_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    max_extensions: int = 1
    refine: bool = False

    def __post_init__(self) -> None:
        if len(self.lr_grid) < 2 or sorted(self.lr_grid) != list(self.lr_grid):
            raise ValueError(f"lr_grid must hold >= 2 ascending learning rates, got {self.lr_grid}")
        if not set(self.tune_seeds) <= set(self.final_seeds):
            raise ValueError("the tuning seeds must be among the final seeds (their runs count as finals)")


@dataclass(frozen=True)
class Stage:
    """Where one (task, method) stands: the grid so far (the refining rates included), the chosen learning
    rate (None while tuning), the (lr, seed) runs still missing, and the refining rates (empty until the
    coarse grid is scored, or without ``refine``)."""

    grid: tuple[float, ...]
    chosen_lr: float | None
    missing: tuple[tuple[float, int], ...]
    refined: tuple[float, ...] = ()

    @property
    def finished(self) -> bool:
        return not self.missing


def _key(lr: float) -> str:
    return f"{lr:.3g}"


def stage(protocol: Protocol, finished: dict[tuple[float, int], ValScore]) -> Stage:
    """The next step for one (task, method). ``finished`` maps (lr, seed) of every finished run to its
    validation score; learning rates are compared at 3 significant digits. The refining rates depend on the
    coarse grid's scores alone, so the plan is the same whenever it is asked (a resumed benchmark asks for
    the same runs)."""
    scores: dict[str, dict[int, ValScore]] = {}
    for (lr, seed), score in finished.items():
        scores.setdefault(_key(lr), {})[seed] = score
    grid = list(protocol.lr_grid)
    while True:
        missing = tuple((lr, s) for lr in grid for s in protocol.tune_seeds if s not in scores.get(_key(lr), {}))
        if missing:
            return Stage(tuple(grid), None, missing)
        chosen = choose_lr({lr: [scores[_key(lr)][s] for s in protocol.tune_seeds] for lr in grid})
        grown = extension(grid, chosen, protocol.max_extensions, extended=len(grid) - len(protocol.lr_grid))
        if grown is None:
            break
        grid = sorted([*grid, grown])
    refined: tuple[float, ...] = ()
    if protocol.refine:
        refined = tuple(lr for lr in half_steps(grid, chosen) if _key(lr) not in {_key(g) for g in grid})
        grid = sorted([*grid, *refined])
        missing = tuple((lr, s) for lr in grid for s in protocol.tune_seeds if s not in scores.get(_key(lr), {}))
        if missing:
            return Stage(tuple(grid), None, missing, refined)
        chosen = choose_lr({lr: [scores[_key(lr)][s] for s in protocol.tune_seeds] for lr in grid})
    missing = tuple((chosen, s) for s in protocol.final_seeds if s not in scores.get(_key(chosen), {}))
    return Stage(tuple(grid), chosen, missing, refined)
