"""Small file helpers used everywhere, each defined once: tensor and file hashing, atomic writes,
and the cache root."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import Tensor

CACHE_ENV = "INILORA_CACHE"


def cache_root() -> Path:
    """Where inilora keeps what it makes once (converted models, fitted factors): ``$INILORA_CACHE``
    or ``~/.cache/inilora``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "inilora")


def tensor_bytes(t: Tensor) -> memoryview:
    """A tensor's exact bytes as stored (contiguous, on the CPU), for hashing."""
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data


def hash_tensors(named: Iterable[tuple[str, Tensor]], digest=None):
    """``digest`` (default SHA-256) updated with each name and the tensor's bytes, in the given order."""
    digest = hashlib.sha256() if digest is None else digest
    for name, t in named:
        digest.update(name.encode())
        digest.update(tensor_bytes(t))
    return digest


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; renamed onto ``path`` when the block ends, removed
    if it fails — so readers see the old file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, payload) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))
