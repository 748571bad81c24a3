"""Solvers for the IniLoRA fit ``min ‖U Pᵀ − W‖²`` (docs/methods.md, "The IniLoRA fit").

- :func:`fit_adam` — the published procedure (σ-scaled Gaussian start, Adam, StepLR), run on a batch
  of same-shape matrices at once on their device, with no host sync unless early stop is asked for.
- :func:`fit_adam_published` — the published loop, one matrix, autograd, ``loss.item()`` every step:
  the reference the batched solver is tested and benchmarked against.
- :func:`fit_svd` / :func:`fit_svd_randomized` — the closed-form optimum (Eckart–Young), factored
  with √S on both sides: from subspace iteration with a convergence check (1e-8 of the relative error), or,
  for ``svd_randomized``, from block Krylov on a batch of same-shape matrices, each from its own seeded start,
  stopped at an estimated 5e-5 × the optimum; else the Gram eigendecomposition.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from .linalg import split_singular_triplets

if TYPE_CHECKING:
    from .options import AdamSchedule


def draw_start(shape: tuple[int, int], r: int, sigma: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The published start: ``U (out × r)`` then ``P (in × r)``, i.i.d. N(0, σ²), drawn on the CPU."""
    U = torch.randn(shape[0], r, generator=generator) * sigma
    P = torch.randn(shape[1], r, generator=generator) * sigma
    return U, P


def fit_adam(targets: Tensor, U: Tensor, P: Tensor, schedule: AdamSchedule,
             on_step: Callable[[], object] | None = None) -> tuple[Tensor, Tensor, int]:
    """Fit a batch ``targets (n, out, in)`` from starts ``U (n, out, r)``, ``P (n, in, r)``.

    Each matrix's loss is the mean over its entries, so the batch's summed loss gives every matrix
    exactly its own gradient, and Adam — elementwise — takes exactly its own step. The gradient is
    computed in Gram form, ``2/N · (U (PᵀP) − W P)``, which never materializes ``U Pᵀ − W``. The
    factors are stored transposed (``Uᵀ``, ``Pᵀ``: r rows) because the products with ``W`` then have the
    skinny operand on the left, which CPU GEMM kernels run 2–4× faster at small r; Adam is elementwise,
    so the layout does not change the update. ``on_step`` (e.g. a progress bar's ``update``) is called
    after every step; it must not read the tensors, or each step would wait for the device.
    Returns ``(A0 (n, r, in), B0 (n, out, r), steps_taken)``.
    """
    targets = targets.float()
    n, out_f, in_f = targets.shape
    # copies (never the caller's tensors), contiguous in the transposed layout
    Ut = U.to(targets).transpose(1, 2).clone(memory_format=torch.contiguous_format)  # (n, r, out)
    Pt = P.to(targets).transpose(1, 2).clone(memory_format=torch.contiguous_format)  # (n, r, in)
    Ut.grad = torch.zeros_like(Ut)
    Pt.grad = torch.zeros_like(Pt)
    # the fused kernel is the same update as the default one, in one launch per step
    optimizer = torch.optim.Adam([Ut, Pt], lr=schedule.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, schedule.lr_decay_every, schedule.lr_decay)
    grad_scale = 2.0 / (out_f * in_f)
    target_energy = targets.square().sum(dim=(1, 2))
    targets_t = targets.transpose(1, 2)  # a view: no second copy of the chunk
    last_loss = None
    step = 0
    for step in range(1, schedule.steps + 1):
        PtWt = torch.bmm(Pt, targets_t)  # (WP)ᵀ: (n, r, out)
        UtW = torch.bmm(Ut, targets)  # (WᵀU)ᵀ: (n, r, in)
        PtP = torch.bmm(Pt, Pt.transpose(1, 2))  # PᵀP (n, r, r)
        UtU = torch.bmm(Ut, Ut.transpose(1, 2))  # UᵀU (n, r, r)
        torch.baddbmm(PtWt, PtP, Ut, beta=-grad_scale, alpha=grad_scale, out=Ut.grad)
        torch.baddbmm(UtW, UtU, Pt, beta=-grad_scale, alpha=grad_scale, out=Pt.grad)
        if schedule.early_stop_tol is not None and step % schedule.early_stop_every == 0:
            # ‖UPᵀ − W‖² = ‖W‖² − 2 tr(Uᵀ W P) + tr(UᵀU PᵀP), all from products we already have
            loss = target_energy - 2 * (Ut * PtWt).sum(dim=(1, 2)) + (UtU * PtP).sum(dim=(1, 2))
            loss = loss.max().item()
            if last_loss is not None and last_loss - loss <= schedule.early_stop_tol * abs(last_loss):
                break
            last_loss = loss
        optimizer.step()
        scheduler.step()
        if on_step is not None:
            on_step()
    Ut.grad = Pt.grad = None
    return Pt, Ut.transpose(1, 2).contiguous(), step


def fit_adam_published(target: Tensor, U: Tensor, P: Tensor, schedule: AdamSchedule) -> tuple[Tensor, Tensor, list[float]]:
    """The published procedure verbatim: one matrix, autograd on the mean squared error, and the loss
    read back to the host every step. Kept as the reference for tests and the fit benchmark."""
    target = target.float()
    U = U.to(target).clone().requires_grad_(True)
    P = P.to(target).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([U, P], lr=schedule.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, schedule.lr_decay_every, schedule.lr_decay)
    losses = []
    for _ in range(schedule.steps):
        optimizer.zero_grad()
        loss = torch.mean((U @ P.T - target) ** 2)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return P.detach().T.contiguous(), U.detach().contiguous(), losses


SUBSPACE_EXTRA = 32  # block columns beyond r: the energy converges at (σ_{r+33}/σ_r)² per iteration
SUBSPACE_MAX_ITER = 60  # then the full eigendecomposition
SUBSPACE_MIN_SIDE = 4  # the iteration pays when the block is at most 1/4 of the smaller side
CLOSED_FORM_TOL = 1e-8  # target excess of the relative error over the optimum (the guarantee is 1e-7)
RANDOMIZED_TOL = 5e-5  # svd_randomized's estimated target; its guarantee is error / optimum ≤ 1 + 1e-4
# the cost model: a full symmetric eigendecomposition of an n × n matrix costs about this many n³ multiply-adds
# of a matrix product (LAPACK syevd against a product, measured 10–13 at n = 512–2048 on one CPU thread)
EIGH_COST = 12.0
# an fp64 product against an fp32 one of the same shape, one CPU thread (measured 2.2–4 at 384² to 4096²)
FP64_PRODUCT = 2.5


def eigh_cost(m: int, n: int) -> float:
    """Multiply-adds, in matrix-product units, of :func:`_top_eigh_triplets` on a tall ``m × n`` matrix: the
    Gram matrix and its eigendecomposition."""
    return m * n * n + EIGH_COST * n ** 3


def iteration_cost(m: int, n: int, k: int) -> float:
    """Multiply-adds of one step of :func:`top_singular_triplets` with a block of ``k`` columns: ``M Q`` and
    ``Mᵀ (M Q)`` in fp64 (:data:`FP64_PRODUCT` fp32 products each), the block's Gram matrix, its QR and the
    small eigendecomposition (constants measured at 384 × 384 with a block of 96, where these small steps
    are half the cost)."""
    return 2 * FP64_PRODUCT * m * n * k + 4 * m * k * k + 8 * n * k * k + 25 * k ** 3


def iteration_budget(m: int, n: int, k: int) -> int:
    """How many iterations cost half the eigendecomposition path (the cost model above): the closed form
    tries the iteration for at most that many, so a matrix it does not suit costs at most about 1.5 times
    the direct path (still less than the full SVD PEFT's ``pissa`` takes, about 2–2.5 times that path)."""
    return int(eigh_cost(m, n) // (2 * iteration_cost(m, n, k)))


def _iterations_left(energies: list[float], total: float, tol: float, relative: bool = False,
                     cautious: bool = False) -> float:
    """How many more iterations the top-r Ritz energy needs before ``‖W − W_Q‖/‖W‖`` is within ``tol`` of the
    optimum (``relative``: within ``tol`` × the optimum): 0 when it is there, ``inf`` when not yet known.
    Subspace iteration raises the energy monotonically and geometrically, so the remaining deficit is
    estimated from the last increment and the contraction of the last two, and shrinks by that contraction
    per iteration; an energy that stopped moving (at fp32 rounding) is converged too. ``cautious``: assume
    the contraction slows to its square root from here on. Block Krylov needs that: its fast directions
    converge first, so the increments can shrink faster than what is left (SmolLM2 layer 22's q_proj at
    r = 8 stopped at 1.6e-4 × the optimum, estimated 4e-5)."""
    if len(energies) < 3:
        return math.inf
    increment, before = energies[-1] - energies[-2], energies[-2] - energies[-3]
    if increment <= 1e-12 * total:
        return 0
    contraction = increment / before if before > 0 else 1.0
    if contraction >= 0.9:
        return math.inf
    if cautious:
        contraction = math.sqrt(contraction)
    deficit = increment * contraction / (1 - contraction)
    error = math.sqrt(max(total - energies[-1], 0.0) / total)
    # ‖W − W_Q‖ − ‖W − W_r‖ ≈ deficit / (2 ‖W‖ ‖W − W_Q‖) in units of ‖W‖
    target = 2 * tol * error * total * (error if relative else 1.0)
    if deficit <= target:
        return 0
    return math.log(target / deficit) / math.log(contraction) if target > 0 and contraction > 0 else math.inf


def _energy_converged(energies: list[float], total: float, tol: float, relative: bool = False) -> bool:
    """Whether :func:`_iterations_left` is 0."""
    return _iterations_left(energies, total, tol, relative) == 0


def top_singular_triplets(M: Tensor, r: int, tol: float = CLOSED_FORM_TOL, max_iter: int = SUBSPACE_MAX_ITER,
                          extra: int = SUBSPACE_EXTRA, generator: torch.Generator | None = None,
                          relative: bool = False, best_effort: bool = False) -> tuple[Tensor, Tensor, Tensor] | None:
    """Top-r singular triplets ``(U, S, V)`` of a tall ``M (m × n)`` with ``M V = U diag(S)``, by subspace
    iteration with a Rayleigh–Ritz step on a block of ``r + extra`` columns from a seeded random start
    (``generator``, default a fixed seed); None when the energy has not converged to ``tol`` (of the
    relative error; ``relative``: × the optimum) within ``max_iter`` iterations — ``best_effort``: the
    last iterate instead — or when the block is too wide for the iteration to beat a full
    eigendecomposition. Without ``best_effort`` the iteration stops once it is predicted to cost more than
    half the eigendecomposition (:func:`iteration_budget`), and is not tried when fewer than 10 iterations fit.
    Only the energy captured by the top r directions has to converge, not each vector, so tiny gaps between
    singular values do not slow it down (it is the gap after the block, ``σ_{r+extra+1}/σ_r``, that matters).

    Each step costs two products with ``M`` and small work on the block (:func:`_rayleigh_ritz`), all in
    ``M``'s dtype: the closed form passes an fp64 ``M``, so that the split between nearly equal ``σ_r`` and
    ``σ_{r+1}`` does not depend on the rounding of the products (which changes with the thread count)."""
    m, n = M.shape
    k = r + extra
    if k * SUBSPACE_MIN_SIDE > min(m, n):
        return None
    if not best_effort:
        max_iter = min(max_iter, iteration_budget(m, n, k))
        if max_iter < 10:  # real weights need 9–17 (MiniLM, r = 8–64): the eigendecomposition is cheaper
            return None
    total = float(torch.linalg.vector_norm(M)) ** 2
    if total == 0:
        return None
    start = torch.randn(m, k, generator=generator or torch.Generator().manual_seed(0)).to(M)
    Q, _ = torch.linalg.qr(M.T @ start)  # an orthonormal basis in M's row space
    energies = []
    for iteration in range(max_iter):
        B = M @ Q
        U, S, V = _rayleigh_ritz(B, Q, r)
        energies.append(float(S.double().square().sum()))
        left = _iterations_left(energies, total, tol, relative)
        if left == 0 or best_effort and iteration == max_iter - 1:
            return U, S, V
        if not best_effort and math.isfinite(left) and iteration + 1 + left > max_iter:
            return None  # it would not converge within its budget: the eigendecomposition is cheaper
        Q, _ = torch.linalg.qr(M.T @ B)
    return None


def _rayleigh_ritz(B: Tensor, Q: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """The top-r triplets of ``M`` restricted to the orthonormal basis ``Q``, from ``B = M Q``: the best
    rank-r approximation of ``M`` within ``span(Q)``, by the eigendecomposition of the block's Gram matrix
    (in fp64 whatever ``B``'s dtype; returned in ``B``'s dtype)."""
    B64 = B.double()
    values, vectors = torch.linalg.eigh(B64.T @ B64)  # ascending
    top = vectors[:, -r:].flip(-1)
    S = values[-r:].flip(-1).clamp_min(0).sqrt()
    U = (B64 @ top) / S.clamp_min(torch.finfo(torch.float64).tiny)
    return U.to(B), S.to(B), (Q.double() @ top).to(B)


def _top_eigh_triplets(M: Tensor, r: int, precise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-r triplets from the full symmetric eigendecomposition of the Gram matrix ``MᵀM``; with ``precise``
    (``M`` in fp64), refined by one step of subspace iteration on the top ``r + SUBSPACE_EXTRA`` eigenvectors
    and a Rayleigh–Ritz step in fp64, which makes the split between nearly equal singular values
    independent of the fp32 rounding (measured on MiniLM at 1 vs 2 threads: products within 3e-7, not 3e-5)."""
    _, eigenvectors = torch.linalg.eigh(M.T @ M)  # ascending
    if precise is not None:
        block = eigenvectors[:, -min(r + SUBSPACE_EXTRA, M.shape[1]):].to(precise)
        Q, _ = torch.linalg.qr(precise.T @ (precise @ block))
        return _rayleigh_ritz(precise @ Q, Q, r)
    V = eigenvectors[:, -r:].flip(-1)
    MV = M @ V  # = U·S for the top r triplets of M
    S = torch.linalg.vector_norm(MV, dim=0)
    return MV / S.clamp_min(torch.finfo(S.dtype).tiny), S, V


def fit_svd(target: Tensor, r: int) -> tuple[Tensor, Tensor, float]:
    """Closed form: the truncated SVD of ``target`` split √S/√S. Returns ``(A0, B0, optimum)`` in fp32.

    Only the top r triplets are needed: they come from :func:`top_singular_triplets` on an fp64 copy of the
    target (about 10× faster than a full SVD at 4096² and r = 8), or, when that has not converged or the
    matrix is small, from the fp32 eigendecomposition of the smaller Gram matrix refined in fp64. Either way
    the product's relative error is within 1e-7 of the optimum, which is returned as the relative error of
    the rank-r product, and the same seed gives the same product at any thread count (fp64 rounding)."""
    T = target.float()
    wide = T.shape[0] < T.shape[1]
    M = T.T if wide else T  # tall: its Gram matrix is the smaller one
    M64 = M.double()
    triplets = top_singular_triplets(M64, r)
    U, S, V = triplets if triplets is not None else _top_eigh_triplets(M, r, precise=M64)
    # measured directly: ‖W‖² − Σ S_i² would cancel catastrophically for (nearly) rank-r matrices
    norm = float(torch.linalg.vector_norm(M64))
    US, rows = U * S, max(1, 2**21 // M.shape[1])  # the residual in blocks of 16 MiB, not one more copy of W
    tail = math.sqrt(sum(float(torch.linalg.vector_norm(torch.addmm(M64[i:i + rows], US[i:i + rows], V.T, alpha=-1))) ** 2
                         for i in range(0, M.shape[0], rows)))
    del M64
    optimum = min(tail / norm, 1.0) if norm > 0 else 0.0
    left, right = (V, U.T) if wide else (U, V.T)
    A0, B0 = split_singular_triplets(left, S, right, 1.0)
    return A0.float(), B0.float(), optimum


def krylov_cost(m: int, n: int, r: int, b: int) -> float:
    """Multiply-adds, in the units of :func:`eigh_cost`, of :func:`krylov_triplets` on a tall ``m × n`` matrix with
    blocks of ``b`` columns, for the space of about 4r columns a slowly decaying spectrum needs: two passes over
    the matrix per block, an energy check per block and the final eigendecomposition of the space."""
    k = min(n, 4 * r)
    return 2 * m * n * k + (k / b) * 4 / 3 * k ** 3 + EIGH_COST * k ** 3


def krylov_triplets(M: Tensor, r: int, block: int, max_depth: int, generators: list[torch.Generator],
                    tol: float = RANDOMIZED_TOL, scratch: bool = False) -> tuple[Tensor, Tensor, Tensor] | None:
    """Top-r singular triplets ``(U, S, V)`` of each of a batch of tall matrices ``M (E × m × n)``,
    ``M V ≈ U diag(S)``, by block Krylov (Musco & Musco 2015): an orthonormal basis ``X`` of
    ``[MᵀΩ, (MᵀM) MᵀΩ, (MᵀM)² MᵀΩ, …]`` grown one block of ``block`` columns per step from a Gaussian ``Ω``
    drawn from each matrix's own generator, each block orthogonalized against the earlier ones (twice) and by
    QR; then the Rayleigh–Ritz step on the whole space. Every product with ``M`` is kept (``M X`` is the
    projection), so ``d + 1`` blocks cost ``2d + 2`` passes over ``M``; for a slowly decaying spectrum the
    space reaches the optimum with fewer passes than subspace iteration (PEFT's ``svd_lowrank``) on a block of
    the same width, because it keeps every power's block, not just the last.

    After each step each matrix's top-r Ritz energy comes from the eigenvalues of its space's Gram matrix
    ``(MX)ᵀ(MX)`` (fp32, as PEFT's path: no fp64 work; eigenvectors only at the end); a matrix stops growing
    once its error is estimated within ``tol`` × the optimum (:func:`_iterations_left`, cautious: its convergence
    can slow down after a fast start), or after ``max_depth`` steps, by its own energies
    only: its result does not depend on the other matrices of the batch. The batch shares every call, which is
    what makes small matrices cheap. None when the cost model (:func:`krylov_cost`) finds the exact
    eigendecomposition cheaper. ``scratch``: ``M`` is a copy the solver may overwrite, so dropping the matrices
    that stopped moves the rest to its front instead of copying them (at most one more copy of the batch else)."""
    E, m, n = M.shape
    b = min(block, r)
    if krylov_cost(m, n, r, b) > eigh_cost(m, n):
        return None
    depth = min(max_depth, n // b - 1)
    totals = torch.linalg.vector_norm(M, dim=(1, 2)).double().square().tolist()
    U = torch.empty(E, m, r, dtype=M.dtype, device=M.device)
    S = torch.empty(E, r, dtype=M.dtype, device=M.device)
    V = torch.empty(E, n, r, dtype=M.dtype, device=M.device)
    omega = torch.stack([torch.randn(m, b, generator=g) for g in generators]).to(M)
    # the basis and the products are kept transposed (blocks as rows): a product with the skinny operand on the
    # left runs 2-4x faster in CPU GEMM kernels at these widths (one with it on the right of Mᵀ is pathological)
    Mt = M.transpose(1, 2)
    # the space grows in place, in buffers of which the first k rows (and columns of G) are in use; doubled when
    # full (up to the largest space, (depth + 1) blocks), so growing costs no copy of the whole space per block
    capacity = min((depth + 1) * b, max(2 * b, -(-4 * r // b) * b))
    X_all, Y_all, G_all = M.new_empty(E, capacity, n), M.new_empty(E, capacity, m), M.new_empty(E, capacity, capacity)
    k = b
    X_all[:, :k] = _orthonormal_rows(omega.transpose(1, 2) @ M)
    Xt = X_all[:, :k]  # the basis of the matrices still growing, (E' × k × n)
    Y_all[:, :k] = Xt @ Mt
    Yt = Y_all[:, :k]  # (M X)ᵀ
    G_all[:, :k, :k] = Yt @ Yt.transpose(1, 2)
    G = G_all[:, :k, :k]  # (M X)ᵀ (M X)
    energies: list[list[float]] = [[] for _ in range(E)]
    active, own = list(range(E)), scratch  # own: M may be overwritten (a copy, not the caller's tensor)
    first_check = max(0, (2 * r) // b - 2)  # energies from here on: three of them by a space of 2r columns
    for step in range(depth + 1):
        done = []
        if step >= first_check:
            power = torch.linalg.eigvalsh(G)[:, -r:].double().clamp_min(0).sum(dim=1).tolist()
            for i, (e, p) in enumerate(zip(active, power)):
                energies[e].append(p)
                left = _iterations_left(energies[e], totals[e], tol, relative=True, cautious=True) if totals[e] else 0
                if left == 0:
                    done.append(i)
        if step == depth:
            done = list(range(len(active)))
        if done:  # the Rayleigh–Ritz step of the matrices that stop here, on their space
            values, vectors = torch.linalg.eigh(G[done])  # ascending
            top = vectors[:, :, -r:].flip(-1).to(M)
            sigma = values[:, -r:].flip(-1).clamp_min(0).sqrt().to(M)
            idx = [active[i] for i in done]
            U[idx] = (Yt[done].transpose(1, 2) @ top) / sigma[:, None, :].clamp_min(torch.finfo(M.dtype).tiny)
            S[idx] = sigma
            V[idx] = Xt[done].transpose(1, 2) @ top
            if len(done) == len(active):
                break
            keep = [i for i in range(len(active)) if i not in done]
            active = [active[i] for i in keep]
            X_all, Y_all, G_all = X_all[keep], Y_all[keep], G_all[keep]
            Xt, Yt, G = X_all[:, :k], Y_all[:, :k], G_all[:, :k, :k]
            M, own = _kept(M, keep, own), True  # only the matrices still growing; Mᵀ stays a view of M
            Mt = M.transpose(1, 2)
        Zt = Yt[:, -b:] @ M  # (Mᵀ M x)ᵀ for the last block
        for _ in range(2):  # block Gram–Schmidt, twice: the new block is orthogonal to the space in fp32
            Zt -= (Zt @ Xt.transpose(1, 2)) @ Xt
        if k + b > capacity:
            capacity = min((depth + 1) * b, 2 * capacity)
            X_all, Y_all, G_all = (_grown(X_all, k, capacity), _grown(Y_all, k, capacity),
                                   _grown(G_all, k, capacity, square=True))
        X_all[:, k:k + b] = _orthonormal_rows(Zt)
        Y_all[:, k:k + b] = X_all[:, k:k + b] @ Mt
        Yt = Y_all[:, :k + b]
        cross = Yt @ Y_all[:, k:k + b].transpose(1, 2)  # the Gram matrix's new columns
        G_all[:, :k + b, k:k + b] = cross
        G_all[:, k:k + b, :k] = cross[:, :k].transpose(1, 2)
        k += b
        Xt, G = X_all[:, :k], G_all[:, :k, :k]
    return U, S, V


def _kept(M: Tensor, keep: list[int], own: bool) -> Tensor:
    """The matrices ``keep`` (ascending) of the batch ``M``: a copy of them from the caller's tensor, or, from this
    solver's own copy, moved to its front in place, so that dropping matrices never holds two copies of the batch."""
    if not own:
        return M[keep]
    for j, i in enumerate(keep):
        if i != j:
            M[j] = M[i]
    return M[:len(keep)]


def _grown(buffer: Tensor, k: int, capacity: int, square: bool = False) -> Tensor:
    """``buffer (E × rows × …)`` with room for ``capacity`` rows (and columns, ``square``), its first k kept."""
    grown = buffer.new_empty(buffer.shape[0], capacity, capacity if square else buffer.shape[2])
    if square:
        grown[:, :k, :k] = buffer[:, :k, :k]
    else:
        grown[:, :k] = buffer[:, :k]
    return grown


def _orthonormal_rows(Z: Tensor) -> Tensor:
    """An orthonormal basis of the rows of each ``Z (E × b × n)``, as rows."""
    return torch.linalg.qr(Z.transpose(1, 2))[0].transpose(1, 2)


def fit_svd_randomized_batch(targets: Tensor, r: int, block: int, niter: int,
                             generators: list[torch.Generator], scratch: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`fit_svd_randomized` of a batch of same-shape matrices ``targets (E × out × in)``, one generator
    each; returns ``(A0 (E × r × in), B0 (E × out × r))``. ``scratch``: ``targets`` is a copy the solver may
    overwrite (:func:`krylov_triplets`)."""
    T = targets.float()
    wide = T.shape[1] < T.shape[2]
    M = T.transpose(1, 2) if wide else T
    triplets = krylov_triplets(M, r, block, niter, generators, scratch=scratch and T is targets)
    if triplets is None:
        triplets = tuple(torch.stack(parts) for parts in zip(*(_top_eigh_triplets(Mi, r, precise=Mi.double())
                                                               for Mi in M)))
    A0, B0 = [], []
    for U, S, V in zip(*triplets):
        left, right = (V, U.T) if wide else (U, V.T)
        A, B = split_singular_triplets(left, S, right, 1.0)
        A0.append(A)
        B0.append(B)
    return torch.stack(A0), torch.stack(B0)


def fit_svd_randomized(target: Tensor, r: int, block: int, niter: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Block Krylov (:func:`krylov_triplets`) with blocks of ``min(r, block)`` columns from a seeded start,
    stopped as soon as the error is estimated within ``RANDOMIZED_TOL`` × the optimum, or after ``niter``
    blocks; a matrix the cost model finds too small for it gets the exact triplets. Seeded, so the same call
    gives the same factors."""
    A0, B0 = fit_svd_randomized_batch(target[None], r, block, niter, [generator])
    return A0[0], B0[0]
