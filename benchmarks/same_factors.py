"""Same seed, same factors on another device: MiniLM's initial factors (q/v, r = 8, no fit cache) for every
SVD-based path (inilora svd and svd_randomized, pissa, milora), made on the CPU and on ``--device``, compared as
tests/test_reproducible.py compares thread counts: each factor within 1e-3 of its largest entry (a sign flip
shows as 1–2) and each product ``B0·A0`` within 1e-5 relative (fp32 allows about 1e-4 where the two devices
run different SVD kernels: reported, not hidden).

    python benchmarks/same_factors.py --device cuda --pack .gpu --out $OUT/same_factors.json

Without that device it makes the CPU factors only and says so (exit 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import load, lora_config  # noqa: E402

PATHS = {"svd": {"method": "inilora", "solver": "svd"},
         "svd_randomized": {"method": "inilora", "solver": "svd_randomized"},
         "pissa": {"method": "pissa"}, "milora": {"method": "milora"}}
FACTOR_TOL, PRODUCT_TOL = 1e-3, 1e-5


def factors(path: str, device: str, pack: Path | None) -> dict:
    """``{layer: (A0, B0)}`` on the CPU, for one path, initialized on ``device``."""
    import inilora

    model = load("minilm", device, "float32", pack=pack)
    peft_model = inilora.get_peft_model(model, lora_config("minilm", 8), progress=False, cache=False, **PATHS[path])
    params = {name: p.detach().float().cpu() for name, p in peft_model.named_parameters()}
    return {name.removesuffix(".lora_A.default.weight"): (A, params[name.replace(".lora_A.", ".lora_B.")])
            for name, A in params.items() if name.endswith(".lora_A.default.weight")}


def compare(one: dict, two: dict) -> dict:
    """How far two sets of factors are apart: per factor its largest difference over its largest entry, per
    layer the relative (Frobenius) difference of ``B0·A0``."""
    factor, product = [], []
    for layer, (A1, B1) in one.items():
        A2, B2 = two[layer]
        factor += [float((X1 - X2).abs().max() / X1.abs().max()) for X1, X2 in ((A1, A2), (B1, B2))]
        P1, P2 = B1.double() @ A1.double(), B2.double() @ A2.double()
        product.append(float((P1 - P2).norm() / P1.norm()))
    return {"factors": len(factor), "factors_over_tol": sum(v > FACTOR_TOL for v in factor),
            "worst_factor": max(factor), "products_over_tol": sum(v > PRODUCT_TOL for v in product),
            "worst_product": max(product)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pack", type=Path, default=None, help="benchmarks/gpu_pack.py's folder (no model package)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    available = args.device == "cpu" or (args.device.startswith("cuda") and torch.cuda.is_available())
    result = {"device": args.device, "tolerances": {"factor": FACTOR_TOL, "product": PRODUCT_TOL}, "paths": {}}
    if available and args.device.startswith("cuda"):
        result["device_name"] = torch.cuda.get_device_name(args.device)
    for path in args.paths:
        cpu = factors(path, "cpu", args.pack)
        if not available:
            result["paths"][path] = {"factors": 2 * len(cpu), "compared": False}
            continue
        result["paths"][path] = {**compare(cpu, factors(path, args.device, args.pack)), "compared": True}
        print(path, result["paths"][path], flush=True)
    if not available:
        result["skipped"] = f"no {args.device} device here: the CPU factors were made, nothing compared"
        print(result["skipped"])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
