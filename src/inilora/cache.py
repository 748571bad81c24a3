"""A disk cache of fitted IniLoRA factors, so a model is fitted once.

An entry is one safetensors file named by a key that hashes everything the fit depends on: the
weight's fingerprint, its layer name (the seed is drawn per name), rank, scaling, σ, solver and its
options. Writes are atomic (a temp file in the same directory, then a rename), so processes sharing
the directory never see a partial entry: two that fit the same matrix at once both write the same
factors, and the last rename wins. A write that fails (disk full, read-only directory) leaves no
file behind and only costs a refit next time; a process killed while writing leaves only a hidden
temporary file, which the next write to the cache removes. An entry whose checksum, key or shapes do
not match is treated as a miss and refitted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from ._io import atomic_path, cache_root, hash_tensors, remove_stale_temps
from .matrices import Factors

logger = logging.getLogger("inilora")
FIT_CACHE_ENV = "INILORA_FIT_CACHE"


def default_cache_dir() -> Path:
    """``$INILORA_FIT_CACHE``, else ``$INILORA_CACHE/fits``, else ``~/.cache/inilora/fits``."""
    if os.environ.get(FIT_CACHE_ENV):
        return Path(os.environ[FIT_CACHE_ENV])
    return cache_root() / "fits"


def fit_key(weight_fingerprint: str, name: str, r: int, scaling: float, fit_options: dict) -> str:
    payload = json.dumps({"w": weight_fingerprint, "name": name, "r": r, "s": repr(float(scaling)),
                          **{k: repr(v) if isinstance(v, float) else v for k, v in sorted(fit_options.items())}},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:40]


def _tensor_checksum(tensors: dict[str, Tensor]) -> str:
    return hash_tensors(sorted(tensors.items())).hexdigest()


class FitCache:
    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.hits = self.misses = self.corrupt = 0
        self._swept = False  # the temporary files of killed writers, removed before the first write

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str, out_features: int, in_features: int, r: int) -> Factors | None:
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            A0, B0 = tensors["A0"], tensors["B0"]
            valid = (meta.get("key") == key and meta.get("checksum") == _tensor_checksum(tensors)
                     and A0.shape == (r, in_features) and B0.shape == (out_features, r))
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            logger.warning("inilora cache: unreadable entry %s (%s); refitting", path, exc)
            valid = False
        if not valid:
            self.corrupt += 1
            self.misses += 1
            logger.warning("inilora cache: entry %s is corrupted or does not match; refitting", path)
            return None
        self.hits += 1
        optimum = meta.get("optimum")
        return Factors(A0, B0, float(optimum) if optimum not in (None, "None") else None)

    def store(self, key: str, factors: Factors) -> None:
        """Write an entry atomically; a failed write is logged and skipped (the fit itself stands)."""
        tensors = {"A0": factors.A0.detach().float().cpu().contiguous(),
                   "B0": factors.B0.detach().float().cpu().contiguous()}
        meta = {"key": key, "checksum": _tensor_checksum(tensors), "optimum": str(factors.optimum)}
        try:
            if not self._swept and self.directory.is_dir():
                remove_stale_temps(self.directory)
                self._swept = True
            with atomic_path(self.path(key)) as tmp:
                save_file(tensors, tmp, metadata=meta)
        except (OSError, SafetensorError) as exc:
            logger.warning("inilora cache: could not write %s (%s); the fit is used but not cached", self.path(key), exc)
