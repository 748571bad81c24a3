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
import statistics
from pathlib import Path

import torch


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
