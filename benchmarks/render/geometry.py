"""The factor-geometry block (docs/fit.md): how the published fit factors the optimum, and how closely the
closed form imitates it (results/factor_geometry.json, written by benchmarks/factor_geometry.py)."""

from __future__ import annotations

import math
import statistics

import torch
from factor_geometry import random_rotation_mixing

from .formatting import claim_check, span

READING = """`benchmarks/factor_geometry.py` measured how the published fit factors it, on MiniLM and SmolLM2 q/v
(r = {rank}, {count} matrices, `results/factor_geometry.json`):

- same product: the Adam factors span the optimum's subspace to {subspace} (relative; median, worst
  {subspace_worst}), and their product is the optimum's to {product} (median, worst {product_worst});
- a mixed basis, not the singular one: the best rotation onto the singular basis has, in its least
  concentrated row, a largest entry of {mixing} (median {mixing_median:.2f}). The singular basis itself would
  give 1, a perfectly even mix 1/√{rank} = {even:.2f}, and a random rotation {random:.2f} on average (Haar-random
  {rank}×{rank}, seeded Monte Carlo: `random_rotation_mixing` there): Adam mixes the basis like a random rotation;
- entries of equal size in both factors, not a √S/√S split: ‖B0‖/‖A0‖ is {square_balance:.2f} (median) on the
  square matrices (MiniLM q/v, SmolLM2 `q_proj`) and {wide_balance:.2f} on SmolLM2's `v_proj`, which has fewer
  outputs than inputs — ≈ √(out/in) = {wide_closed:.2f}, the ratio of factors whose entries have equal RMS,
  what Adam gives when it moves every entry at the same rate. After the best rotation, Adam's factors
  still differ from the balanced SVD split by {square_procrustes}% on the square matrices and {wide_procrustes}% on
  `v_proj` (`procrustes`): a rotation cannot undo this imbalance, and the gap grows with it.

So the closed form factors the optimum **adam-like** by default (`svd_basis="adam-like"`): a seeded random
rotation, then factors rescaled to equal RMS entries. Measured against the Adam fits: balance {closed_balance}
(Adam {adam_balance}), basis mixing median {closed_mixing:.3f} (Adam {adam_mixing:.3f})."""
SQUARE = (("minilm", "query"), ("minilm", "value"), ("smollm2", "q_proj"))
WIDE = ("smollm2", "v_proj")  # fewer outputs than inputs


_holds = claim_check("results/factor_geometry.json", "READING", __file__)


def readme_reading(data: dict) -> str:
    """The page's account of how the published fit factors the optimum: its figures from the per-matrix rows,
    the random-rotation reference from ``random_rotation_mixing``; words a changed file would make false stop it."""
    groups = {(model, target): [row for name, row in entry["per_matrix"].items() if name.endswith(target)]
              for model, entry in data["models"].items() for target in entry["targets"]}
    _holds(set(groups) == {*SQUARE, WIDE}, "MiniLM and SmolLM2 q/v")
    rows = [row for group in groups.values() for row in group]
    square = [row for group in SQUARE for row in groups[group]]
    wide = groups[WIDE]
    values = lambda key, among=rows: [row[key] for row in among]
    sci = lambda x: f"{x:.1e}".replace("e-0", "e-")
    percent = lambda among: span([100 * x for x in values("procrustes", among)], ".0f")
    rank = data["rank"]
    random = random_rotation_mixing(rank)
    random_low, random_high = (float(q) for q in torch.quantile(random, torch.tensor([0.05, 0.95], dtype=random.dtype)))
    mixing_median = statistics.median(values("mixing"))
    wide_closed = statistics.median(values("balance_closed_form", wide))
    square_balance, wide_balance = (statistics.median(values("balance", among)) for among in (square, wide))
    abs_log_balance = [abs(math.log(x)) for x in values("balance")]
    for holds, claim in (
            (max(values("subspace") + values("product_gap")) < 1e-3, "same product"),
            (max(values("mixing")) < 0.9, "not the singular basis"),
            (random_low <= mixing_median <= random_high, "Adam mixes the basis like a random rotation"),
            (all(abs(x - 1) < 1e-4 for x in values("balance_closed_form", square)), "square matrices"),
            (max(values("balance_closed_form", wide)) < 0.9, "v_proj has fewer outputs than inputs"),
            (abs(square_balance - 1) < 0.1 and abs(wide_balance / wide_closed - 1) < 0.1, "≈ √(out/in)"),
            (statistics.median(values("procrustes", wide)) > max(values("procrustes", square))
             and statistics.correlation(abs_log_balance, values("procrustes")) > 0.5, "the gap grows with it"),
            (min(values("balance")) <= min(values("balance_closed_form"))
             and max(values("balance_closed_form")) <= max(values("balance")), "closed-form balance inside Adam's"),
            (abs(statistics.median(values("mixing_closed_form")) - mixing_median) < 0.01, "mixing like Adam's")):
        _holds(holds, claim)
    return READING.format(
        rank=rank, count=len(rows), subspace=sci(statistics.median(values("subspace"))),
        subspace_worst=sci(max(values("subspace"))), product=sci(statistics.median(values("product_gap"))),
        product_worst=sci(max(values("product_gap"))), mixing=span(values("mixing"), ".2f"),
        mixing_median=mixing_median, even=rank ** -0.5, random=float(random.mean()), square_balance=square_balance,
        wide_balance=wide_balance, wide_closed=wide_closed, square_procrustes=percent(square),
        wide_procrustes=percent(wide), closed_balance=span(values("balance_closed_form"), ".2f"),
        adam_balance=span(values("balance"), ".2f"),
        closed_mixing=statistics.median(values("mixing_closed_form")), adam_mixing=mixing_median)
