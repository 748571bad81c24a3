"""What every method shares: the ``Method`` record, one target matrix, its factors, and the tensor
helpers the methods and solvers build on — pure tensor math, no PEFT.

Each method maps one weight ``W`` (``out × in``, fp32) to ``(A0, B0)`` with ``A0: r × in`` and
``B0: out × r``. Residual methods subtract ``scaling · B0 @ A0`` from ``W``; plain LoRA subtracts
nothing (``B0 = 0``). See docs/methods.md for the definitions.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Mapping

import torch
from torch import Tensor

from ..matrices import Factors, Target

if TYPE_CHECKING:
    from tqdm.auto import tqdm

    from ..cache import FitCache
    from ..options import InitOptions

MethodName = Literal["lora", "pissa", "milora", "inilora", "inilora-alpha", "inilora-beta"]


# every target's factors from the options; ``bar`` advances one step per matrix; a method with a fit
# reuses and fills the fit cache (which counts its hits) when one is given
ComputeFactors = Callable[[list[Target], "InitOptions", "tqdm", "int | None", "FitCache | None"], dict[str, Factors]]


@dataclass(frozen=True)
class Method:
    """One initialization: what it leaves behind and how it computes its factors.

    ``solvers`` are the fit solvers it accepts (empty: it has no fit, so the fit's options would be
    ignored and are refused); ``init_versions`` bumps, per solver (a method without a fit: under ``None``), when
    its factors change, so stored results made with older factors are not mistaken for current ones (1 when
    absent)."""

    name: MethodName
    residual: bool  # its product is non-zero, so the base weight is replaced by a residual
    rank_limited: bool  # defined through the SVD / its optimum: needs r <= min(out, in)
    compute: ComputeFactors = field(repr=False)
    solvers: tuple[str, ...] = ()
    init_versions: Mapping[str | None, int] = field(default_factory=dict)
    best_rank_r: bool = False  # its product is W's best rank-r approximation: LoftQ-style refits keep its meaning

    @property
    def has_fit(self) -> bool:
        return bool(self.solvers)

    def init_version(self, solver: str | None = None) -> int:
        """The version of the factors ``solver`` gives (a method without a fit has one, whatever ``solver``)."""
        return self.init_versions.get(solver if self.has_fit else None, 1)


def per_matrix(factors_of: Callable[[Target, "InitOptions"], Factors]) -> ComputeFactors:
    """A method computed one matrix at a time, as a :data:`ComputeFactors`."""
    def compute(targets: list[Target], options: "InitOptions", bar: "tqdm", model_bytes: int | None,
                cache: "FitCache | None"):
        result = {}
        for t in targets:
            result[t.name] = factors_of(t, options)
            bar.update(1)
        return result
    return compute


def layer_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator for one layer, derived from the user's seed and the layer's name, so a
    layer's draw does not depend on the order layers are visited, on the device, or on the rank."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


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
