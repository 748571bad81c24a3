"""A 2-process CPU run (torchrun, gloo) through Trainer: both ranks start from the same factors —
the random methods included — and train the same adapter."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tiny

HERE = Path(__file__).parent


def test_two_process_ddp_training_starts_every_rank_from_the_same_factors(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    model = tiny.bert_folder(tmp_path / "bert")
    train_file = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(32))
    eval_file = tiny.write_jsonl(tmp_path / "eval.jsonl", tiny.sentiment_rows(8, seed=1))
    src = str(Path(__import__("inilora").__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(HERE)]), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(HERE / "distributed_worker.py"),
                           str(model), str(train_file), str(eval_file), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    digests = set()
    for method in ("lora", "inilora-alpha", "inilora-beta", "inilora"):
        a, b = ranks[0][method], ranks[1][method]
        assert a["world_size"] == b["world_size"] == 2 and "gloo" in a["backend"]
        assert a["init_digest"] == b["init_digest"], method  # same initial factors on both ranks
        assert a["trained_digest"] == b["trained_digest"], method  # DDP kept them in step
        assert a["steps"] == 4 and [s for s, _ in a["loss_history"]] == [1, 2, 3, 4]
        digests.add(a["init_digest"])
        # the adapter was saved once, by the main process, and it reloads
        assert (tmp_path / "out" / method / "adapter" / "inilora_init.safetensors").is_file()
    assert len(digests) == 4  # and the methods really start from different factors
