"""Run in a subprocess by test_offline.py: train from an offline-initialized folder with plain transformers +
PEFT (no inilora import), then convert with PEFT's own path_initial_model_for_weight_conversion."""

import sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

base_dir, offline_dir, out_dir = map(Path, sys.argv[1:4])
input_ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))


def logits(model):
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


original = logits(AutoModelForCausalLM.from_pretrained(base_dir))
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(offline_dir / "residual_model"),
                                  str(offline_dir / "adapter"), is_trainable=True)
initial = logits(model)
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.Adam(params, lr=1e-2)
model.train()
for _ in range(3):
    model(input_ids=input_ids).logits.float()[..., :8].sum().backward()
    optimizer.step()
    optimizer.zero_grad()
model.eval()
model.save_pretrained(str(out_dir / "trained"))
model.save_pretrained(str(out_dir / "converted"), path_initial_model_for_weight_conversion=str(offline_dir / "adapter"))
save_file({"original": original, "initial": initial, "trained": logits(model), "input_ids": input_ids,
           "trainable": torch.tensor(sum(p.numel() for p in params))}, out_dir / "logits.safetensors")
assert "inilora" not in sys.modules
print("plain PEFT flow ok")
