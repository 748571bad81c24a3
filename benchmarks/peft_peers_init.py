"""PEFT's initializations as peers on the real MiniLM classifier: init time and how far the start is from the base.

For each peer of ``inilora.experiments.peft_peers.PEERS``: a fresh MiniLM sequence classifier (head seed 0),
r = 8, alpha = 8 on query/value, the data-driven peers fed ``--batches`` batches of 16 training reviews; records
the initialization's wall time, the largest difference of the logits from the base model's on 16 other reviews,
the norm of s·B0·A0 relative to W (mean over layers) and the ranks PEFT gave each layer.

    nice -n 19 python benchmarks/peft_peers_init.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "tuned" / "peft_peers_init.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from peft import LoraConfig
    from transformers import DataCollatorWithPadding

    from inilora.experiments import models
    from inilora.experiments.tasks import load_task
    from inilora.experiments.peft_peers import PEERS, get_peer_model
    from inilora.experiments.train.encode import encode_classification
    from screen_tasks import provenance

    task = load_task("reviews", n_train=16 * args.batches, n_eval=16)
    tokenizer = models.load_tokenizer("minilm")
    collate = DataCollatorWithPadding(tokenizer)
    batches = [collate(encode_classification(tokenizer, task.train[i:i + 16], 128))
               for i in range(0, len(task.train), 16)]
    probe = collate(encode_classification(tokenizer, task.eval, 128))
    probe.pop("labels")
    results = {}
    for method in PEERS:
        model = models.load_model("minilm", "classification", num_labels=2, seed=0).eval()
        with torch.no_grad():
            reference = model(**probe).logits
        weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith(("query", "value"))}
        config = LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
        cpu = time.process_time()
        peft_model, info = get_peer_model(model, config, method, batches)
        info["cpu_seconds"] = round(time.process_time() - cpu, 3)  # the wall time counts other processes' load
        peft_model.eval()
        with torch.no_grad():
            drift = (peft_model(**probe).logits - reference).abs().max().item()
        ratios = []
        for name, layer in peft_model.named_modules():
            if hasattr(layer, "lora_A") and "default" in layer.lora_A:
                delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
                W = weights[name.removeprefix("base_model.model.")]
                ratios.append((torch.linalg.norm(delta) / torch.linalg.norm(W)).item())
        ranks = sorted(info.pop("ranks").values())
        results[method] = {**info, "max_logit_drift": drift, "mean_delta_over_w": sum(ratios) / len(ratios),
                           "ranks_min_max_sum": [ranks[0], ranks[-1], sum(ranks)],
                           "trainable_params": sum(p.numel() for p in peft_model.parameters() if p.requires_grad)}
        print(method, results[method], flush=True)
    report = {"command": "python benchmarks/peft_peers_init.py", "batches": args.batches, "batch_size": 16,
              "threads": args.threads, "provenance": provenance(), "peers": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
