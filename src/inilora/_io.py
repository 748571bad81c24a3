"""Small file helpers used everywhere, each defined once: tensor and file hashing, atomic writes,
the cache root, and what names a hub repository."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import Tensor

CACHE_ENV = "INILORA_CACHE"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name, as the hub spells repository ids


def is_hub_id(name: str | os.PathLike) -> bool:
    """``org/name`` that is not a local path: a model or adapter to fetch from the hub."""
    return bool(HUB_ID.match(str(name))) and not Path(str(name)).expanduser().exists()


def hub_failure(name: str, exc: BaseException) -> str:
    """Why the hub could not give ``name``, in one line: unreachable (no network, or offline mode) and
    not cached, or the hub's own answer (no such repository, gated, no such revision)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return (f"the hub could not be reached (no network, or HF_HUB_OFFLINE=1) and {name!r} is not in the "
                    "local hub cache")
        cause = cause.__cause__ or cause.__context__
    return f"the hub answered: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")
HUB_PROBE_SECONDS = 3.0


def hub_unreachable(name: str) -> str | None:
    """Why the hub cannot give ``name`` at all, found in at most a few seconds: it is not in the local hub
    cache and the hub's host does not accept a connection — so a load fails at once instead of after
    huggingface_hub's retries (about 23 s per file). None (let the load try) when the repository is in the
    cache, offline mode is on (that fails fast by itself), a proxy is configured (the host is reached
    through it, not directly), or the host answers."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    if (Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=name, repo_type="model")).is_dir():
        return None
    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as exc:
        return (f"the hub could not be reached ({host}: {exc.strerror or type(exc).__name__}) and {name!r} is not "
                "in the local hub cache")
    return None


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
