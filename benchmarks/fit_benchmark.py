"""Fit benchmark: how fast and how exact each way of initializing the same layers is.

For each model (MiniLM, SmolLM2-135M; q/v projections) and rank, in one run on one machine, every
cell runs in a fresh process (so peak-memory readings do not inherit another cell's allocator state):

- ``published-loop``  the published procedure: one matrix at a time, autograd, ``loss.item()`` every step
                      (timed on a sample of matrices per shape and scaled to all of them: its cost is
                      linear in the number of matrices by construction)
- ``adam-batched``    ``inilora.get_peft_model(..., solver="adam")``: the same fit, batched, no host sync
- ``adam-early-stop`` the same with the opt-in early stop
- ``svd``             ``solver="svd"``: the closed-form optimum
- ``svd-randomized``  ``solver="svd_randomized"``
- ``peft-pissa``, ``peft-pissa_niter_4``: PEFT's own PiSSA init of the same layers

Reported per cell: wall time, peak resident-memory rise over the loaded model (as a fraction of the
model's size), and the worst relative error vs the Eckart–Young optimum. The published loop's factors
are compared with the batched ones on the sampled matrices (same seed).

    python benchmarks/fit_benchmark.py                      # everything, CPU
    python benchmarks/fit_benchmark.py --models minilm --ranks 8 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import TARGETS, load, lora_config, measure, provenance, target_weights  # noqa: E402

CELLS = ("adam-batched", "published-loop", "adam-early-stop", "svd", "svd-randomized", "peft-pissa",
         "peft-pissa_niter_4")
EARLY_STOP = {"early_stop_tol": 1e-7, "early_stop_every": 500}
PUBLISHED_STEPS = 20_000


def errors(weights: dict, factors: dict) -> dict:
    """Per matrix: relative error of B0·A0 (s = 1) vs W, the optimum, and their ratio — all in fp64, so
    the reference itself is exact to far below the 1e-6 the closed form is held to."""
    import torch

    from inilora.linalg import relative_tail_energy

    out = {}
    for name, W in weights.items():
        W = W.double()
        A0, B0 = (f.double().to(W.device) for f in factors[name])
        error = float(torch.linalg.matrix_norm(W - B0 @ A0) / torch.linalg.matrix_norm(W))
        optimum = relative_tail_energy(torch.linalg.svdvals(W), A0.shape[0])
        out[name] = {"error": error, "optimum": optimum, "ratio": error / optimum}
    return out


def warm_up(device: str) -> None:
    """Load the code paths (LAPACK, PEFT, Adam, the closed form's iteration and the batched block Krylov) on tiny
    inputs so they are not counted as memory."""
    import peft
    import torch
    from peft import LoraConfig
    from transformers import BertConfig, BertModel

    import inilora
    from inilora.fit import fit_svd, fit_svd_randomized_batch

    # large enough for the iteration and Krylov paths; its own generator leaves the global one as the cells find it
    matrices = torch.randn(2, 256, 256, generator=torch.Generator().manual_seed(0)).to(device)
    fit_svd(matrices[0], 4)
    fit_svd_randomized_batch(matrices, 4, 16, 60, [torch.Generator().manual_seed(i) for i in range(2)], scratch=True)

    tiny = lambda: BertModel(BertConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2)).to(device)
    inilora.get_peft_model(tiny(), LoraConfig(r=4, target_modules=["query"]), method="inilora", steps=10, progress=False,
                           cache=False)
    peft.get_peft_model(tiny(), LoraConfig(r=4, target_modules=["query"], init_lora_weights="pissa_niter_2"))
    torch.linalg.svdvals(torch.randn(8, 8, device=device))


def run_cell(args) -> dict:
    import peft
    import torch

    import inilora
    from inilora.fit import draw_start, fit_adam_published
    from inilora.methods import Target, layer_generator
    from inilora.methods.inilora import published_sigmas
    from inilora.options import AdamSchedule, InitOptions

    torch.manual_seed(0)
    warm_up(args.device)
    model = load(args.model, args.device, args.dtype, args.pack)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    weights = target_weights(model, args.model)
    cell, r = args.cell, args.rank
    # threads: the cell's own (torch's default, or OMP_NUM_THREADS): Adam's many small steps slow down 10x and
    # more when its threads outnumber the free cores
    result = {"model": args.model, "rank": r, "cell": cell, "device": args.device, "dtype": args.dtype,
              "matrices": len(weights), "model_bytes": size, "threads": torch.get_num_threads()}
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:  # on a GPU the memory that matters is the device's: peak allocated over what the model holds
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()

    if cell == "published-loop":
        options = InitOptions(adam=AdamSchedule(steps=args.steps))
        targets = [Target(n, W, r, 1.0) for n, W in weights.items()]
        sigmas = published_sigmas(targets, options)
        by_shape: dict = {}
        for t in targets:
            by_shape.setdefault(tuple(t.weight.shape), []).append(t)
        sample = [t for group in by_shape.values() for t in group[: args.sample]]

        def loop():
            out, seconds = {}, {}
            for t in sample:
                start = time.perf_counter()
                U, P = draw_start(tuple(t.weight.shape), r, sigmas[t.module_name], layer_generator(0, t.name))
                A0, B0, _ = fit_adam_published(t.weight, U, P, AdamSchedule(steps=args.steps))
                sync()
                seconds[t.name] = time.perf_counter() - start
                out[t.name] = (A0, B0)
            return out, seconds

        (factors, seconds), _, rise = measure(loop)
        per_shape = {shape: statistics.median(seconds[t.name] for t in group[: args.sample])
                     for shape, group in by_shape.items()}
        result["seconds"] = sum(per_shape[shape] * len(group) for shape, group in by_shape.items())
        result["seconds_measured"] = sum(seconds.values())
        result["sampled"] = len(sample)
        weights = {t.name: weights[t.name] for t in sample}
        torch.save({n: (a.cpu(), b.cpu()) for n, (a, b) in factors.items()}, args.factors_out)
    elif cell.startswith("peft-"):
        config = lora_config(args.model, r, init_lora_weights=cell.removeprefix("peft-"))

        def init():
            m = peft.get_peft_model(model, config)
            sync()
            return m

        peft_model, seconds, rise = measure(init)
        factors = {n: (layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach())
                   for n, layer in peft_model.base_model.model.named_modules()
                   if n in weights and hasattr(layer, "lora_A")}
        result["seconds"] = seconds
    else:
        options = {"adam-batched": {"solver": "adam"}, "adam-early-stop": {"solver": "adam", **EARLY_STOP},
                   "svd": {"solver": "svd"}, "svd-randomized": {"solver": "svd_randomized"}}[cell]

        def init():
            m = inilora.get_peft_model(model, lora_config(args.model, r), method="inilora", steps=args.steps,
                                       progress=False, cache=False, **options)
            sync()
            return m

        peft_model, seconds, rise = measure(init)
        factors = {n: (layer.A0, layer.B0) for n, layer in peft_model.inilora.layers.items()}
        result["seconds"] = seconds
        if cell == "adam-batched":
            torch.save({n: (a.cpu(), b.cpu()) for n, (a, b) in factors.items()}, args.factors_out)
    score(result, errors(weights, factors))
    result["peak_rise_fraction"] = rise / size
    if cuda:
        result["cuda_peak_rise_fraction"] = (torch.cuda.max_memory_allocated() - allocated_before) / size
    return result


def score(run: dict, per_matrix: dict) -> None:
    """Record a cell's per-matrix errors and their summary."""
    run["per_matrix"] = per_matrix
    run["max_ratio"] = max(v["ratio"] for v in per_matrix.values())
    run["mean_error"] = statistics.fmean(v["error"] for v in per_matrix.values())


def compare_with_batched(run: dict, runs: list, work: Path) -> None:
    """Agreement of a cell with ``adam-batched`` on the matrices both fitted: the gap in relative error
    (and, for the published loop, the largest factor difference; same seed, same draws)."""
    import torch

    batched = next((b for b in runs if b["cell"] == "adam-batched" and b["model"] == run["model"]
                    and b["rank"] == run["rank"] and b["device"] == run["device"] and b["dtype"] == run["dtype"]), None)
    if batched is None:
        return
    gaps = [abs(v["error"] - batched["per_matrix"][n]["error"]) / batched["per_matrix"][n]["error"]
            for n, v in run["per_matrix"].items()]
    run["max_error_gap_vs_batched"] = max(gaps)
    if run["cell"] == "published-loop":
        tag = f"{run['model']}-{run['rank']}"
        published = torch.load(work / f"{tag}-published-loop.pt")
        ours = torch.load(work / f"{tag}-adam-batched.pt")
        run["max_abs_factor_diff_vs_batched"] = max(
            max((a - ours[n][0]).abs().max().item(), (b - ours[n][1]).abs().max().item())
            for n, (a, b) in published.items())


def rescore(runs: list, work: Path, args) -> list:
    """Recompute per-matrix errors (fp64) for the cells whose factors were saved, then the comparisons."""
    import torch

    for run in runs:
        path = work / f"{run['model']}-{run['rank']}-{run['cell']}.pt"
        if run["cell"] in ("adam-batched", "published-loop") and path.is_file() and run["device"] == args.device:
            factors = torch.load(path)
            model = load(run["model"], "cpu", run["dtype"])
            weights = {n: W for n, W in target_weights(model, run["model"]).items() if n in factors}
            score(run, errors(weights, factors))
    for run in runs:
        if run["cell"] in ("published-loop", "adam-early-stop"):
            compare_with_batched(run, [r for r in runs if r is not run], work)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=sorted(TARGETS))
    parser.add_argument("--ranks", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--steps", type=int, default=PUBLISHED_STEPS)
    parser.add_argument("--sample", type=int, default=2, help="matrices per shape timed in the published loop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "fit_benchmark.json")
    parser.add_argument("--pack", type=Path, help="load the target matrices from benchmarks/gpu_pack.py's folder "
                                                       "(the accelerator run), not from the installed models")
    parser.add_argument("--factors-dir", type=Path, help="keep the adam/published factors here (default: a temp dir)")
    parser.add_argument("--rescore", action="store_true",
                        help="recompute the errors of the saved adam/published factors in --factors-dir, run nothing")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--factors-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.cell:  # a child process: one cell, JSON on the last line of stdout
        print(json.dumps(run_cell(args)))
        return

    previous = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    runs = [run for run in previous["runs"]
            if not (run["device"] == args.device and run["dtype"] == args.dtype and run["model"] in args.models
                    and run["rank"] in args.ranks and run["cell"] in args.cells)]
    made_by = provenance()  # each run made here records the commit, versions and init versions that made it
    work = args.factors_dir or Path(tempfile.mkdtemp(prefix="fit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.rescore:
        runs = rescore(previous["runs"], work, args)
        args.cells = []  # nothing to run
    for model in args.models:
        for r in args.ranks:
            for cell in args.cells:
                command = [sys.executable, __file__, "--cell", cell, "--model", model, "--rank", str(r),
                           "--steps", str(args.steps), "--sample", str(args.sample), "--device", args.device,
                           "--dtype", args.dtype, "--factors-out", str(work / f"{model}-{r}-{cell}.pt")]
                command += ["--pack", str(args.pack)] if args.pack else []
                started = time.time()
                out = subprocess.run(command, capture_output=True, text=True,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
                if out.returncode != 0:
                    sys.exit(f"cell {model} r={r} {cell} failed:\n{out.stderr[-3000:]}")
                run = {**json.loads(out.stdout.strip().splitlines()[-1]), "provenance": made_by}
                if cell in ("published-loop", "adam-early-stop"):
                    compare_with_batched(run, runs, work)
                runs.append(run)
                write(args, previous, runs)  # after every cell: a run stopped at its time limit keeps what it measured
                print(f"{model:8s} r={r:<3d} {cell:20s} {run['seconds']:9.2f} s  peak +{run['peak_rise_fraction']:.3f}"
                      f" of model  max error/optimum {run['max_ratio']:.7f}   ({time.time() - started:.0f} s)",
                      flush=True)
    write(args, previous, runs)
    print(f"wrote {args.out}; python benchmarks/render rewrites {args.out.with_suffix('.md').name} and the blocks "
          "that show it")


def write(args, previous: dict, runs: list) -> dict:
    import torch

    from inilora.experiments.provenance import machine as this_machine

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # the CPU's model name, cores, platform and GPU (platform.processor() is empty on Linux), torch, threads
    machine = {**this_machine(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    command = "python benchmarks/fit_benchmark.py " + " ".join(sys.argv[1:])
    commands = previous.get("commands", [previous["command"]] if "command" in previous else []) + [command]
    data = {"machine": previous.get("machine", machine), "commands": commands, "runs": runs}
    args.out.write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()
