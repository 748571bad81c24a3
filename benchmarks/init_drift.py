"""Drift of the initialized model from the base, per method, in fp32 and bf16, on real models.

For each method: the report's largest per-layer relative weight drift ``‖W_res + s·B0A0 − W‖/‖W‖`` and the
largest absolute difference of the model's outputs (hidden states for MiniLM, logits for SmolLM2) from
the base model's (same dtype) on a fixed batch of text, next to the difference bf16 arithmetic alone makes
(the bf16 base against the fp32 base) — with the residual in the model's dtype and, for bf16, kept
in fp32 (``residual_fp32=True``). ``inilora`` uses ``solver="svd"`` here: drift depends on the size of
the subtracted product, which is the same optimum either way.

    python benchmarks/init_drift.py --models minilm smollm2
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TEXT = ["The coffee arrived stale and bitter, never again.", "Best dog treats we have ever bought!",
        "Question: Tom has 3 apples and buys 4 more. How many apples does he have? Answer: 7"]


def outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "init_drift.json")
    args = parser.parse_args()

    import inilora
    from _common import load, lora_config
    from inilora.experiments.models import load_tokenizer

    rows, floors = [], {}
    for name in args.models:
        tokenizer = load_tokenizer(name)
        batch = tokenizer(TEXT, padding=True, return_tensors="pt")
        # bf16 arithmetic alone: the bf16 base against the fp32 base, the scale any bf16 difference has
        floors[name] = (outputs(load(name, "cpu", "bfloat16"), batch) - outputs(load(name, "cpu", "float32"), batch)
                        ).abs().max().item()
        for dtype in ("float32", "bfloat16"):
            expected = outputs(load(name, "cpu", dtype), batch)
            for method in inilora.METHODS:
                for keep_fp32 in ((False,) if dtype == "float32" else (False, True)):
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        peft_model = inilora.get_peft_model(load(name, "cpu", dtype), lora_config(name, 8), method=method,
                                                            residual_fp32=keep_fp32, progress=False,
                                                            **({"solver": "svd"} if inilora.get_method(method).has_fit
                                                               else {}))
                    warned = any(issubclass(w.category, inilora.InitDriftWarning) for w in caught)
                    diff = (outputs(peft_model, batch) - expected).abs().max().item()
                    row = {"model": name, "dtype": dtype, "method": method, "residual_fp32": keep_fp32,
                           "max_layer_drift": peft_model.inilora.report.max_drift, "max_output_diff": diff,
                           "output_scale": expected.abs().max().item(), "warned": warned}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "r": 8, "lora_alpha": 8, "bf16_vs_fp32_base_output_diff": floors},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
