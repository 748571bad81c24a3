"""The drift block (docs/api.md, "Precision"): how far each residual method's initialized model is from the base
model, in fp32 and bf16 (results/init_drift.json, written by benchmarks/init_drift.py)."""

from __future__ import annotations


README_TEXT = """Measured with `benchmarks/init_drift.py` (r = {r}, q/v; `results/init_drift.json`): largest per-layer relative
drift `‖W_res + s·B0A0 − W‖/‖W‖`, and the largest output difference from the base model in the same dtype
(MiniLM hidden states, scale ≈ {minilm_scale:.1f}; SmolLM2 logits, scale ≈ {smollm2_scale:.0f}):

{table}

For scale: the bf16 base model itself differs from the fp32 base by {minilm_floor} (MiniLM) and {smollm2_floor} (SmolLM2
logits), so in bf16 every method but α without the fp32 residual stays inside bf16's own noise."""
MODELS = ("minilm", "smollm2")  # the table's column order


def _figure(x: float) -> str:
    """Drifts and small differences in scientific notation (``2.2e-8``), differences of a logit or more as ``1.89``."""
    return f"{x:.2f}" if x >= 0.5 else f"{x:.1e}".replace("e-0", "e-")


def _bf16_step(scale: float) -> float:
    """The spacing of bf16 numbers (8 significant bits) at the size of the model's largest output."""
    import math

    return 2.0 ** (math.floor(math.log2(scale)) - 7)


def readme_block(data: dict) -> str:
    """The page's drift table (``data``: results/init_drift.json): per method the worst drift over the models, the
    output differences per model, in fp32 and bf16 (with the residual in bf16 and in fp32). "Inside bf16's own noise"
    is checked as: no larger than the bf16 base's own difference plus one bf16 step at the output's scale."""
    rows = {(row["model"], row["dtype"], row["method"], row["residual_fp32"]): row for row in data["rows"]}
    methods = list(dict.fromkeys(row["method"] for row in data["rows"] if row["method"] != "lora"))
    floors = data["bf16_vs_fp32_base_output_diff"]
    if set(floors) != set(MODELS):
        raise ValueError(f"results/init_drift.json covers {sorted(floors)}, the page {MODELS}: reword README_TEXT in {__file__}")
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
        raise ValueError(f"results/init_drift.json no longer supports the words of its block (outside bf16's noise: "
                         f"{sorted(noisy)}, not α without the fp32 residual alone): reword README_TEXT in {__file__}")
    scale = {model: rows[model, "float32", "lora", False]["output_scale"] for model in MODELS}
    return README_TEXT.format(r=data["r"], minilm_scale=scale["minilm"], smollm2_scale=scale["smollm2"],
                              table="\n".join(table), minilm_floor=_figure(floors["minilm"]),
                              smollm2_floor=_figure(floors["smollm2"]))
