"""The prepared accelerator run, exercised on the CPU: the packed targets are the real ones, and the 7B script's
cells measure what they claim (on a tiny Llama)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_a_packed_model_holds_the_real_target_matrices_and_a_bad_pack_is_refused(tmp_path):
    from _common import load, target_weights
    from gpu_pack import pack
    from safetensors.torch import load_file, save_file

    written = pack("minilm", tmp_path)
    assert written["matrices"] == 12 and written["worst_relative_rounding"] == 0.0  # fp32: stored as they are
    real = target_weights(load("minilm", "cpu", "float32"), "minilm")
    packed = target_weights(load("minilm", "cpu", "float32", pack=tmp_path), "minilm")
    assert packed.keys() == real.keys()
    assert all(torch.equal(packed[name], real[name]) for name in real)
    assert written["bytes"] < 8 * 2**20  # small enough to travel (the device carries at most 64 MiB)

    file = tmp_path / "minilm" / "targets.safetensors"
    targets = load_file(str(file))
    targets.pop(next(iter(targets)))
    save_file(targets, str(file))
    with pytest.raises(ValueError, match="11 target matrices, the model has 12"):
        load("minilm", "cpu", "float32", pack=tmp_path)


def test_the_7b_cells_measure_init_time_exactness_and_a_training_step_on_a_tiny_llama():
    import argparse

    from gpu_7b import CELLS, SIZES, build, run_cell

    args = argparse.Namespace(size="tiny", device="cpu", r=4)
    torch.manual_seed(1)
    batch = torch.randint(0, SIZES["tiny"]["vocab_size"], (2, 32))
    with torch.no_grad():
        reference = build("tiny", "cpu")(input_ids=batch[:1, :64]).logits.float()
    lora, svd = (run_cell(cell, args, batch, reference) for cell in CELLS if cell[0] in ("lora", "inilora svd")
                 and cell[3] != "all-linear")
    assert lora["matrices"] == svd["matrices"] == 2 * SIZES["tiny"]["num_hidden_layers"]
    assert lora["logit_change"] == 0.0  # B = 0: the model computes what it did
    assert 0 < svd["logit_change"] < 0.05  # the residual's bf16 rounding, nothing more
    assert lora["step_seconds"] > 0 and svd["seconds"] > 0


def test_the_cpu_cuda_factor_check_makes_its_cpu_factors_from_the_pack_and_sees_a_sign_flip(tmp_path):
    import json
    import subprocess

    from gpu_pack import pack
    from same_factors import FACTOR_TOL, compare, factors

    pack("minilm", tmp_path)
    cpu = factors("svd_randomized", "cpu", tmp_path)
    assert len(cpu) == 12
    layer = next(iter(cpu))
    A, B = cpu[layer]
    signs = torch.ones(A.shape[0])
    signs[3] = -1  # one triplet flipped: the same product, other factors
    report = compare(cpu, {**cpu, layer: (A * signs[:, None], B * signs)})
    assert report["factors"] == 24 and report["factors_over_tol"] == 2
    assert report["worst_factor"] > 100 * FACTOR_TOL and report["worst_product"] < 1e-6
    if not torch.cuda.is_available():  # without the device it makes the CPU factors, compares nothing, exits 0
        import os

        root, src = Path(__file__).resolve().parents[1], str(Path(__import__("inilora").__file__).parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
        out = tmp_path / "same_factors.json"
        run = subprocess.run([sys.executable, str(root / "benchmarks" / "same_factors.py"), "--device", "cuda",
                              "--pack", str(tmp_path), "--paths", "pissa", "--out", str(out)],
                             capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        written = json.loads(out.read_text())
        assert written["paths"] == {"pissa": {"factors": 24, "compared": False}} and "skipped" in written
