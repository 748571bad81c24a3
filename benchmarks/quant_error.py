"""The 4-bit quantization error ratio of each method's residual, on real models (QPiSSA's figure).

Per target: ``‖deq(Q(W_res)) + s·B0A0 − W‖_F / ‖deq(Q(W)) − W‖_F`` (plain QLoRA = 1.0 by definition; < 1 means
the factors carry part of what 4-bit rounding loses), read from ``get_peft_model(..., quantize=...)``'s
per-layer report; with ``--iters T`` also after each LoftQ-style refit (inilora, closed form). fp32 weights,
r = 8, alpha = 8, bitsandbytes blockwise 4-bit (block 64, double quantization). ``--layers N`` keeps the
first N transformer blocks (bitsandbytes' CPU quantizer is slow: all of SmolLM2's 210 matrices take hours).

    python benchmarks/quant_error.py --models minilm smollm2 --targets qv --iters 2
    python benchmarks/quant_error.py --models minilm smollm2 --targets all --layers 2 --iters 2 \
        --out results/quant_error_all_linear.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
RUNS = [("lora", {}), ("pissa", {}), ("milora", {}), ("inilora", {"solver": "svd"}), ("inilora-alpha", {}),
        ("inilora-beta", {})]
# every linear layer of a block, by name (PEFT's "all-linear" cannot be combined with layers_to_transform)
ALL_LINEAR = {"minilm": ["query", "key", "value", "dense"],
              "smollm2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
REFIT = "inilora"  # pissa's product is the same optimum (ratios equal to 1e-5 here), so its refits are too


def summarize(report) -> dict:
    """Mean / median / max of the per-target ratio, per refit iteration (index 0: the method's own factors)."""
    per_iter = list(zip(*[layer.quant_ratios for layer in report.layers]))
    return {"targets": len(report.layers),
            "mean": [statistics.fmean(r) for r in per_iter], "median": [statistics.median(r) for r in per_iter],
            "min": [min(r) for r in per_iter], "max": [max(r) for r in per_iter]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--targets", nargs="+", choices=["qv", "all"], default=["qv", "all"])
    parser.add_argument("--iters", type=int, default=2, help="LoftQ-style refits for inilora")
    parser.add_argument("--layers", type=int, default=None, help="only the first N transformer blocks")
    parser.add_argument("--quant", choices=["nf4", "fp4"], default="nf4")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=[m for m, _ in RUNS], choices=[m for m, _ in RUNS])
    parser.add_argument("--append", action="store_true", help="add to the rows already in --out")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "quant_error.json")
    args = parser.parse_args()

    import bitsandbytes
    import peft
    import torch
    import transformers
    from peft import LoraConfig

    import inilora
    from fit_benchmark import TARGETS, load

    versions = (f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
                f"bitsandbytes {bitsandbytes.__version__}")
    rows = json.loads(args.out.read_text())["rows"] if args.append and args.out.exists() else []
    for name in args.models:
        for targets in args.targets:
            config = LoraConfig(r=args.r, lora_alpha=args.r,
                                target_modules=TARGETS[name] if targets == "qv" else ALL_LINEAR[name],
                                layers_to_transform=None if args.layers is None else list(range(args.layers)))
            for method, options in (run for run in RUNS if run[0] in args.methods):
                iters = args.iters if method == REFIT else 0
                start = time.perf_counter()
                peft_model = inilora.get_peft_model(load(name, "cpu", "float32"), config, method=method, quantize=args.quant,
                                                    quant_iters=iters, progress=False, **options)
                row = {"model": name, "targets": targets, "blocks": args.layers, "method": method, "options": options, "quant_iters": iters,
                       "seconds": time.perf_counter() - start, "summary": summarize(peft_model.inilora.report),
                       "layers": {layer.name: layer.quant_ratios for layer in peft_model.inilora.report.layers}}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "layers"}), flush=True)
                del peft_model
                write(args, rows, versions)  # after every run: a long run leaves usable partial results
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def write(args, rows: list[dict], versions: str) -> None:
    command = "python " + " ".join(["benchmarks/quant_error.py", *sys.argv[1:]])
    previous = json.loads(args.out.read_text()).get("command", "") if args.append and args.out.exists() else ""
    from _common import provenance

    result = {"provenance": provenance(), "command": f"{previous}; {command}" if previous and command not in previous else command,
              "quant": args.quant, "r": args.r, "versions": versions, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}; python benchmarks/render rewrites {args.out.with_suffix('.md').name} and the blocks that "
          "show it")


if __name__ == "__main__":
    main()
