"""What initialization costs at 7B scale: Llama-2-7B-shaped matrices (hidden 4096, MLP 11008), one
thread, each cell in a fresh process, cells interleaved over repeats (the CPU is shared: medians).

Methods: inilora's closed form ``svd``, ``svd_randomized``, the published ``adam`` (per-step time,
scaled to 20,000 steps) and PEFT's own ``pissa`` / ``pissa_niter_4`` (PEFT's API on a one-layer
module). Weights: a trained-like decaying spectrum (S_i ∝ i^-0.6, random singular vectors, entries
of std ≈ 0.02, as tests/conftest.py's realistic_matrix), written once per shape so a cell's peak memory is the method's, not the generator's.
The full-model table is an extrapolation (sum over a 32-layer model's matrices, divided by W ranks).

    PYTHONPATH=src python benchmarks/scale_7b.py --repeats 2
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
SHAPES = {"attn 4096x4096": (4096, 4096), "mlp up/gate 11008x4096": (11008, 4096), "mlp down 4096x11008": (4096, 11008)}
# matrices per decoder layer of Llama-2-7B (no grouped-query attention), by shape key
PER_LAYER = {"q/v": {"attn 4096x4096": 2},
             "all-linear": {"attn 4096x4096": 4, "mlp up/gate 11008x4096": 2, "mlp down 4096x11008": 1}}
LAYERS = 32
PUBLISHED_STEPS = 20_000
METHODS = ("svd", "svd_randomized", "adam", "pissa", "pissa_niter_4")


def weight_file(shape: tuple[int, int], cache: Path) -> Path:
    import torch
    from safetensors.torch import save_file
    path = cache / f"w_{shape[0]}x{shape[1]}.safetensors"
    if not path.exists():
        g = torch.Generator().manual_seed(0)  # tests/conftest.py's realistic_matrix, at full size
        k = min(shape)
        U, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=g))
        V, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=g))
        W = (U * torch.arange(1, k + 1, dtype=torch.float32) ** -0.6) @ V.T
        cache.mkdir(parents=True, exist_ok=True)
        save_file({"w": (W * (0.02 / W.std())).contiguous()}, str(path))
    return path


def run_cell(method: str, path: str, r: int, adam_steps: int) -> dict:
    """One measurement, in this (fresh) process."""
    import torch
    from safetensors.torch import load_file
    from torch import nn
    sys.path.insert(0, str(HERE))
    from _common import measure
    torch.set_num_threads(1)
    W = load_file(path)["w"]
    if method == "svd":
        from inilora.fit import fit_svd
        _, seconds, peak = measure(fit_svd, W, r)
    elif method == "svd_randomized":
        from inilora.fit import fit_svd_randomized
        from inilora.methods import layer_generator
        from inilora.options import RandomizedSVD
        o = RandomizedSVD()
        _, seconds, peak = measure(fit_svd_randomized, W, r, o.block, o.niter, layer_generator(0, "w"))
    elif method == "adam":
        from inilora.fit import draw_start, fit_adam
        from inilora.methods import layer_generator
        from inilora.options import AdamSchedule
        U, P = draw_start(tuple(W.shape), r, float(W.std()), layer_generator(0, "w"))
        fit_adam(W[None], U[None], P[None], AdamSchedule(steps=2))  # warm-up
        _, seconds, peak = measure(fit_adam, W[None], U[None], P[None], AdamSchedule(steps=adam_steps))
        return {"step_s": seconds / adam_steps, "seconds": seconds / adam_steps * PUBLISHED_STEPS,
                "peak_bytes": peak, "steps_timed": adam_steps}
    else:  # PEFT's own initialization, through its API on a one-layer module
        import peft
        layer = nn.utils.skip_init(nn.Linear, W.shape[1], W.shape[0], bias=False)
        layer.weight = nn.Parameter(W, requires_grad=False)
        model = nn.Sequential()
        model.add_module("proj", layer)
        config = peft.LoraConfig(r=r, lora_alpha=r, target_modules=["proj"], init_lora_weights=method)
        _, seconds, peak = measure(peft.get_peft_model, model, config)
    return {"seconds": seconds, "peak_bytes": peak}


def cell_in_fresh_process(method: str, path: Path, r: int, adam_steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, __file__, "--cell", method, str(path), str(r), str(adam_steps)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def early_stop_fraction(r: int) -> float | None:
    """How much of the full 20,000-step Adam fit early stop (``early_stop_tol=1e-7``) took, as a fraction of
    the time: SmolLM2-135M q/v at rank r in the fit benchmark (results/fit_benchmark.json), the largest real
    matrices measured. At 7B shapes this is an extrapolation (a larger matrix may plateau later or earlier)."""
    path = ROOT / "results" / "fit_benchmark.json"
    if not path.exists():
        return None
    seconds = {run["cell"]: run["seconds"] for run in json.loads(path.read_text())["runs"]
               if isinstance(run, dict) and run.get("model") == "smollm2" and run.get("rank") == r}
    if "adam-early-stop" not in seconds or "adam-batched" not in seconds:
        return None
    return seconds["adam-early-stop"] / seconds["adam-batched"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--adam-steps", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "inilora" / "scale_7b"))
    parser.add_argument("--out", default=str(ROOT / "results" / "scale_7b"))
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--from-log", help="summarize the cells a (partial) run printed, instead of running")
    args = parser.parse_args()
    cells: dict[tuple[str, str], list[dict]] = {}
    if args.from_log:
        for line in Path(args.from_log).read_text().splitlines():
            if line.startswith("[") and ": {" in line:
                head, cell = line.split(": ", 1)
                key, method = head.split("] ", 1)[1].rsplit(" ", 1)
                cells.setdefault((key, method), []).append(ast.literal_eval(cell))
        load = [tuple(float(x) for x in line.split()[1:4]) for line in Path(args.from_log).read_text().splitlines()
                if line.startswith("load ")]
        args.methods = [m for m in args.methods if any(m == cm for _, cm in cells)]
    else:
        files = {key: weight_file(SHAPES[key], Path(args.cache)) for key in args.shapes}
        load = [os.getloadavg()]
        for repeat in range(args.repeats):  # interleaved: every cell once per repeat
            for key in args.shapes:
                for method in args.methods:
                    result = cell_in_fresh_process(method, files[key], args.r, args.adam_steps)
                    cells.setdefault((key, method), []).append(result)
                    print(f"[{repeat}] {key} {method}: {result}", flush=True)
            load.append(os.getloadavg())
            print("load", *load[-1], flush=True)
    summarize(cells, args, load)


def summarize(cells: dict, args, load: list) -> None:
    table = {}
    for (key, method), runs in cells.items():
        table.setdefault(key, {})[method] = {
            "seconds_median": statistics.median(r["seconds"] for r in runs),
            "peak_bytes_median": statistics.median(r["peak_bytes"] for r in runs),
            "weight_bytes": SHAPES[key][0] * SHAPES[key][1] * 4, "runs": runs}
    fraction = early_stop_fraction(args.r)
    model = {}
    for scope, counts in PER_LAYER.items():
        if not all(k in table for k in counts):
            continue
        for method in [m for m in args.methods if all(m in table[k] for k in counts)]:
            total = LAYERS * sum(n * table[k][method]["seconds_median"] for k, n in counts.items())
            model[f"{scope} {method}"] = {f"hours_on_{w}_ranks": total / w / 3600 for w in args.ranks}
            if method == "adam" and fraction is not None:
                model[f"{scope} adam early stop"] = {f"hours_on_{w}_ranks": total * fraction / w / 3600
                                                     for w in args.ranks}
    from _common import provenance

    result = {"provenance": provenance(), "command": "PYTHONPATH=src python benchmarks/scale_7b.py " + " ".join(sys.argv[1:]),
              "ratios_vs_peft": ratios(table),
              "r": args.r, "threads": 1, "loadavg_1_5_15_per_repeat": load, "cpu_count": os.cpu_count(),
              "matrices": table, "extrapolated_7b_model": model, "early_stop_fraction": fraction,
              "note": "per-matrix cells measured; full-model rows are EXTRAPOLATED (32 layers, ideal split over "
                      "ranks); adam = measured per-step time x 20,000; adam early stop = that x early_stop_fraction "
                      "(the share of the full fit's time early stop took on SmolLM2-135M at this rank)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}.json; python benchmarks/render rewrites its Markdown and the blocks that show it")


def ratios(table: dict) -> dict:
    """Our closed forms' median time over PEFT's: svd / pissa and svd_randomized / pissa_niter_4."""
    pairs = {"svd / pissa": ("svd", "pissa"), "svd_randomized / pissa_niter_4": ("svd_randomized", "pissa_niter_4")}
    return {key: {name: row[a]["seconds_median"] / row[b]["seconds_median"] for name, (a, b) in pairs.items()
                  if a in row and b in row} for key, row in table.items()}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--cell":
        print(json.dumps(run_cell(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
    else:
        main()
