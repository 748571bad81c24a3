import pytest
import torch

from inilora.fit import draw_start, fit_adam, fit_adam_published, fit_svd, fit_svd_randomized
from inilora.options import AdamSchedule
from inilora.methods import layer_generator
from conftest import realistic_matrix


def relative_error(W, A0, B0):
    return float(torch.linalg.norm(W - B0 @ A0) / torch.linalg.norm(W))


@pytest.mark.parametrize("shape", [(96, 80), (80, 96), (64, 64)])
@pytest.mark.parametrize("r", [1, 8, 32])
def test_svd_solver_reaches_the_optimum(shape, r):
    W = realistic_matrix(*shape)
    A0, B0, optimum = fit_svd(W, r)
    S = torch.linalg.svdvals(W.double())
    exact_optimum = float(S[r:].square().sum().sqrt() / S.square().sum().sqrt())
    assert optimum == pytest.approx(exact_optimum, rel=1e-6)
    assert relative_error(W, A0, B0) / exact_optimum <= 1 + 1e-6
    assert torch.allclose(B0.norm(), A0.norm(), rtol=1e-4)  # √S on both sides


def test_adam_at_published_defaults_reaches_the_optimum():
    W = realistic_matrix(128, 96, seed=3)
    U, P = draw_start(tuple(W.shape), 8, float(W.std()), layer_generator(0, "w"))
    A0, B0, steps = fit_adam(W[None], U[None], P[None], AdamSchedule())
    _, _, optimum = fit_svd(W, 8)
    assert steps == 20_000
    assert relative_error(W, A0[0], B0[0]) / optimum <= 1.01


def starts_for(Ws, r, seed=0):
    return [draw_start(tuple(W.shape), r, float(W.std()), layer_generator(seed, f"m{i}")) for i, W in enumerate(Ws)]


def test_batched_adam_equals_the_published_one_matrix_loop():
    Ws = [realistic_matrix(40, 32, seed=i) for i in range(3)]
    starts = starts_for(Ws, 4)
    schedule = AdamSchedule(steps=2000, lr_decay_every=500)  # exercises the lr decay too
    A, B, _ = fit_adam(torch.stack(Ws), torch.stack([s[0] for s in starts]), torch.stack([s[1] for s in starts]),
                       schedule)
    for i, W in enumerate(Ws):
        a, b, losses = fit_adam_published(W, *starts[i], schedule)
        assert len(losses) == 2000 and losses[-1] < losses[0]
        assert (a - A[i]).abs().max().item() <= 1e-5
        assert (b - B[i]).abs().max().item() <= 1e-5


def test_same_seed_same_factors():
    W = realistic_matrix(40, 32)
    runs = [fit_adam(W[None], *(x[None] for x in starts_for([W], 4, seed=7)[0]), AdamSchedule(steps=200))
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_early_stop_is_opt_in_and_stops_at_a_plateau():
    W = realistic_matrix(64, 48)
    U, P = draw_start(tuple(W.shape), 4, float(W.std()), layer_generator(0, "w"))
    _, _, full = fit_adam(W[None], U[None], P[None], AdamSchedule(steps=6000))
    A, B, stopped = fit_adam(W[None], U[None], P[None], AdamSchedule(steps=6000, early_stop_tol=1e-6,
                                                                      early_stop_every=200))
    _, _, optimum = fit_svd(W, 4)
    assert full == 6000 and stopped < 6000
    assert relative_error(W, A[0], B[0]) / optimum <= 1.001


def test_randomized_svd_is_within_1e4_of_the_optimum_and_seeded():
    W = realistic_matrix(300, 200, seed=5)
    _, _, optimum = fit_svd(W, 16)
    A0, B0 = fit_svd_randomized(W, 16, 16, 4, layer_generator(0, "w"))
    assert relative_error(W, A0, B0) / optimum <= 1 + 1e-4
    A1, B1 = fit_svd_randomized(W, 16, 16, 4, layer_generator(0, "w"))
    assert torch.equal(A0, A1) and torch.equal(B0, B1)
