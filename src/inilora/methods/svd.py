"""The SVD methods, PiSSA (top-r triplets) and MiLoRA (bottom-r), and the changes of basis that
factor one product differently."""

from __future__ import annotations

import torch
from torch import Tensor

from ..linalg import relative_tail_energy, split_singular_triplets
from .base import Factors, Method, per_matrix


def svd_factors(W: Tensor, r: int, scaling: float, smallest: bool = False) -> Factors:
    """PiSSA (top-r triplets) or MiLoRA (``smallest=True``: bottom-r), so ``scaling·B0·A0`` is that
    part of ``W``."""
    U, S, Vh = torch.linalg.svd(W.float(), full_matrices=False)
    keep = slice(S.numel() - r, None) if smallest else slice(0, r)
    A0, B0 = split_singular_triplets(U[:, keep], S[keep], Vh[keep], scaling)
    return Factors(A0, B0, optimum=relative_tail_energy(S, r))


# 2: each triplet's sign is canonical (linalg.canonical_signs), not LAPACK's
PISSA = Method("pissa", residual=True, rank_limited=True, best_rank_r=True,
               compute=per_matrix(lambda t, options: svd_factors(t.weight, t.r, t.scaling)), init_versions={None: 2})
MILORA = Method("milora", residual=True, rank_limited=True,
                compute=per_matrix(lambda t, options: svd_factors(t.weight, t.r, t.scaling, smallest=True)),
                init_versions={None: 2})
