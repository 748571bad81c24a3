"""The 7B-shape cost block (docs/large-models.md): per-matrix times at Llama-2-7B shapes and the extrapolated
whole model (results/scale_7b.json, written by benchmarks/scale_7b.py), with the closed forms' errors from the
fit benchmark."""

from __future__ import annotations

from scale_7b import LAYERS, METHODS, PUBLISHED_STEPS

from inilora.methods import REGISTRY

from .formatting import bound

README_NAMES = {"svd": "`svd` (closed form)", "svd_randomized": "`svd_randomized`",
                "adam": f"`adam` ({PUBLISHED_STEPS // 1000}k steps)", "pissa": "PEFT `pissa`",
                "pissa_niter_4": "PEFT `pissa_niter_4`"}
README_TEXT = """{superseded}Cost at 7B shapes, one CPU thread per matrix, r = {r}, Llama-2-7B-shaped matrices with a trained-like
spectrum (`benchmarks/scale_7b.py`, each cell in a fresh process, {repeats} interleaved repeats, medians, on a quiet
{cpus}-core machine; [`results/scale_7b.md`](results/scale_7b.md)):

{table}

The closed form takes {svd_pissa} PEFT `pissa`'s time (both exact); `svd_randomized` {randomized_niter}
`pissa_niter_4`'s, and on SmolLM2's weights it is within {randomized_error} of the optimum where `pissa_niter_4` is
{niter_error} off ([fit benchmark](docs/fit.md#fit-benchmark)). Extrapolated to a whole 7B model ({layers} layers, ideal split over ranks):
q/v with `svd` {qv_svd:.3f} h on one thread; with the published `adam` fit {qv_adam:.1f} h on one thread and {qv_adam_8:.1f} h over 8
ranks (early stop, extrapolated from the share of time it took on SmolLM2: {qv_stop:.1f} h / {qv_stop_8:.2f} h); all linear layers
`svd` {all_svd:.3f} h, `adam` {all_adam:.0f} h / {all_adam_8:.1f} h. The closed form's top-r triplets come from subspace iteration with a
convergence check (falling back to a full eigendecomposition), within {svd_error} of the optimum on SmolLM2 and
MiniLM weights."""


def superseded(result: dict) -> str:
    """A warning when the closed-form solvers changed after these cells were measured (their init versions then
    and now), pointing to the table made with today's code; empty when they did not."""
    made = result["provenance"]["init_versions"]["inilora"]
    now = {solver: REGISTRY["inilora"].init_version(solver) or 1 for solver in ("svd", "svd_randomized")}
    changed = [f"`{solver}` version {made.get(solver, 1)} then, {version} now" for solver, version in now.items()
               if made.get(solver, 1) != version]
    if not changed:
        return ""
    return (f"**Measured with older solvers** (commit {result['provenance']['commit'][:7]}; {'; '.join(changed)}): "
            "the times below are those solvers' own. Today's initialization times against PEFT's, the whole "
            "`get_peft_model` included, are in [`results/init_speed.md`](results/init_speed.md).\n\n")


def _readme_seconds(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s" if seconds < 100 else f"{seconds:,.0f} s"


def readme_block(result: dict, fit: dict) -> str:
    """The page's 7B section: per-matrix medians, the ratios to PEFT's inits, the extrapolated full model, and
    the closed forms' errors on real weights from the fit benchmark (``fit``: results/fit_benchmark.json)."""
    methods = [m for m in METHODS if all(m in row for row in result["matrices"].values())]
    table = ["| per matrix | " + " | ".join(README_NAMES[m] for m in methods) + " |", "|---|" + "---|" * len(methods)]
    table += [f"| {key.split()[-1].replace('x', '×')} | "
              + " | ".join(_readme_seconds(row[m]["seconds_median"]) for m in methods) + " |"
              for key, row in result["matrices"].items()]

    def spread(pair: str, digits: int) -> str:
        values = [ratio[pair] for ratio in result["ratios_vs_peft"].values()]
        return f"{min(values):.{digits}f}–{max(values):.{digits}f}×"

    def worst(cell: str, models: tuple[str, ...]) -> float:
        return max(run["max_ratio"] - 1 for run in fit["runs"] if run["cell"] == cell and run["model"] in models)

    niter = sorted(run["max_ratio"] - 1 for run in fit["runs"] if run["cell"] == "peft-pissa_niter_4"
                   and run["model"] == "smollm2")
    hours = result["extrapolated_7b_model"]
    return README_TEXT.format(
        superseded=superseded(result), r=result["r"], repeats=min(len(cell["runs"]) for row in result["matrices"].values() for cell in row.values()),
        cpus=result["cpu_count"], table="\n".join(table), layers=LAYERS,
        svd_pissa=spread("svd / pissa", 3), randomized_niter=spread("svd_randomized / pissa_niter_4", 2),
        randomized_error=bound(worst("svd-randomized", ("smollm2",))),
        niter_error=f"{100 * niter[0]:.1f}–{100 * niter[-1]:.1f}%",
        svd_error=bound(worst("svd", ("smollm2", "minilm"))),
        qv_svd=hours["q/v svd"]["hours_on_1_ranks"], qv_adam=hours["q/v adam"]["hours_on_1_ranks"],
        qv_adam_8=hours["q/v adam"]["hours_on_8_ranks"], qv_stop=hours["q/v adam early stop"]["hours_on_1_ranks"],
        qv_stop_8=hours["q/v adam early stop"]["hours_on_8_ranks"], all_svd=hours["all-linear svd"]["hours_on_1_ranks"],
        all_adam=hours["all-linear adam"]["hours_on_1_ranks"], all_adam_8=hours["all-linear adam"]["hours_on_8_ranks"])


def results_markdown(result: dict) -> str:
    methods = [m for m in METHODS if any(m in row for row in result["matrices"].values())]
    lines = [f"# 7B-scale initialization cost (r = {result['r']}, 1 thread, CPU)", "", *([superseded(result).replace("](results/", "](").rstrip(), ""] if superseded(result) else []),
             f"Command: `{result['command']}`. Load averages (1/5/15 min) before and after each repeat: "
             f"{[tuple(round(x, 1) for x in l) for l in result['loadavg_1_5_15_per_repeat']]} on "
             f"{result['cpu_count']} cores (shared machine: times are medians of interleaved repeats).", "",
             "## Per matrix (measured)", "", "| matrix | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]
    for key, row in result["matrices"].items():
        cells = [f"{row[m]['seconds_median']:.2f} s / {row[m]['peak_bytes_median'] / row[m]['weight_bytes']:.2f}×W"
                 if m in row else "-" for m in methods]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios of median times: " + "; ".join(f"{k}: " + ", ".join(f"{n} {v:.3f}" for n, v in r.items())
                                                    for k, r in result["ratios_vs_peft"].items())]
    lines += ["", "Cells: median seconds / peak memory rise over the fp32 weight, as a multiple of the weight. "
              "`adam`: measured per-step time × 20,000 steps." + (
                  f" `adam early stop` rows: that × {result['early_stop_fraction']:.2f}, the share of the full fit's "
                  "time early stop (`early_stop_tol=1e-7`) took on SmolLM2-135M at this rank "
                  "(results/fit_benchmark.json) — an extrapolation on top of an extrapolation."
                  if result.get("early_stop_fraction") else ""), "",
              "## Full 7B model (EXTRAPOLATED: 32 layers, ideal split over ranks)", "",
              "| scope, method | " + " | ".join(next(iter(result["extrapolated_7b_model"].values()), {}).keys())
              + " |", "|---|" + "---|" * len(next(iter(result["extrapolated_7b_model"].values()), {}))]
    for name, hours in result["extrapolated_7b_model"].items():
        lines.append(f"| {name} | " + " | ".join(f"{h:.3g} h" for h in hours.values()) + " |")
    return "\n".join(lines) + "\n"
