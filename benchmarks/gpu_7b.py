"""A 7B model on one GPU: inilora's initializations of a Llama-2-7B-shaped model in bf16, end to end.

The model is built from a Llama-2-7B config (hidden 4096, MLP 11008, 32 layers; its weights are random, the
seed fixed, so every cell starts from the same model: initialization cost depends on the shapes, not on the
values). Per cell — a method, its solver and the target modules, at rank ``--r`` — a fresh model, then:

- ``seconds``: ``inilora.get_peft_model`` (or PEFT's own ``pissa`` / ``pissa_niter_4`` through PEFT's API, the
  baseline), synchronized;
- ``peak_gib``: the peak GPU memory it allocated over the model it started from;
- ``logit_change``: max |logits after − logits before| / max |logits before| on a fixed batch: 0 for
  ``lora`` (B = 0); for a residual method the bf16 rounding of ``W − s·B0·A0`` (PEFT's PiSSA does the same);
- ``step_seconds``: one training step (forward and backward, batch 4 × 512 tokens) of the adapter.

Cells run in order while ``--budget`` seconds last (a full SVD of all 224 matrices takes minutes; those come
last); the JSON and Markdown are rewritten after every cell, so a run stopped at its limit keeps what it measured.

    python benchmarks/gpu_7b.py --out $OUT/gpu_7b          # on the accelerator (benchmarks/gpu_check.sh)
    python benchmarks/gpu_7b.py --size tiny --device cpu   # the same cells on a tiny model (tests)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

SIZES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=256, max_position_embeddings=1024),
}
QV = ["q_proj", "v_proj"]
# (label, "inilora" or "peft", options, targets), cheapest first
CELLS = [
    ("lora", "inilora", {"method": "lora"}, QV),
    ("inilora svd_randomized", "inilora", {"method": "inilora", "solver": "svd_randomized"}, QV),
    ("peft pissa_niter_4", "peft", {"init_lora_weights": "pissa_niter_4"}, QV),
    ("inilora svd", "inilora", {"method": "inilora", "solver": "svd"}, QV),
    ("peft pissa", "peft", {"init_lora_weights": "pissa"}, QV),
    ("inilora svd_randomized", "inilora", {"method": "inilora", "solver": "svd_randomized"}, "all-linear"),
    ("peft pissa_niter_4", "peft", {"init_lora_weights": "pissa_niter_4"}, "all-linear"),
    ("inilora svd", "inilora", {"method": "inilora", "solver": "svd"}, "all-linear"),
]


def build(size: str, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(LlamaConfig(**SIZES[size]), dtype=torch.bfloat16)
    return model.eval()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_cell(cell: tuple, args, batch, reference) -> dict:
    import peft
    import torch

    import inilora

    label, kind, options, targets = cell
    model = build(args.size, args.device)
    config = peft.LoraConfig(r=args.r, lora_alpha=args.r, target_modules=targets, **(options if kind == "peft" else {}))
    cuda = args.device.startswith("cuda")
    if cuda:
        sync(args.device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    if kind == "peft":
        peft_model = peft.get_peft_model(model, config)
    else:
        peft_model = inilora.get_peft_model(model, config, progress=False, cache=False, **options)
    sync(args.device)
    result = {"cell": label, "targets": "q/v" if targets == QV else targets, "r": args.r,
              "seconds": time.perf_counter() - start,
              "matrices": sum(1 for m in peft_model.modules() if hasattr(m, "lora_A"))}
    if cuda:
        result["peak_gib"] = (torch.cuda.max_memory_allocated() - before) / 2**30
    with torch.no_grad():
        logits = peft_model(input_ids=batch[:1, :64]).logits.float()
    result["logit_change"] = float((logits - reference).abs().max() / reference.abs().max())
    peft_model.train()
    for step in range(2):  # the first step warms the kernels up; the second is timed
        sync(args.device)
        start = time.perf_counter()
        peft_model(input_ids=batch, labels=batch).loss.backward()
        sync(args.device)
    result["step_seconds"] = time.perf_counter() - start
    del peft_model, model, logits
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def main() -> None:
    import peft
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="7b", choices=sorted(SIZES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--budget", type=float, default=240, help="seconds: no cell starts after this")
    parser.add_argument("--out", type=Path, default=Path("gpu_7b"), help="writes OUT.json and OUT.md")
    args = parser.parse_args()

    started = time.time()
    torch.manual_seed(1)
    batch = torch.randint(0, SIZES[args.size]["vocab_size"], (4, 512), device=args.device)
    with torch.no_grad():
        base = build(args.size, args.device)
        reference = base(input_ids=batch[:1, :64]).logits.float()
        del base
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    data = {"size": args.size, "r": args.r, "device_name": name, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "command": "python benchmarks/gpu_7b.py " + " ".join(sys.argv[1:]),
            "commit": os.environ.get("GIT_COMMIT"), "cells": [], "skipped": []}
    for cell in CELLS:
        label = f"{cell[0]} ({'q/v' if cell[3] == QV else cell[3]})"
        if time.time() - started > args.budget:
            data["skipped"].append(label)
        else:
            data["cells"].append(run_cell(cell, args, batch, reference))
            print(data["cells"][-1], flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out.with_suffix('.json')}; python benchmarks/render rewrites its Markdown and the blocks that "
          "show it")


if __name__ == "__main__":
    main()
