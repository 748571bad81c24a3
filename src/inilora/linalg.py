"""Matrix helpers the methods, the solvers and the truncation share: the best rank-r error, canonical
singular-triplet signs, PiSSA's balanced split, and changes of basis that keep a product. Pure torch;
imports nothing from inilora."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def relative_tail_energy(singular_values: Tensor, r: int) -> float:
    """Eckart–Young: the best rank-r relative error ``sqrt(Σ_{i>r} S_i²) / sqrt(Σ S_i²)``."""
    energy = singular_values.double().square()
    total = energy.sum()
    if total == 0:
        return 0.0
    return math.sqrt(float(energy[r:].sum() / total))


def canonical_signs(U: Tensor, Vh: Tensor) -> tuple[Tensor, Tensor]:
    """The singular vectors ``U (m × r)``, ``Vh (r × n)`` of a matrix (in its own orientation: ``U`` on the
    side of its rows) with each triplet's sign fixed by one rule, as scikit-learn's ``svd_flip``: the
    largest-magnitude entry of each left vector is positive, and the right vector flips with it. An SVD
    defines each pair only up to a joint sign, and LAPACK's choice changes with the thread count, the CPU and
    the device; the product ``U diag(S) Vh`` does not change."""
    columns = torch.arange(U.shape[1], device=U.device)
    signs = torch.sign(U[U.abs().argmax(dim=0), columns])
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return U * signs[None, :], Vh * signs[:, None]


def split_singular_triplets(U: Tensor, S: Tensor, Vh: Tensor, scaling: float) -> tuple[Tensor, Tensor]:
    """Balanced factors of ``U diag(S) Vh / scaling``: √(S/scaling) on each side (PiSSA's split), from the
    triplets in their canonical signs (:func:`canonical_signs`), so every SVD path gives the same factors
    whatever signs its SVD chose. ``U`` and ``Vh`` must be in ``W``'s orientation (``U``: ``out × r``)."""
    U, Vh = canonical_signs(U, Vh)
    root = torch.sqrt(S / scaling)
    return (root[:, None] * Vh).contiguous(), (U * root[None, :]).contiguous()


def random_orthogonal(r: int, generator: torch.Generator) -> Tensor:
    """A Haar-random r × r orthogonal matrix (QR of a Gaussian, signs fixed by R's diagonal)."""
    Q, R = torch.linalg.qr(torch.randn(r, r, generator=generator, dtype=torch.float64))
    return (Q * torch.sign(torch.diagonal(R))[None, :]).float()


def rotate_basis(A0: Tensor, B0: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """``(Qᵀ A0, B0 Q)``: the same product in another basis of the rank-r factor space."""
    Q = Q.to(A0)
    return (Q.T @ A0).contiguous(), (B0 @ Q).contiguous()


def equalize_entry_scale(A0: Tensor, B0: Tensor) -> tuple[Tensor, Tensor]:
    """Rescale ``(A0/γ, B0·γ)`` so both factors have the same RMS entry (γ = (in/out)^¼ for balanced
    input): what Adam, moving every entry at the same rate, ends with. Keeps the product."""
    gamma = math.sqrt(float(A0.pow(2).mean().sqrt() / B0.pow(2).mean().sqrt()))
    return A0 / gamma, B0 * gamma
