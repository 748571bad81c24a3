"""How does the published Adam fit factor the optimum, and how close are the closed-form factors?

The fit ``min ‖U Pᵀ − W‖`` fixes the product only: any ``(B0 G, G⁻¹ A0)`` is equally optimal. On real
weights this measures, per matrix, for the converged published fit (``solver="adam"``, defaults) against
the truncated SVD split √S/√S:

- ``balance``: ‖B0‖_F / ‖A0‖_F (1 = balanced, as the SVD split is);
- ``subspace``: ‖B0_adam − B0_svd G‖ / ‖B0_adam‖ with the best *general* G (0 = same column space);
- ``procrustes``: the same with the best *orthogonal* G (0 = the SVD factors up to a rotation);
- ``G_svals``: singular values of the best general G (all 1 = a pure rotation);
- ``mixing``: the smallest, over basis vectors, largest |Q_ij| of the best rotation Q (1 = the singular basis
  itself, up to order and sign; 1/√r = a perfectly even mix; a Haar-random rotation gives about 0.53 at r = 8,
  ``random_rotation_mixing``);
- column norms of B0 for both;
and, for the closed form ``solver="svd"`` (``svd_basis="adam-like"``), the same balance, mixing and
column-norm spread, to show how closely it imitates the published factors.

    python benchmarks/factor_geometry.py --models minilm smollm2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from _common import claim_check

HERE = Path(__file__).resolve().parent


def _concentration(Q: torch.Tensor) -> torch.Tensor:
    """The smallest, over rows, largest |entry| of each (batched) rotation ``Q``."""
    return Q.abs().amax(dim=-1).amin(dim=-1)


def _mixing(Bs: torch.Tensor, B: torch.Tensor) -> float:
    U, _, Vh = torch.linalg.svd(Bs.T @ B)
    return float(_concentration(U @ Vh))


def random_rotation_mixing(r: int, samples: int = 10_000, seed: int = 0) -> torch.Tensor:
    """``mixing`` of ``samples`` Haar-random r×r rotations (seeded): what a basis mixed at random scores. QR of a
    Gaussian matrix gives a Haar rotation up to column signs, which |entries| ignore."""
    gaussian = torch.randn(samples, r, r, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return _concentration(torch.linalg.qr(gaussian).Q)


def geometry(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, r: int, closed: tuple) -> dict:
    from inilora.fit import fit_svd

    As, Bs, _ = fit_svd(W, r)
    Ac, Bc = closed
    G = torch.linalg.pinv(Bs) @ B
    U, _, Vh = torch.linalg.svd(Bs.T @ B)
    Q = U @ Vh
    return {
        "balance": float(B.norm() / A.norm()),
        "balance_closed_form": float(Bc.norm() / Ac.norm()),
        "B_col_norm_spread_adam": float(B.norm(dim=0).max() / B.norm(dim=0).min()),
        "B_col_norm_spread_closed_form": float(Bc.norm(dim=0).max() / Bc.norm(dim=0).min()),
        "mixing_closed_form": _mixing(Bs, Bc),
        "subspace": float((B - Bs @ G).norm() / B.norm()),
        "procrustes": float((B - Bs @ Q).norm() / B.norm()),
        "G_svals": [float(s) for s in torch.linalg.svdvals(G)],
        "mixing": _mixing(Bs, B),
        "B_col_norms_adam": sorted((float(x) for x in B.norm(dim=0)), reverse=True),
        "B_col_norms_svd": [float(x) for x in Bs.norm(dim=0)],
        "product_gap": float((B @ A - Bs @ As).norm() / (Bs @ As).norm()),
    }


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
    """The README's account of how the published fit factors the optimum: its figures from the per-matrix rows,
    the random-rotation reference from ``random_rotation_mixing``; words a changed file would make false stop it."""
    from _common import span

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "factor_geometry.json")
    args = parser.parse_args()

    import inilora
    from _common import TARGETS, load, lora_config, target_weights

    report = {"rank": args.rank, "models": {}}
    for name in args.models:
        model = load(name, "cpu", "float32")
        weights = target_weights(model, name)
        peft_model = inilora.get_peft_model(model, lora_config(name, args.rank), method="inilora")  # published defaults
        closed = inilora.get_peft_model(load(name, "cpu", "float32"), lora_config(name, args.rank), method="inilora",
                                        solver="svd").inilora.layers  # svd_basis="adam-like"
        rows = {n: geometry(weights[n], layer.A0.float(), layer.B0.float(), args.rank,
                            (closed[n].A0.float(), closed[n].B0.float()))
                for n, layer in peft_model.inilora.layers.items()}
        summary = {key: [min(r[key] for r in rows.values()), statistics.median(r[key] for r in rows.values()),
                         max(r[key] for r in rows.values())]
                   for key in ("balance", "balance_closed_form", "subspace", "procrustes", "mixing",
                               "mixing_closed_form", "B_col_norm_spread_adam", "B_col_norm_spread_closed_form",
                               "product_gap")}
        summary["G_svals"] = [min(min(r["G_svals"]) for r in rows.values()),
                              max(max(r["G_svals"]) for r in rows.values())]
        report["models"][name] = {"targets": TARGETS[name], "summary_min_median_max": summary, "per_matrix": rows}
        print(name, json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
