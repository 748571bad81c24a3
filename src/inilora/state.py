"""What an initialization leaves behind on the PeftModel, for save/export/merge, and the weight
fingerprint that ties an adapter to the exact base it was made on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ._io import tensor_bytes
from .methods import get_method
from .options import InitOptions
from .report import InitReport


def fingerprint(weight: Tensor) -> str:
    """A hash of a weight's dtype, shape and exact bytes (Conv1D's transposed view hashes as stored)."""
    t = weight.detach()
    if not t.is_contiguous() and t.T.is_contiguous():
        t = t.T
    digest = hashlib.sha256()  # the fastest stdlib hash here (SHA extensions): ~2x blake2b
    digest.update(f"{t.dtype}:{tuple(t.shape)}:".encode())
    digest.update(tensor_bytes(t))
    return digest.hexdigest()[:32]


@dataclass
class LayerState:
    """One initialized layer: its factors as stored in the adapter (CPU copies), the original
    weight's identity, and how its residual is held."""

    A0: Tensor
    B0: Tensor
    scaling: float
    _fingerprint: str | None  # None: taken by ``fingerprint_of`` when first read
    weight_dtype: torch.dtype
    residual_fp32: bool
    # the fingerprint of a base weight the initialization left as it was (plain LoRA), taken when a save asks
    fingerprint_of: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.fingerprint_of()
        return self._fingerprint


@dataclass
class InitState:
    options: InitOptions
    adapter_name: str
    layers: dict[str, LayerState] = field(default_factory=dict)
    report: InitReport | None = None

    @property
    def is_residual(self) -> bool:
        return get_method(self.options.method).residual
