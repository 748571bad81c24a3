"""What an initialization leaves behind on the PeftModel, for save/export/merge, and the weight
fingerprint that ties an adapter to the exact base it was made on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ._io import tensor_bytes
from .methods import Method
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


RELOAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # a base may be reloaded in any of these


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).split(".")[-1]


@dataclass
class LayerState:
    """One initialized layer: its factors as stored in the adapter (CPU copies), the original
    weight's identity, and how its residual is held."""

    A0: Tensor
    B0: Tensor
    scaling: float
    _fingerprint: str | None  # None: taken by ``fingerprints_of`` when first read
    weight_dtype: torch.dtype
    residual_fp32: bool
    # the original weight's fingerprint in each dtype of RELOAD_DTYPES (its own included), by dtype name, so
    # that the same checkpoint loaded in another dtype is recognised; empty: only ``fingerprint`` is known
    _fingerprints: dict[str, str] = field(default_factory=dict)
    # both, for a base weight the initialization left as it was (plain LoRA): taken when a save first asks
    fingerprints_of: Callable[[], tuple[str, dict[str, str]]] | None = field(default=None, repr=False, compare=False)

    def _take(self) -> None:
        if self._fingerprint is None:
            self._fingerprint, self._fingerprints = self.fingerprints_of()

    @property
    def fingerprint(self) -> str:
        self._take()
        return self._fingerprint

    @property
    def fingerprints(self) -> dict[str, str]:
        self._take()
        return self._fingerprints


@dataclass
class InitState:
    options: InitOptions
    method: Method  # resolved from ``options.method`` once, where the state is made
    adapter_name: str
    layers: dict[str, LayerState] = field(default_factory=dict)
    report: InitReport | None = None

    @property
    def is_residual(self) -> bool:
        return self.method.residual
