"""The SVD methods, PiSSA (top-r triplets) and MiLoRA (bottom-r), and the changes of basis that
factor one product differently."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Factors, Method, per_matrix, relative_tail_energy, split_singular_triplets


def svd_factors(W: Tensor, r: int, scaling: float, smallest: bool = False) -> Factors:
    """PiSSA (top-r triplets) or MiLoRA (``smallest=True``: bottom-r), so ``scaling·B0·A0`` is that
    part of ``W``."""
    U, S, Vh = torch.linalg.svd(W.float(), full_matrices=False)
    keep = slice(S.numel() - r, None) if smallest else slice(0, r)
    A0, B0 = split_singular_triplets(U[:, keep], S[keep], Vh[keep], scaling)
    return Factors(A0, B0, optimum=relative_tail_energy(S, r))


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


# 2: each triplet's sign is canonical (base.canonical_signs), not LAPACK's
PISSA = Method("pissa", residual=True, rank_limited=True, best_rank_r=True,
               compute=per_matrix(lambda t, options: svd_factors(t.weight, t.r, t.scaling)), init_versions={None: 2})
MILORA = Method("milora", residual=True, rank_limited=True,
                compute=per_matrix(lambda t, options: svd_factors(t.weight, t.r, t.scaling, smallest=True)),
                init_versions={None: 2})
