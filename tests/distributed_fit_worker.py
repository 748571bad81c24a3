"""Run by test_distributed.py, under `torchrun --nproc_per_node 2` or as one plain process: initialize a
tiny llama with each IniLoRA solver and write the factors, residuals and report rows this process ended
with; then (sharded only) a fit that raises on rank 1, and what every rank raised."""

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from peft import LoraConfig
from safetensors.torch import save_file

import inilora
import inilora.methods.inilora
from conftest import tiny_model

out = sys.argv[1]
torch.set_num_threads(1)
if "RANK" in os.environ:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank = dist.get_rank() if dist.is_initialized() else 0
tag = "sharded" if dist.is_initialized() else "single"
rows, tensors = {}, {}
for solver in ("adam", "svd", "svd_randomized"):
    model = tiny_model("llama")
    peft_model = inilora.get_peft_model(model, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
                                        solver=solver, steps=50, cache=False, progress=False)
    for name, layer in inilora.peft_glue.lora_layers(peft_model, list(peft_model.inilora.layers)).items():
        tensors[f"{solver}/{name}/A0"] = peft_model.inilora.layers[name].A0
        tensors[f"{solver}/{name}/B0"] = peft_model.inilora.layers[name].B0
        tensors[f"{solver}/{name}/residual"] = layer.get_base_layer().weight.detach().clone()
    rows[solver] = peft_model.inilora.report.to_rows()
save_file(tensors, os.path.join(out, f"{tag}_rank{rank}.safetensors"))
with open(os.path.join(out, f"{tag}_rank{rank}.json"), "w") as f:
    json.dump(rows, f)

if dist.is_initialized():
    fit_chunk = inilora.methods.inilora._fit_chunk

    def failing_on_rank_1(chunk, options, sigmas):
        if rank == 1:
            raise RuntimeError("injected failure")
        return fit_chunk(chunk, options, sigmas)

    inilora.methods.inilora._fit_chunk = failing_on_rank_1
    try:
        inilora.get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                               solver="svd", cache=False, progress=False)
        message = "no error"
    except inilora.InitError as exc:
        message = str(exc)
    with open(os.path.join(out, f"failure_rank{rank}.txt"), "w") as f:
        f.write(message)
    dist.destroy_process_group()
