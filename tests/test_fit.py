import torch

from inilora.fit import AdamSchedule, draw_start, fit_adam, fit_svd
from inilora.methods import layer_generator
from conftest import realistic_matrix


def relative_error(W, A0, B0):
    return float(torch.linalg.norm(W - B0 @ A0) / torch.linalg.norm(W))


def test_svd_solver_reaches_the_optimum():
    W = realistic_matrix(96, 80)
    A0, B0, optimum = fit_svd(W, 8)
    assert relative_error(W, A0, B0) / optimum <= 1 + 1e-6


def test_adam_at_published_defaults_reaches_the_optimum():
    W = realistic_matrix(128, 96, seed=3)
    U, P = draw_start(tuple(W.shape), 8, float(W.std()), layer_generator(0, "w"))
    A0, B0, steps = fit_adam(W[None], U[None], P[None], AdamSchedule())
    _, _, optimum = fit_svd(W, 8)
    assert steps == 20_000
    assert relative_error(W, A0[0], B0[0]) / optimum <= 1.01
