"""The GPU section of docs/large-models.md, from the accelerator run's files (benchmarks/gpu_check.sh, results/gpu/): the 7B
initialization table, the fit benchmark's cells on CUDA beside the CPU's, and the sentences reading them,
whose words are checked against the files."""

from __future__ import annotations

import math
import re

from .fit import by_column, speedup, vs_pissa
from .formatting import MODEL_NAMES, bound, claim_check, span

SOURCE = "results/gpu"
FIT_ROWS = (("published loop, 20k steps (s; timed on 2 matrices, scaled)", "published-loop"),
            ("`adam` batched, 20k steps (s)", "adam-batched"), ("`adam`, `early_stop_tol=1e-7` (s)", "adam-early-stop"),
            ("`svd` (s)", "svd"), ("`svd_randomized` (s)", "svd-randomized"), ("PEFT `pissa` (s)", "peft-pissa"))

READING = """- **The closed form at 7B**: `svd` initializes the 64 q/v matrices in {svd_qv:.1f} s, {svd_vs_pissa:.2f}× the time of
  PEFT's exact `pissa` ({pissa_qv:.1f} s), and all {all_matrices} linear layers in {svd_all:.0f} s; the peak GPU memory it adds
  stays under {peak_max:.1f} GiB over a {model_gib:.1f} GiB model.
- **`svd_randomized` is not the fast path on this GPU**: {randomized_qv:.1f} s on q/v, where PEFT's `pissa_niter_4` takes
  {niter_qv:.2f} s ({niter_slower:.0f}× less; {niter_slower_all:.0f}× on all linear layers), unlike on the CPU at 7B shapes
  (above). `pissa_niter_4` is {niter_error}% off the optimum (CPU fit benchmark) where today's `svd_randomized` is
  within {randomized_error}. The run here (commit {run_commit}) predates its block Krylov solver: the subspace iteration
  it timed synced with the host and ran an fp64 SVD at every convergence check, the likely cost (not profiled on the GPU). Even `lora` through inilora takes {lora_qv:.1f} s, the floor under every inilora cell: on the CPU a
  profile puts that time in the per-layer checks and measurements (finite weights, the weight's fingerprint hashed
  on the host, the report's error and drift). Neither is tuned for GPUs yet.
- **Training costs the same whatever the start**: one step of 4 × 512 tokens takes {step_qv} s with q/v adapters and
  {step_all} s with all linear layers, for every cell.
- **Logits**: `lora` leaves them as they were (change {lora_change:.0f}); every residual start, PEFT's `pissa`
  included, changes them by {residual_change} of their largest magnitude: the bf16 rounding of `W − B0·A0` on a model of
  random weights (`residual_fp32=True` keeps the residual in fp32).
- **The fit on the GPU** (real q/v matrices, fp32, r = 8; each cell a fresh process): batched Adam is
  {gpu_speedup:.0f}× faster than the published loop on MiniLM ({cpu_speedup:.2g}× on one CPU thread): its per-step launches and host
  sync are what the GPU exposes. On layers this small PEFT's `pissa` (a full SVD) beats the closed form, which
  takes {svd_vs_pissa_small}× its time; at 7B shapes, above, it is the other way round."""


def _fit_table(fit: dict) -> str:
    columns = by_column([run for run in fit["runs"] if (run["device"], run["dtype"]) == ("cuda", "float32")])
    lines = ["| | " + " | ".join(f"{MODEL_NAMES[model]} r={r}" for model, r in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label, cell in FIT_ROWS:
        values = []
        for column, cells in columns.items():
            if cell not in cells:
                values.append("not measured (time limit)")
                continue
            value = f"{cells[cell]['seconds']:.2f}" if cells[cell]["seconds"] < 100 else f"{cells[cell]['seconds']:,.0f}"
            up = speedup(cells, cell) if cell != "published-loop" else None
            values.append(value + (f" — {up:.0f}× the published loop" if up else ""))
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _cells(gpu: dict, targets: str) -> dict:
    return {c["cell"]: c for c in gpu["cells"] if c["targets"] == targets}


def readme_block(gpu: dict, fit: dict, cpu_fit: dict) -> str:
    """``gpu``: results/gpu/gpu_7b.json; ``fit``: results/gpu/fit_benchmark_cuda.json; ``cpu_fit``: the CPU's
    (results/fit_benchmark.json), for the errors of the randomized inits and the CPU's speed-up."""
    qv, every = _cells(gpu, "q/v"), _cells(gpu, "all-linear")
    residual = [c["logit_change"] for c in gpu["cells"] if c["cell"] != "lora"]
    columns = by_column([run for run in fit["runs"] if (run["device"], run["dtype"]) == ("cuda", "float32")])
    steps = lambda cells: [c["step_seconds"] for c in cells.values()]
    holds = claim_check(SOURCE, "READING", __file__)
    holds(qv["inilora svd"]["seconds"] < qv["peft pissa"]["seconds"], "svd faster than PEFT's pissa at 7B")
    holds(qv["inilora svd_randomized"]["seconds"] > qv["peft pissa_niter_4"]["seconds"]
          and every["inilora svd_randomized"]["seconds"] > every["peft pissa_niter_4"]["seconds"],
          "svd_randomized is not the fast path on this GPU")
    holds(max(steps(qv)) < 1.1 * min(steps(qv)) and max(steps(every)) < 1.1 * min(steps(every)),
          "training costs the same whatever the start (within 10%)")
    holds(qv["lora"]["logit_change"] == 0, "lora leaves the logits as they were")
    small = [vs_pissa(cells, "svd") for cells in columns.values() if "svd" in cells and "peft-pissa" in cells]
    holds(all(ratio > 1 for ratio in small), "on small layers PEFT's pissa beats the closed form")
    minilm = columns["minilm", 8]
    cpu = by_column([run for run in cpu_fit["runs"] if (run["device"], run["dtype"]) == ("cpu", "float32")])
    cpu_every = lambda cell: [cells[cell]["max_ratio"] for cells in cpu.values()]
    # the model's own size: a Llama-2-7B shape in bf16 (the JSON records the cells, not the model)
    model_gib = _llama_7b_bytes() / 2**30
    reading = READING.format(
        svd_qv=qv["inilora svd"]["seconds"], pissa_qv=qv["peft pissa"]["seconds"],
        svd_vs_pissa=qv["inilora svd"]["seconds"] / qv["peft pissa"]["seconds"],
        all_matrices=every["inilora svd"]["matrices"], svd_all=every["inilora svd"]["seconds"],
        peak_max=math.ceil(10 * max(c["peak_gib"] for c in gpu["cells"])) / 10, model_gib=model_gib,
        randomized_qv=qv["inilora svd_randomized"]["seconds"], niter_qv=qv["peft pissa_niter_4"]["seconds"],
        niter_slower=qv["inilora svd_randomized"]["seconds"] / qv["peft pissa_niter_4"]["seconds"],
        niter_slower_all=every["inilora svd_randomized"]["seconds"] / every["peft pissa_niter_4"]["seconds"],
        lora_qv=qv["lora"]["seconds"], step_qv=span(steps(qv), ".3f"), step_all=span(steps(every), ".3f"),
        lora_change=qv["lora"]["logit_change"], residual_change=span(residual, ".1e").replace("e-0", "e-"),
        gpu_speedup=speedup(minilm, "adam-batched"), svd_vs_pissa_small=span(small, ".1f"),
        cpu_speedup=speedup(cpu["minilm", 8], "adam-batched"),
        niter_error=span([100 * (ratio - 1) for ratio in cpu_every("peft-pissa_niter_4")], ".1f"),
        randomized_error=bound(max(ratio - 1 for ratio in cpu_every("svd-randomized"))),
        run_commit=re.sub(r"\s.*", "", gpu.get("commit", ""))[:7])
    commit = re.sub(r"\s.*", "", gpu.get("commit", ""))[:7]
    head = (f"The prepared accelerator run (`benchmarks/gpu_check.sh`) on one {gpu['device_name']} (torch {gpu['torch']}, "
            f"transformers {gpu['transformers']}, peft {gpu['peft']}{', code at ' + commit if commit else ''}; "
            f"[`results/gpu/`](results/gpu/gpu_7b.md)). A Llama-2-7B-shaped model in bf16 (random weights, fixed seed), "
            f"r = {gpu['r']}, each cell on a fresh model; times synchronized, one run each:")
    return "\n".join(["", head, "", table(gpu), "", reading, "", "The fit benchmark's cells on the same GPU:", "",
                      _fit_table(fit), ""]) + "\n"


def _llama_7b_bytes() -> int:
    from gpu_7b import SIZES

    s = SIZES["7b"]
    layer = 4 * s["hidden_size"] ** 2 + 3 * s["hidden_size"] * s["intermediate_size"] + 2 * s["hidden_size"]
    return 2 * (s["num_hidden_layers"] * layer + 2 * s["vocab_size"] * s["hidden_size"] + s["hidden_size"])


def table(data: dict) -> str:
    """One row per cell (results/gpu/gpu_7b.md's, and the block's)."""
    lines = ["| cell | targets | matrices | init seconds | peak GPU memory over the model (GiB) | logit change | "
             "training step (s, 4 × 512 tokens) |", "|---|---|---|---|---|---|---|"]
    for c in data["cells"]:
        lines.append(f"| {c['cell']} | {c['targets']} | {c['matrices']} | {c['seconds']:.2f} | "
                     f"{c.get('peak_gib', float('nan')):.2f} | {c['logit_change']:.1e} | {c['step_seconds']:.3f} |")
    return "\n".join(lines)


def results_markdown(data: dict) -> str:
    lines = [f"# {data['size']} on one GPU: initialization, end to end (bf16, r = {data['r']})", "",
             f"Device: {data['device_name']}; torch {data['torch']}, transformers {data['transformers']}, "
             f"peft {data['peft']}; command `{data['command']}`.", "", table(data),
             "", f"Not run (time budget): {', '.join(data['skipped']) or 'none'}."]
    return "\n".join(lines) + "\n"
