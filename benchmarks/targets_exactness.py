"""Every target type PEFT's LoRA adapts × every method: how exact init, reload, export and merge are.

For each (target type, method) a tiny model built from a config is initialized (fp32), its trainable
parameters are moved as a training step would, then saved, reloaded, exported to plain PEFT and merged.
Each cell is the largest output difference relative to the largest output:
  init    the initialized model vs the base model
  reload  inilora.from_pretrained onto a fresh base vs the trained model (0 = bit-identical)
  export  plain PEFT (PeftModel.from_pretrained on the original base, inilora.export_lora) vs the trained model
  merge   inilora.merge_and_unload vs the trained model
  4bit    NF4 residual (quantize="nf4"): the initialized model vs the fp32 base (the quantization error; PEFT and
          bitsandbytes have 4-bit layers for nn.Linear only, so other types are refused), and whether its
          reload is bit-identical
Writes results/targets_exactness.json.  Run: PYTHONPATH=src python benchmarks/targets_exactness.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from torch import nn

import inilora

OUT = Path(__file__).resolve().parents[1] / "results" / "targets_exactness.json"
METHODS = ("lora", "pissa", "milora", "inilora", "inilora-alpha", "inilora-beta")


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64)).eval()


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c3 = nn.Conv3d(3, 5, (2, 3, 3), padding=1)

    def forward(self, x):
        return torch.cat([self.c1(x.mean(3)).flatten(1), self.c2(x).flatten(1),
                          self.c3(x.unsqueeze(2).repeat(1, 1, 3, 1, 1)).flatten(1)], 1)


def conv_net():
    torch.manual_seed(0)
    return ConvNet().eval()


def moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    return Qwen3MoeForCausalLM(Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                              moe_intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                              num_key_value_heads=1, num_experts=4, num_experts_per_tok=2,
                                              decoder_sparse_step=1, head_dim=16)).eval()


g = torch.Generator().manual_seed(0)
IDS, SMALL_IDS, IMAGES = (torch.randint(0, 128, (2, 16), generator=g), torch.randint(0, 64, (2, 7), generator=g),
                          torch.randn(2, 3, 8, 8, generator=g))
TYPES = {  # name: (model, LoraConfig fields, forward)
    "Linear": (llama, dict(target_modules=["q_proj", "v_proj"]), lambda m: m(IDS).logits),
    "Embedding": (llama, dict(target_modules=["embed_tokens"]), lambda m: m(IDS).logits),
    "Conv1d": (conv_net, dict(target_modules=["c1"]), lambda m: m(IMAGES)),
    "Conv2d": (conv_net, dict(target_modules=["c2"]), lambda m: m(IMAGES)),
    "Conv3d": (conv_net, dict(target_modules=["c3"]), lambda m: m(IMAGES)),
    "experts (3-D parameter)": (moe, dict(target_modules=[], target_parameters=["experts.gate_up_proj",
                                                                                "experts.down_proj"]),
                                lambda m: m(SMALL_IDS).logits),
    "DoRA Linear": (llama, dict(target_modules=["q_proj", "v_proj"], use_dora=True), lambda m: m(IDS).logits),
    "DoRA Embedding": (llama, dict(target_modules=["embed_tokens"], use_dora=True), lambda m: m(IDS).logits),
    "DoRA Conv2d": (conv_net, dict(target_modules=["c2"], use_dora=True), lambda m: m(IMAGES)),
}


def relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def measure(make, fields, run, method, tmp: Path, quantize=None) -> dict:
    base = make()
    options = {"solver": "svd"} if method == "inilora" else {}
    if quantize:
        options["quantize"] = quantize
    with torch.no_grad():
        expected = run(base)
        peft_model = inilora.get_peft_model(base, LoraConfig(r=2, lora_alpha=4, **fields), method=method,
                                            progress=False, **options)
        cell = {"init": relative(run(peft_model), expected), "drift": peft_model.inilora.report.max_drift}
        gen = torch.Generator().manual_seed(1)
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        trained = run(peft_model)
        peft_model.save_pretrained(tmp / "adapter")
        cell["reload"] = relative(run(inilora.from_pretrained(make(), tmp / "adapter")), trained)
        cell["reload_bit_identical"] = cell["reload"] == 0.0
        if quantize:
            return cell
        inilora.export_lora(peft_model, tmp / "plain")
        cell["export"] = relative(run(PeftModel.from_pretrained(make(), str(tmp / "plain"))), trained)
        cell["merge"] = relative(run(inilora.merge_and_unload(peft_model)), trained)
    return cell


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows, start = [], time.perf_counter()
    for kind, (make, fields, run) in TYPES.items():
        for method in METHODS:
            with tempfile.TemporaryDirectory() as d:
                row = {"type": kind, "method": method, **measure(make, fields, run, method, Path(d))}
            four_bit = kind in ("Linear", "DoRA Linear")
            try:
                with tempfile.TemporaryDirectory() as d:
                    q = measure(make, fields, run, method, Path(d), quantize="nf4") if four_bit else None
            except ImportError as exc:  # bitsandbytes missing
                q = {"error": str(exc)}
            if q is None:
                with tempfile.TemporaryDirectory() as d:
                    try:
                        measure(make, fields, run, method, Path(d), quantize="nf4")
                        q = {"error": "not refused"}
                    except inilora.InitError as exc:
                        q = {"refused": str(exc).split(";")[0]}
            row["4bit"] = q
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    from inilora.experiments.provenance import machine  # noqa: E402 (the app's record of the machine)

    OUT.write_text(json.dumps({"what": __doc__.split("\n\n")[0], "r": 2, "lora_alpha": 4, "dtype": "float32",
                               "seconds": round(time.perf_counter() - start, 1), "machine": machine(),
                               "versions": {"torch": torch.__version__, "peft": __import__("peft").__version__},
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
