"""The sharded-fit paragraph (docs/large-models.md): two processes against one (results/sharded_fit.json, written
by benchmarks/sharded_fit.py)."""

from __future__ import annotations

import statistics

from .formatting import claim_check

README_TEXT = """Under `torch.distributed` (torchrun, accelerate) the IniLoRA fit is split across the ranks: whole same-shape
chunks, balanced by cost; each rank fits its share, the factors are broadcast from the rank that fitted them,
and every rank ends with bit-identical factors and residuals (`tests/test_distributed.py`: 2 processes on
gloo, `adam`, `svd` and `svd_randomized` equal to a single-process run; a failure on one rank ends every rank
with the error). The report's `fitted_by_rank` says who fitted what; `shard_fit=False` turns it off. Two processes fit SmolLM2-135M's q/v {speedup:.2f}× faster than one ({steps:,} Adam steps, one thread each, medians of {repeats} on a quiet machine; [`results/sharded_fit.json`](results/sharded_fit.json))."""


def readme_paragraph(result: dict) -> str:
    """The page's paragraph on the sharded fit (``result``: results/sharded_fit.json): the speed-up of the
    medians, recomputed from the runs; its words are checked against them."""
    claims = ((set(result["runs"]) == {"1", "2"}, "two processes against one"),
              (result["model"].startswith("SmolLM2-135M q/v"), "SmolLM2-135M's q/v"),
              (result["threads_per_process"] == 1, "one thread each"),
              (all(run["fitted_by_rank"] == [0, 1] for run in result["runs"]["2"]), "both processes fitted a share"),
              (len({len(runs) for runs in result["runs"].values()}) == 1, "the same number of repeats for each"),
              (max(load[0] for load in result["loadavg_1_5_15_per_repeat"]) <= result["cpu_count"], "a quiet machine"))
    for holds, claim in claims:
        claim_check("results/sharded_fit.json", "README_TEXT", __file__)(holds, claim)
    medians = {n: statistics.median(run["seconds"] for run in runs) for n, runs in result["runs"].items()}
    return README_TEXT.format(speedup=medians["1"] / medians["2"], steps=result["steps"],
                              repeats=len(result["runs"]["1"]))
