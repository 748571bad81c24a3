"""The sharded IniLoRA fit's speed-up: SmolLM2-135M q/v, the published Adam fit (``--steps``), one
thread per process; 2 processes (torchrun, gloo) against 1, interleaved over repeats (shared CPU:
medians, load averages recorded).

    PYTHONPATH=src python benchmarks/sharded_fit.py --steps 300 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).parent.parent


def worker(steps: int) -> None:
    """One process of a run: time ``inilora.get_peft_model`` (the fit, then the install)."""
    import torch
    import torch.distributed as dist
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    import inilora
    from inilora.experiments.models import resolve

    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    model = AutoModelForCausalLM.from_pretrained(resolve("smollm2"), torch_dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    peft_model = inilora.get_peft_model(model, config, solver="adam", steps=steps, cache=False, progress=False)
    seconds = time.perf_counter() - start
    ranks = sorted({row["fitted_by_rank"] for row in peft_model.inilora.report.to_rows()})
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps({"seconds": seconds, "fitted_by_rank": ranks}))
    if dist.is_initialized():
        dist.destroy_process_group()


def run(nproc: int, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    if nproc == 1:
        command = [sys.executable, __file__, "--worker", str(steps)]
    else:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
        command = [torchrun, "--nproc_per_node", str(nproc), "--master_port", "29561", __file__, "--worker", str(steps)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "results" / "sharded_fit.json"))
    args = parser.parse_args()
    runs = {1: [], 2: []}
    load = [os.getloadavg()]
    for _ in range(args.repeats):
        for nproc in (1, 2):
            runs[nproc].append(run(nproc, args.steps))
            print(nproc, runs[nproc][-1], flush=True)
        load.append(os.getloadavg())
    medians = {n: statistics.median(r["seconds"] for r in rs) for n, rs in runs.items()}
    from _common import provenance

    result = {"provenance": provenance(), "command": "PYTHONPATH=src python benchmarks/sharded_fit.py " + " ".join(sys.argv[1:]),
              "model": "SmolLM2-135M q/v, r=8", "steps": args.steps, "threads_per_process": 1,
              "cpu_count": os.cpu_count(), "loadavg_1_5_15_per_repeat": load, "runs": runs,
              "median_seconds": medians, "speedup_2_vs_1": medians[1] / medians[2]}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("median_seconds", "speedup_2_vs_1", "loadavg_1_5_15_per_repeat")}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(int(sys.argv[2]))
    else:
        main()
