import pytest
import torch

from inilora import fit
from inilora.fit import (_top_eigh_triplets as eigh_triplets, draw_start, fit_adam, fit_adam_published, fit_svd,
                         fit_svd_randomized, top_singular_triplets)
from inilora.options import AdamSchedule, RandomizedSVD
from inilora.methods import layer_generator
from conftest import realistic_matrix, with_spectrum


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


def test_randomized_svd_is_within_1e4_of_the_optimum_seeded_and_capped_by_niter():
    W = realistic_matrix(300, 200, seed=5)  # blocks of 16 columns: Krylov, not the exact fallback
    _, _, optimum = fit_svd(W, 16)
    o = RandomizedSVD()
    A0, B0 = fit_svd_randomized(W, 16, o.block, o.niter, layer_generator(0, "w"))
    ratio = relative_error(W, A0, B0) / optimum
    assert ratio <= 1 + 1e-4
    A1, B1 = fit_svd_randomized(W, 16, o.block, o.niter, layer_generator(0, "w"))
    assert torch.equal(A0, A1) and torch.equal(B0, B1)
    A2, B2 = fit_svd_randomized(W, 16, o.block, 1, layer_generator(0, "w"))  # two blocks only
    assert relative_error(W, A2, B2) / optimum > ratio + 1e-4


# SmolLM2-135M layer 22's q_proj at r = 8: the Krylov space's top-8 energy deficit (1 − its energy / the optimum's,
# in units of ‖W‖²) after each block, and the optimum's relative error; the increments shrink by 0.31 per block
# while the deficit itself shrinks by 0.46, then 0.64
SMOLLM2_Q22_DEFICITS = [0.08373224, 0.02174706, 0.00762926, 0.00246103, 0.00089755, 0.00041314, 0.00026236]
SMOLLM2_Q22_OPTIMUM = 0.91728793


def test_the_krylov_stop_waits_while_the_real_error_is_above_the_guarantee():
    best = 1 - SMOLLM2_Q22_OPTIMUM ** 2
    energies = [best - d for d in SMOLLM2_Q22_DEFICITS]
    excess = [(SMOLLM2_Q22_OPTIMUM ** 2 + d) ** 0.5 / SMOLLM2_Q22_OPTIMUM - 1 for d in SMOLLM2_Q22_DEFICITS]
    assert excess[-1] > 1e-4
    left = lambda k, cautious: fit._iterations_left(energies[:k], 1.0, fit.RANDOMIZED_TOL, relative=True,
                                                     cautious=cautious)
    assert left(len(energies), cautious=False) == 0  # the plain geometric estimate stopped here, at 1.6e-4
    assert all(left(k, cautious=True) > 0 for k in range(1, len(energies) + 1))


def test_randomized_svd_keeps_its_guarantee_where_krylov_slows_down():
    # σ_i ∝ i^-0.3 with 5 % jitter: the plain geometric stop left this matrix at 1.33e-4 × the optimum
    g = torch.Generator().manual_seed(4)
    Q1, _ = torch.linalg.qr(torch.randn(576, 576, generator=g, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(576, 576, generator=g, dtype=torch.float64))
    S = (torch.arange(576, dtype=torch.float64) + 1) ** -0.3 * (1 + 0.05 * torch.rand(576, generator=g, dtype=torch.float64))
    W = ((Q1 * S.sort(descending=True).values) @ Q2.T).float()
    o = RandomizedSVD()
    A0, B0 = fit_svd_randomized(W, 8, o.block, o.niter, torch.Generator().manual_seed(4))
    _, _, optimum = fit_svd(W, 8)
    assert relative_error(W, A0, B0) / optimum <= 1 + 1e-4


@pytest.mark.parametrize("shape", [(300, 200), (200, 300)])
def test_a_batch_fits_each_matrix_as_alone_and_its_scratch_copy_is_the_only_one_overwritten(shape):
    # spectra decaying at different rates: the matrices stop after different numbers of blocks and leave the batch
    batch = torch.stack([with_spectrum((torch.arange(200.0) + 1) ** -p, *shape, seed=i)
                         for i, p in enumerate((0.2, 0.5, 1.0, 0.3, 2.0))])
    o, given = RandomizedSVD(), batch.clone()
    fit_batch = lambda targets, scratch: fit.fit_svd_randomized_batch(
        targets, 16, o.block, o.niter, [layer_generator(0, f"m{i}") for i in range(5)], scratch=scratch)
    A0, B0 = fit_batch(batch, scratch=False)
    assert torch.equal(batch, given)  # the caller's tensor is read, never written
    A1, B1 = fit_batch(batch, scratch=True)
    assert not torch.equal(batch, given)  # the scratch copy is compacted in place as matrices stop
    assert torch.equal(A0, A1) and torch.equal(B0, B1)
    for i in range(5):
        A, B = fit_svd_randomized(given[i], 16, o.block, o.niter, layer_generator(0, f"m{i}"))
        assert torch.equal(A, A0[i]) and torch.equal(B, B0[i])


def excess_over_optimum(W, A0, B0, r):
    """‖W − B0A0‖/‖W‖ (fp64) minus the better of the Eckart–Young optimum and what the exact fp32 SVD's
    truncation reaches (on a matrix of rank ≤ r the optimum is 0 and fp32 rounding alone is ~5e-7)."""
    Wd = W.double()
    S = torch.linalg.svdvals(Wd)
    optimum = float(S[r:].square().sum().sqrt() / S.square().sum().sqrt())
    U, S32, Vh = torch.linalg.svd(W, full_matrices=False)
    fp32_svd = float(torch.linalg.norm(Wd - ((U[:, :r] * S32[:r]) @ Vh[:r]).double()) / torch.linalg.norm(Wd))
    return float(torch.linalg.norm(Wd - B0.double() @ A0.double()) / torch.linalg.norm(Wd)) - max(optimum, fp32_svd)


SPECTRA = {
    "realistic": lambda: realistic_matrix(400, 300, seed=2),
    "wide": lambda: realistic_matrix(200, 500, seed=4),
    # σ_8 = σ_9 exactly, and a cluster of 40 values within 1e-6 of each other around r
    "tie at r": lambda: with_spectrum(torch.cat([torch.linspace(3, 2, 7), torch.full((2,), 1.0),
                                                 torch.linspace(0.9, 0.01, 291)]), 400, 300),
    "cluster": lambda: with_spectrum(torch.cat([torch.linspace(3, 2, 4), 1 + 1e-6 * torch.arange(40.0),
                                                torch.linspace(0.5, 0.01, 256)]), 400, 300),
    "rank 5 < r": lambda: with_spectrum(torch.linspace(2, 1, 5), 400, 300),
    "rank r": lambda: with_spectrum(torch.linspace(2, 1, 8), 300, 400),
}


@pytest.mark.parametrize("spectrum", SPECTRA)
def test_subspace_iteration_is_within_1e7_of_the_optimum(spectrum, monkeypatch):
    # at these small shapes the cost model prefers the eigendecomposition: lift its budget to test the iteration
    monkeypatch.setattr(fit, "iteration_budget", lambda m, n, k: fit.SUBSPACE_MAX_ITER)
    W = SPECTRA[spectrum]()
    assert top_singular_triplets(W if W.shape[0] >= W.shape[1] else W.T, 8) is not None  # the fast path ran
    A0, B0, optimum = fit_svd(W, 8)
    assert excess_over_optimum(W, A0, B0, 8) <= 1e-7
    S = torch.linalg.svdvals(W.double())
    assert optimum == pytest.approx(float(S[8:].square().sum().sqrt() / S.square().sum().sqrt()), abs=1e-6)


def test_unconverged_subspace_iteration_falls_back_to_the_eigendecomposition(monkeypatch):
    W = realistic_matrix(400, 300, seed=2)
    assert top_singular_triplets(W, 8, max_iter=2) is None
    monkeypatch.setattr(fit, "top_singular_triplets", lambda M, r: top_singular_triplets(M, r, max_iter=2))
    calls = []
    monkeypatch.setattr(fit, "_top_eigh_triplets", lambda M, r, **kw: calls.append(M.shape) or eigh_triplets(M, r, **kw))
    A0, B0, _ = fit.fit_svd(W, 8)
    assert calls == [(400, 300)] and excess_over_optimum(W, A0, B0, 8) <= 1e-7


def test_all_zero_matrix_gives_zero_factors():
    A0, B0, optimum = fit_svd(torch.zeros(300, 200), 8)
    assert optimum == 0.0 and not A0.any() and not B0.any() and A0.isfinite().all()


@pytest.mark.parametrize("shape, r", [((1024, 768), 8), ((768, 1024), 16), ((600, 600), 64)])
def test_the_cost_models_choice_keeps_both_accuracy_guarantees(shape, r):
    """Whichever path the cost model takes (the iteration, or an iteration stopped for the eigendecomposition),
    the closed form is within 1e-7 of the optimum and svd_randomized within 1e-4 × it."""
    W = realistic_matrix(*shape, seed=5)
    A0, B0, _ = fit_svd(W, r)
    assert excess_over_optimum(W, A0, B0, r) <= 1e-7
    A0, B0 = fit_svd_randomized(W, r, 32, 60, torch.Generator().manual_seed(0))
    assert excess_over_optimum(W, A0, B0, r) <= 1e-4


def test_the_krylov_space_outgrows_its_first_buffers_and_still_reaches_the_optimum(monkeypatch):
    """A near-flat spectrum at r = 4 with blocks of 2 needs a space larger than the first buffers' 4r = 16 rows:
    they are doubled while it grows, and what they held is carried over."""
    grown, original = [], fit._grown
    monkeypatch.setattr(fit, "_grown", lambda *a, **k: grown.append(a[2]) or original(*a, **k))
    S = torch.cat([torch.linspace(1.0, 0.9, 12), 0.85 * torch.linspace(1.0, 0.5, 188)])
    W = with_spectrum(S, 300, 200)
    A0, B0 = fit.fit_svd_randomized(W, 4, 2, 60, torch.Generator().manual_seed(0))
    optimum = float(S[4:].double().square().sum().sqrt())
    assert grown == [32, 32, 32]  # X, Y and G, doubled once
    assert float(torch.linalg.matrix_norm(W.double() - B0.double() @ A0.double())) / optimum - 1 <= 1e-4
