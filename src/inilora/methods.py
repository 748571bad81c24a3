"""Initial LoRA factors for every method — pure tensor math, no PEFT.

Each method maps one weight ``W`` (``out × in``, fp32) to ``(A0, B0)`` with ``A0: r × in`` and
``B0: out × r``. Residual methods subtract ``scaling · B0 @ A0`` from ``W``; plain LoRA subtracts
nothing (``B0 = 0``). See SPEC.md for the definitions.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

METHODS = ("lora", "pissa", "milora", "inilora", "inilora-alpha", "inilora-beta")
# methods whose product is non-zero, so the base weight is replaced by a residual
RESIDUAL_METHODS = tuple(m for m in METHODS if m != "lora")
# methods that need r <= min(out, in): they are defined through the SVD / its optimum
RANK_LIMITED_METHODS = ("pissa", "milora", "inilora")
ALPHA_STD = 0.5
# Bumped when a method's initial factors change, so stored results (the benchmark's runs) made with
# older factors are not mistaken for current ones. (method, solver) -> version; 1 when absent.
# 2: inilora's closed forms factor the optimum adam-like. 3 (svd): top-r by subspace iteration, not eigh.
INIT_VERSIONS = {("inilora", "svd"): 3, ("inilora", "svd_randomized"): 2}


@dataclass
class Factors:
    """Initial factors of one matrix. ``optimum`` is the Eckart–Young relative error
    ``‖W − W_r‖_F / ‖W‖_F`` when the method computed the spectrum anyway, else None."""

    A0: Tensor
    B0: Tensor
    optimum: float | None = None
    fitted_by_rank: int | None = None  # the torch.distributed rank that fitted it (None: not fitted here)


def layer_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator for one layer, derived from the user's seed and the layer's name, so a
    layer's draw does not depend on the order layers are visited, on the device, or on the rank."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def lora_factors(out_features: int, in_features: int, r: int, generator: torch.Generator) -> Factors:
    """PEFT's default: A0 Kaiming-uniform (a=√5), B0 = 0."""
    A0 = torch.empty(r, in_features)
    nn.init.kaiming_uniform_(A0, a=math.sqrt(5), generator=generator)
    return Factors(A0, torch.zeros(out_features, r))


def alpha_factors(out_features: int, in_features: int, r: int, generator: torch.Generator) -> Factors:
    """IniLoRA-α: both factors i.i.d. N(0, 0.5²)."""
    B0 = torch.randn(out_features, r, generator=generator) * ALPHA_STD
    A0 = torch.randn(r, in_features, generator=generator) * ALPHA_STD
    return Factors(A0, B0)


def beta_factors(out_features: int, in_features: int, r: int, generator: torch.Generator) -> Factors:
    """IniLoRA-β: Kaiming-normal (fan_in, gain √2): std √(2/in) for A0, √(2/r) for B0."""
    B0 = torch.empty(out_features, r)
    A0 = torch.empty(r, in_features)
    nn.init.kaiming_normal_(B0, mode="fan_in", nonlinearity="relu", generator=generator)
    nn.init.kaiming_normal_(A0, mode="fan_in", nonlinearity="relu", generator=generator)
    return Factors(A0, B0)


def relative_tail_energy(singular_values: Tensor, r: int) -> float:
    """Eckart–Young: the best rank-r relative error ``sqrt(Σ_{i>r} S_i²) / sqrt(Σ S_i²)``."""
    energy = singular_values.double().square()
    total = energy.sum()
    if total == 0:
        return 0.0
    return math.sqrt(float(energy[r:].sum() / total))


def split_singular_triplets(U: Tensor, S: Tensor, Vh: Tensor, scaling: float) -> tuple[Tensor, Tensor]:
    """Balanced factors of ``U diag(S) Vh / scaling``: √(S/scaling) on each side (PiSSA's split)."""
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


def svd_factors(W: Tensor, r: int, scaling: float, smallest: bool = False) -> Factors:
    """PiSSA (top-r triplets) or MiLoRA (``smallest=True``: bottom-r), so ``scaling·B0·A0`` is that
    part of ``W``."""
    U, S, Vh = torch.linalg.svd(W.float(), full_matrices=False)
    keep = slice(S.numel() - r, None) if smallest else slice(0, r)
    A0, B0 = split_singular_triplets(U[:, keep], S[keep], Vh[keep], scaling)
    return Factors(A0, B0, optimum=relative_tail_energy(S, r))


def random_factors(method: str, shape: tuple[int, int], r: int, generator: torch.Generator) -> Factors:
    """The factors of a method that does not look at ``W`` (lora, inilora-alpha, inilora-beta)."""
    draw = {"lora": lora_factors, "inilora-alpha": alpha_factors, "inilora-beta": beta_factors}[method]
    return draw(shape[0], shape[1], r, generator)
