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


README_TEXT = """Measured with `benchmarks/init_drift.py` (r = {r}, q/v; `results/init_drift.json`): largest per-layer relative
drift `‖W_res + s·B0A0 − W‖/‖W‖`, and the largest output difference from the base model in the same dtype
(MiniLM hidden states, scale ≈ {minilm_scale:.1f}; SmolLM2 logits, scale ≈ {smollm2_scale:.0f}):

{table}

For scale: the bf16 base model itself differs from the fp32 base by {minilm_floor} (MiniLM) and {smollm2_floor} (SmolLM2
logits), so in bf16 every method but α without the fp32 residual stays inside bf16's own noise."""
MODELS = ("minilm", "smollm2")  # the README's column order


def _figure(x: float) -> str:
    """Drifts and small differences in scientific notation (``2.2e-8``), differences of a logit or more as ``1.89``."""
    return f"{x:.2f}" if x >= 0.5 else f"{x:.1e}".replace("e-0", "e-")


def _bf16_step(scale: float) -> float:
    """The spacing of bf16 numbers (8 significant bits) at the size of the model's largest output."""
    import math

    return 2.0 ** (math.floor(math.log2(scale)) - 7)


def readme_block(data: dict) -> str:
    """The README's drift table (``data``: results/init_drift.json): per method the worst drift over the models, the
    output differences per model, in fp32 and bf16 (with the residual in bf16 and in fp32). "Inside bf16's own noise"
    is checked as: no larger than the bf16 base's own difference plus one bf16 step at the output's scale."""
    rows = {(row["model"], row["dtype"], row["method"], row["residual_fp32"]): row for row in data["rows"]}
    methods = list(dict.fromkeys(row["method"] for row in data["rows"] if row["method"] != "lora"))
    floors = data["bf16_vs_fp32_base_output_diff"]
    if set(floors) != set(MODELS):
        raise ValueError(f"results/init_drift.json covers {sorted(floors)}, the README {MODELS}: reword README_TEXT in {__file__}")
    worst = lambda method, dtype, fp32: max(rows[m, dtype, method, fp32]["max_layer_drift"] for m in MODELS)
    diffs = lambda method, dtype, fp32: " / ".join(_figure(rows[m, dtype, method, fp32]["max_output_diff"])
                                                   for m in MODELS)
    table = ["| method | fp32 drift | fp32 output diff MiniLM / SmolLM2 | bf16 drift | bf16 drift, `residual_fp32` | "
             "bf16 output diff MiniLM / SmolLM2 (fp32 residual) |", "|---|---|---|---|---|---|"]
    for method in methods:
        bf16 = _figure(worst(method, "bfloat16", False))
        if any(rows[m, "bfloat16", method, False]["warned"] for m in MODELS):
            bf16 = f"**{bf16}** (warns)"
        table.append(f"| {method} | {_figure(worst(method, 'float32', False))} | {diffs(method, 'float32', False)} | "
                     f"{bf16} | {_figure(worst(method, 'bfloat16', True))} | {diffs(method, 'bfloat16', False)} "
                     f"({diffs(method, 'bfloat16', True)}) |")
    noisy = {(method, fp32) for (model, dtype, method, fp32), row in rows.items() if dtype == "bfloat16"
             and row["max_output_diff"] > floors[model] + _bf16_step(row["output_scale"])}
    if noisy != {("inilora-alpha", False)}:
        raise ValueError(f"results/init_drift.json no longer supports the README's words (outside bf16's noise: "
                         f"{sorted(noisy)}, not α without the fp32 residual alone): reword README_TEXT in {__file__}")
    scale = {model: rows[model, "float32", "lora", False]["output_scale"] for model in MODELS}
    return README_TEXT.format(r=data["r"], minilm_scale=scale["minilm"], smollm2_scale=scale["smollm2"],
                              table="\n".join(table), minilm_floor=_figure(floors["minilm"]),
                              smollm2_floor=_figure(floors["smollm2"]))


if __name__ == "__main__":
    main()
