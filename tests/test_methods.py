import math

import pytest
import torch

from inilora.linalg import relative_tail_energy
from inilora.methods.base import layer_generator
from inilora.methods.random import alpha_factors, beta_factors, lora_factors
from inilora.methods.svd import svd_factors
from conftest import realistic_matrix


def test_alpha_factors_have_std_half():
    f = alpha_factors(512, 768, 16, layer_generator(0, "x"))
    assert abs(f.A0.std().item() - 0.5) <= 0.025
    assert abs(f.B0.std().item() - 0.5) <= 0.025
    assert abs(f.A0.mean().item()) < 0.02


def test_beta_factors_have_kaiming_normal_stds():
    out_f, in_f, r = 512, 768, 16
    f = beta_factors(out_f, in_f, r, layer_generator(0, "x"))
    assert f.A0.shape == (r, in_f) and f.B0.shape == (out_f, r)
    assert abs(f.A0.std().item() / math.sqrt(2 / in_f) - 1) <= 0.05
    assert abs(f.B0.std().item() / math.sqrt(2 / r) - 1) <= 0.05


def test_lora_factors_match_peft_default():
    f = lora_factors(64, 100, 8, layer_generator(0, "x"))
    assert torch.count_nonzero(f.B0) == 0
    bound = 1 / math.sqrt(100)  # kaiming_uniform(a=√5): U(-1/√fan_in, 1/√fan_in)
    assert f.A0.abs().max() <= bound and f.A0.abs().max() > 0.9 * bound


def test_layer_generator_depends_on_seed_and_name_only():
    a = torch.randn(5, generator=layer_generator(3, "layers.0.q_proj"))
    b = torch.randn(5, generator=layer_generator(3, "layers.0.q_proj"))
    c = torch.randn(5, generator=layer_generator(4, "layers.0.q_proj"))
    d = torch.randn(5, generator=layer_generator(3, "layers.1.q_proj"))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


@pytest.mark.parametrize("scaling", [1.0, 2.0])
def test_pissa_and_milora_products(scaling):
    W = realistic_matrix(48, 40)
    r = 6
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    top = svd_factors(W, r, scaling)
    bottom = svd_factors(W, r, scaling, smallest=True)
    top_ref = (U[:, :r] * S[:r]) @ Vh[:r]
    bottom_ref = (U[:, -r:] * S[-r:]) @ Vh[-r:]
    assert torch.allclose(scaling * (top.B0 @ top.A0).double(), top_ref, atol=1e-6)
    assert torch.allclose(scaling * (bottom.B0 @ bottom.A0).double(), bottom_ref, atol=1e-6)
    # balanced split: both factors carry √(S/s)
    assert torch.allclose(top.B0.norm(), top.A0.norm(), rtol=1e-5)
    assert top.optimum == pytest.approx(relative_tail_energy(S, r), rel=1e-6)
    assert top.optimum == pytest.approx(float(torch.linalg.norm(W.double() - top_ref) / torch.linalg.norm(W.double())), rel=1e-6)


def test_random_rotation_is_orthogonal_and_keeps_the_product():
    from inilora.linalg import random_orthogonal, rotate_basis
    Q = random_orthogonal(8, layer_generator(0, "x"))
    assert torch.allclose(Q @ Q.T, torch.eye(8), atol=1e-6)
    assert Q.abs().max(dim=1).values.min() < 0.95  # a mixed basis, not a signed permutation
    f = svd_factors(realistic_matrix(48, 40), 8, 1.0)
    A1, B1 = rotate_basis(f.A0, f.B0, Q)
    assert torch.allclose(B1 @ A1, f.B0 @ f.A0, atol=1e-6)
    assert torch.allclose(B1.norm(), A1.norm(), rtol=1e-5)  # still balanced


def test_equalized_entry_scale_keeps_the_product_and_matches_rms():
    from inilora.linalg import equalize_entry_scale
    f = svd_factors(realistic_matrix(192, 576), 8, 1.0)
    A1, B1 = equalize_entry_scale(f.A0, f.B0)
    assert torch.allclose(B1 @ A1, f.B0 @ f.A0, atol=1e-6)
    assert torch.allclose(A1.pow(2).mean(), B1.pow(2).mean(), rtol=1e-5)
    # for balanced input, ‖B‖/‖A‖ becomes √(out/in), as the published Adam fit ends (measured 0.54–0.68 on
    # SmolLM2's 192×576 v_proj, see results/factor_geometry.json)
    assert float(B1.norm() / A1.norm()) == pytest.approx(math.sqrt(192 / 576), rel=1e-5)
