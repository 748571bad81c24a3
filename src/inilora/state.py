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


# how a weight's bytes are hashed: xxh3_128 (~10x SHA-256's speed here: 4 vs 43 ms for 64 MiB) from adapter format 3
# on; format 2 recorded SHA-256 fingerprints, still read. An accidental mismatch is what it guards against.
def _xxh3_128():
    import xxhash  # when first hashed: ``import inilora`` loads nothing beyond what ``import peft`` does

    return xxhash.xxh3_128()


FINGERPRINT_HASHES = {"sha256": hashlib.sha256, "xxh3_128": _xxh3_128}
FINGERPRINT_HASH = "xxh3_128"
_BLOCK_BYTES = 1 << 20  # a cast (or a copy to the host) is hashed one block of rows at a time


def fingerprint(weight: Tensor, dtype: torch.dtype | None = None, algorithm: str = FINGERPRINT_HASH) -> str:
    """A hash of a weight's dtype, shape and exact bytes (Conv1D's transposed view hashes as stored); with
    ``dtype``, of the weight cast to it (what loading the same checkpoint in ``dtype`` gives). The bytes are
    streamed: a cast, a strided view or a weight on an accelerator passes through one small host buffer, so no
    weight-sized copy is made."""
    t = weight.detach()
    if not t.is_contiguous() and t.T.is_contiguous():
        t = t.T
    dtype = dtype or t.dtype
    digest = FINGERPRINT_HASHES[algorithm]()
    digest.update(f"{dtype}:{tuple(t.shape)}:".encode())
    if t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous():
        digest.update(tensor_bytes(t))
    elif t.numel():
        rows = t.reshape(1, -1) if t.dim() < 2 else t.flatten(1)
        step = max(1, _BLOCK_BYTES // max(1, rows.shape[1] * max(t.element_size(), dtype.itemsize)))
        buffer = torch.empty((min(step, rows.shape[0]), rows.shape[1]), dtype=dtype)
        for start in range(0, rows.shape[0], step):
            block = buffer[:min(step, rows.shape[0] - start)]
            block.copy_(rows[start:start + step])
            digest.update(tensor_bytes(block))
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
