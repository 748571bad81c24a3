"""What every method shares: the ``Method`` record, one target matrix, its factors, and the
per-layer generator; the matrix helpers are in :mod:`inilora.linalg` — pure tensor math, no PEFT.

Each method maps one weight ``W`` (``out × in``, fp32) to ``(A0, B0)`` with ``A0: r × in`` and
``B0: out × r``. Residual methods subtract ``scaling · B0 @ A0`` from ``W``; plain LoRA subtracts
nothing (``B0 = 0``). See docs/methods.md for the definitions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import torch

from ..matrices import Factors, Target
from ..options import MethodName

if TYPE_CHECKING:
    from tqdm.auto import tqdm

    from ..cache import FitCache
    from ..options import InitOptions

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
    # σ per module name of the fit's start where it is a mean over all targets (the published σ rule), for
    # targets computed one at a time (ZeRO-3); it reads ``targets`` only when it needs them. None: no such σ
    start_sigmas: Callable[[Iterable[Target], "InitOptions"], dict[str, float]] | None = field(default=None,
                                                                                                repr=False)

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
