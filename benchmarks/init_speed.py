"""Initialization time of inilora next to PEFT's own path, end to end through ``get_peft_model``, with the error
of each: ``lora`` vs PEFT's default, the closed form (``solver="svd"``) vs ``init_lora_weights="pissa"``, and
``svd_randomized`` vs ``"pissa_niter_4"``.

Models are built from their configs (MiniLM-L6: BERT, 6 layers, 384 wide; SmolLM2-135M: Llama, 30 layers, 576
wide, 3 KV heads) with q/v targets; a single-matrix model stands for the 7B shapes (4096², 4096×11008,
11008×4096). Every target weight is given a decaying spectrum (a Gaussian matrix with column j scaled by
(j+1)^-½, seeded), since freshly initialized weights have a flat one that no solver finds hard. Each pair of
cells is run interleaved in one process, ``--repeats`` times (median), torch pinned to ``--threads``; the ratio
is inilora's median over PEFT's. Error: ‖W − s·B0·A0‖_F / ‖W − W_r‖_F − 1 (the excess over the Eckart–Young
optimum, fp64), worst over the targets; PEFT's ``pissa`` runs a full SVD whatever r, so at the largest shapes
``--peft-once`` measures it once per shape and reuses its time for every rank (said in the JSON; no error
then: PEFT's truncated full SVD is the optimum up to rounding).

    PYTHONPATH=src python benchmarks/init_speed.py --out results/init_speed.json
    PYTHONPATH=src python benchmarks/render      # results/init_speed.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

SHAPES = {"4096x4096": (4096, 4096), "4096x11008": (4096, 11008), "11008x4096": (11008, 4096)}
PAIRS = {  # cell -> (inilora's options, PEFT's init_lora_weights)
    "lora": ({"method": "lora"}, True),
    "svd vs pissa": ({"method": "inilora", "solver": "svd"}, "pissa"),
    "svd_randomized vs pissa_niter_4": ({"method": "inilora", "solver": "svd_randomized"}, "pissa_niter_4"),
}


def decaying(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_features, in_features, generator=g) * (torch.arange(in_features) + 1.0).pow(-0.5)[None, :]
    return W * (0.02 * (out_features * in_features) ** 0.5 / W.norm())  # entries of about 0.02, as pretrained


class OneMatrix(nn.Module):
    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features, bias=False)


def build(name: str):
    """The model and its target names, with decaying spectra in the targets."""
    torch.manual_seed(0)
    if name == "minilm":
        from transformers import BertConfig, BertModel

        model = BertModel(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536))
        targets = ["query", "value"]
    elif name == "smollm2":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                             num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                             tie_word_embeddings=True))
        targets = ["q_proj", "v_proj"]
    else:
        model = OneMatrix(*SHAPES[name])
        targets = ["proj"]
    with torch.no_grad():
        for i, (n, m) in enumerate(model.named_modules()):
            if n.endswith(tuple(targets)):
                m.weight.copy_(decaying(*m.weight.shape, seed=i))
    return model.eval(), targets


def originals(model, targets) -> dict:
    return {n: m.weight.detach().double().clone() for n, m in model.named_modules() if n.endswith(tuple(targets))}


SPECTRA: dict = {}  # (model, target) -> its singular values (fp64), computed once per run


def worst_excess(peft_model, weights: dict, r: int, model_name: str) -> float:
    """max over targets of ‖W − s·B0·A0‖ / ‖W − W_r‖ − 1, from the layer's adapter factors (fp64)."""
    worst = 0.0
    inner = peft_model.base_model.model
    for name, W in weights.items():
        layer = inner.get_submodule(name)
        A, B = layer.lora_A["default"].weight.detach().double(), layer.lora_B["default"].weight.detach().double()
        if (model_name, name) not in SPECTRA:
            SPECTRA[model_name, name] = torch.linalg.svdvals(W)
        S = SPECTRA[model_name, name]
        optimum = float(S[r:].square().sum().sqrt())
        error = float(torch.linalg.matrix_norm(W - layer.scaling["default"] * (B @ A)))
        worst = max(worst, error / optimum - 1 if optimum > 0 else error)
    return worst


def run_one(base, targets, r: int, side: str, cell: str):
    import inilora
    import peft
    from peft import LoraConfig

    options, peft_init = PAIRS[cell]
    model = copy.deepcopy(base)
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    config = LoraConfig(r=r, lora_alpha=r, target_modules=targets,
                        init_lora_weights=True if side == "inilora" else peft_init)
    start = time.perf_counter()
    if side == "inilora":
        wrapped = inilora.get_peft_model(model, config, progress=False, cache=False, **options)
    else:
        wrapped = peft.get_peft_model(model, config)
    sync()
    return time.perf_counter() - start, wrapped


def measure(name: str, r: int, cell: str, repeats: int, peft_once: dict, device: str = "cpu", warmup: int = 1) -> dict:
    base, targets = build(name)
    base = base.to(device)
    weights = originals(base, targets)
    times = {"inilora": [], "peft": []}
    errors = {}
    once_key = (name, PAIRS[cell][1])
    for _ in range(warmup):  # untimed: first-call costs (lazy imports, the allocator's first pages) are not the init's
        for side in ("peft", "inilora"):
            if side == "inilora" or once_key not in peft_once:
                run_one(base, targets, r, side, cell)
    for i in range(repeats):
        for side in ("peft", "inilora") if i % 2 == 0 else ("inilora", "peft"):  # interleaved, order alternating
            if side == "peft" and once_key in peft_once:
                continue
            seconds, wrapped = run_one(base, targets, r, side, cell)
            times[side].append(seconds)
            if side not in errors and cell != "lora":
                errors[side] = worst_excess(wrapped, weights, r, name)
            del wrapped
    if once_key in peft_once:
        times["peft"] = peft_once[once_key]["times"]  # its error at this r is not measured
    row = {"model": name, "r": r, "cell": cell, "inilora_seconds": times["inilora"], "peft_seconds": times["peft"],
           "ratio": statistics.median(times["inilora"]) / statistics.median(times["peft"]),
           "inilora_excess": errors.get("inilora"), "peft_excess": errors.get("peft"),
           "peft_measured_once": once_key in peft_once, "warmup": warmup}
    if cell == "lora":
        row["lora_bound"] = 1.1 + 0.05 / statistics.median(times["peft"])  # 1.1× + 50 ms, as a ratio
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[8, 16, 64])
    parser.add_argument("--cells", nargs="+", default=list(PAIRS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each side first, per row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peft-once", action="store_true",
                        help="PEFT's pissa (a full SVD, the same work at every r) measured once per shape")
    parser.add_argument("--out", type=Path, default=Path("results/init_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from inilora.experiments.provenance import git_state, machine, versions

    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    rows = [row for row in previous.get("rows", [])
            if (row["model"], row["r"], row["cell"]) not in
            {(m, r, c) for m in args.models for r in args.ranks for c in args.cells}]
    peft_once: dict = {}
    for name in args.models:
        for cell in args.cells:
            for r in args.ranks:
                load_before = os.getloadavg()[0]
                row = measure(name, r, cell, args.repeats, peft_once, args.device, args.warmup)
                # the 1-minute load average before and after: how busy the machine's other cores were
                row["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                if args.peft_once and PAIRS[cell][1] == "pissa":
                    peft_once.setdefault((name, "pissa"), {"times": row["peft_seconds"]})
                row["git"] = git_state()  # rows of earlier runs keep the commit that measured them
                rows.append(row)
                print(f"{name:10s} r={r:<3d} {cell:32s} ratio {row['ratio']:.2f}  inilora "
                      f"{statistics.median(row['inilora_seconds']):.3f} s  peft {statistics.median(row['peft_seconds']):.3f} s"
                      f"  excess {row['inilora_excess']} vs {row['peft_excess']}", flush=True)
                data = {"machine": machine(), "threads": args.threads, "device": args.device, "repeats": args.repeats,
                        "git": git_state(), "versions": versions(), "command": " ".join(sys.argv), "rows": rows}
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(data, indent=1))  # its Markdown: python benchmarks/render


if __name__ == "__main__":
    main()
