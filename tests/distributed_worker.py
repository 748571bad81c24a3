"""Run under `torchrun --nproc_per_node 2` by test_distributed.py: fine-tune a tiny model with several
methods through Trainer (DDP, gloo) and write what each rank started from and ended with."""

import json
import os
import sys

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from inilora.experiments import tasks
from inilora.experiments.train import TrainConfig, finetune


@record  # a failing rank's traceback goes into torchrun's summary, which the test prints
def main(model: str, train_file: str, eval_file: str, out: str) -> None:
    task = tasks.file_task(train_file, eval_file)
    rank = int(os.environ["RANK"])
    records = {}
    for method in ("lora", "inilora-alpha", "inilora-beta", "inilora"):
        cfg = TrainConfig(method=method, solver="svd" if method == "inilora" else None, lr=1e-2, max_steps=4, batch_size=4, logging_steps=1,
                                progress=False, targets=["query", "value"], seed=3)
        result = finetune(model, task, cfg, output_dir=os.path.join(out, method))
        records[method] = {"world_size": dist.get_world_size() if dist.is_initialized() else 1,
                           "backend": dist.get_backend_config() if dist.is_initialized() else None,
                           "init_digest": result.init["digest"], "trained_digest": result.trained_digest,
                           "fitted_by_rank": result.init.get("fitted_by_rank"), "processes": result.metrics["processes"],
                           "loss_history": result.loss_history, "steps": result.metrics["steps"],
                           "accuracy": result.metrics["accuracy"]}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(records, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
