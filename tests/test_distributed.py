"""A 2-process CPU run (torchrun, gloo) through Trainer: DDP, not two lone trainings; the fit split over the
ranks; both ranks start from the same factors — the random methods included — and train the same adapter."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
from conftest import free_port

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
           "CUDA_VISIBLE_DEVICES": "", "INILORA_CACHE": str(tmp_path / "cache")}  # a cold cache: the fit runs
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", free_port(), str(HERE / "distributed_worker.py"),
                           str(model), str(train_file), str(eval_file), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    digests = set()
    for method in ("lora", "inilora-alpha", "inilora-beta", "inilora"):
        a, b = ranks[0][method], ranks[1][method]
        assert a["world_size"] == b["world_size"] == 2 and "gloo" in a["backend"]
        assert a["processes"] == b["processes"] == 2, method  # Trainer ran DDP, not two lone trainings
        assert a["init_digest"] == b["init_digest"], method  # same initial factors on both ranks
        assert a["trained_digest"] == b["trained_digest"], method  # DDP kept them in step
        assert a["steps"] == 4 and [s for s, _ in a["loss_history"]] == [1, 2, 3, 4]
        assert abs(a["loss_history"][0][1] - math.log(2)) < 0.2, method  # 2 classes: not 2 ln 2, the loss × 2 ranks
        digests.add(a["init_digest"])
        # the adapter was saved once, by the main process, and it reloads
        assert (tmp_path / "out" / method / "adapter" / "inilora_init.safetensors").is_file()
    assert len(digests) == 4  # and the methods really start from different factors
    # the fit was split: each rank fitted some of the 4 matrices (made before Trainer, the process group existed)
    assert ranks[0]["inilora"]["fitted_by_rank"] == ranks[1]["inilora"]["fitted_by_rank"]
    assert sorted(set(ranks[0]["inilora"]["fitted_by_rank"])) == [0, 1]


def run_fit_worker(tmp_path, nproc):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__import__("inilora").__file__).parents[1]), str(HERE)]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if nproc == 1:
        command = [sys.executable, str(HERE / "distributed_fit_worker.py"), str(tmp_path)]
    else:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
        if torchrun is None:
            pytest.skip("torchrun is not installed")
        command = [torchrun, "--nproc_per_node", str(nproc), "--master_port", free_port(),
                   str(HERE / "distributed_fit_worker.py"), str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sharded_fit_gives_every_rank_the_single_process_factors_and_shares_a_failure(tmp_path):
    from safetensors.torch import load_file

    run_fit_worker(tmp_path, 2)
    run_fit_worker(tmp_path, 1)
    single = load_file(tmp_path / "single_rank0.safetensors")
    for rank in (0, 1):
        sharded = load_file(tmp_path / f"sharded_rank{rank}.safetensors")
        assert sharded.keys() == single.keys() and len(single) == 3 * 4 * 3  # solvers × layers × tensors
        for key, value in single.items():
            assert torch.equal(sharded[key], value), (rank, key)  # bit-identical factors and residuals
    for solver in ("adam", "svd", "svd_randomized"):
        rows = [json.loads((tmp_path / f"sharded_rank{r}.json").read_text())[solver] for r in (0, 1)]
        assert rows[0] == rows[1]
        assert {row["fitted_by_rank"] for row in rows[0]} == {0, 1}  # both ranks fitted a share
        assert {row["fitted_by_rank"] for row in json.loads((tmp_path / "single_rank0.json").read_text())[solver]} == {0}
    for rank in (0, 1):  # rank 1 raised; both ranks ended with that error instead of waiting
        message = (tmp_path / f"failure_rank{rank}.txt").read_text()
        assert "rank 1: RuntimeError: injected failure" in message, message


def test_owners_are_balanced_by_cost():
    from inilora.distributed import assign_owners

    owners = assign_owners([6.0, 3.0, 3.0, 1.0, 1.0], 2)
    loads = [sum(c for c, o in zip([6.0, 3.0, 3.0, 1.0, 1.0], owners) if o == r) for r in (0, 1)]
    assert sorted(loads) == [7.0, 7.0] and owners[0] != owners[1]


def test_launched_processes_without_a_process_group_are_warned_that_each_fits_everything(monkeypatch):
    import warnings

    from conftest import tiny_model

    import inilora
    from peft import LoraConfig

    def init(**options):
        config = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])
        return inilora.get_peft_model(tiny_model("llama"), config, method="inilora", solver="svd", cache=False,
                                      **options)

    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; no process group here
    with pytest.warns(inilora.UnshardedFitWarning, match="WORLD_SIZE=2.*each process fits every matrix"):
        init()
    with warnings.catch_warnings():
        warnings.simplefilter("error", inilora.UnshardedFitWarning)
        init(shard_fit=False)  # asked not to shard: nothing to warn about
        monkeypatch.setenv("WORLD_SIZE", "1")
        init()
