"""Run in a subprocess by test_faults.py: a process that saves an adapter over and over, or fits one, killed
with SIGKILL.

It imports everything and builds the model once, then for each ``kill DELAY`` read from stdin forks a child
that saves two versions of the adapter (B, A, B, ...) over ``FOLDER/target`` in a loop, as a training
script's periodic save does, and SIGKILLs it DELAY seconds later; ``fit CACHE DELAY`` forks a child that runs the
IniLoRA fit (Adam, one matrix per chunk, into the fit cache ``FOLDER/CACHE``) and, once it stored one more entry, kills it
DELAY seconds later (no DELAY: the fit runs to its end and writes its cache hits to ``FOLDER/CACHE.json``). Each answer is one line of JSON on stdout."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


def base_model():
    """A small llama whose adapter has many parts (7 targets × 2 layers): a save writes several files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def main(folder: Path) -> None:
    import inilora

    torch.set_num_threads(1)  # no thread pool to break in the forked children
    model = inilora.get_peft_model(base_model(), LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS),
                                   method="pissa", progress=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    versions = {"A": [p.detach().clone() for p in trainable]}
    with torch.no_grad():
        for i, p in enumerate(trainable):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    versions["B"] = [p.detach().clone() for p in trainable]

    def use(version: str) -> None:
        with torch.no_grad():
            for p, value in zip(trainable, versions[version]):
                p.copy_(value)

    for version in "AB":
        use(version)
        model.save_pretrained(folder / f"ref{version}")
    use("A")
    started = time.perf_counter()
    model.save_pretrained(folder / "target")
    print(json.dumps({"ready": True, "save_seconds": time.perf_counter() - started}), flush=True)
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "kill":
            child = os.fork()
            if child == 0:
                try:
                    while True:
                        for version in "BA":
                            use(version)
                            model.save_pretrained(folder / "target")
                finally:
                    os._exit(1)
            time.sleep(float(rest[0]))
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            print(json.dumps({"killed": True}), flush=True)
        elif command == "fit":  # fit CACHE [DELAY]
            started = time.perf_counter()
            child = os.fork()
            if child == 0:
                try:
                    fitted = inilora.get_peft_model(base_model(), LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS),
                                                    method="inilora", solver="adam", steps=300, chunk_mb=0.01,
                                                    cache_dir=str(folder / rest[0]), progress=False)
                    (folder / f"{rest[0]}.json").write_text(json.dumps({"hits": fitted.inilora.report.cache_hits}))
                finally:
                    os._exit(0)
            if len(rest) > 1:  # once the fit stored one more entry, wait DELAY more and kill it
                cache, before = folder / rest[0], len(list((folder / rest[0]).glob("*.safetensors")))
                while len(list(cache.glob("*.safetensors"))) <= before and not os.waitpid(child, os.WNOHANG)[0]:
                    time.sleep(0.002)
                time.sleep(float(rest[1]))
                os.kill(child, signal.SIGKILL)
            _, status = os.waitpid(child, 0)
            print(json.dumps({"status": status, "seconds": time.perf_counter() - started}), flush=True)
        elif command == "save":
            use(rest[0])
            model.save_pretrained(folder / "target")
            print(json.dumps({"saved": rest[0]}), flush=True)
        else:
            return


if __name__ == "__main__":
    main(Path(sys.argv[1]))
