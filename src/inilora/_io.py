"""Small file helpers used everywhere, each defined once: tensor and file hashing, atomic writes of a
file and of a whole folder, the cache root, and what names a hub repository."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Callable, Iterable, Iterator

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
    """A temporary path next to ``path`` to write to; flushed to disk and renamed onto ``path`` when the
    block ends, removed if it fails — so readers see the old file or the whole new one, never half of it,
    even after a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def write_json_atomic(path: str | os.PathLike, payload) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))


def remove_stale_temps(directory: str | os.PathLike) -> None:
    """Remove the temporary files :func:`atomic_path` left in ``directory`` when its process was killed
    (those of processes still running are theirs to finish)."""
    for entry in Path(directory).glob(".*.tmp"):
        found = _STALE_FILE.match(entry.name)
        if found and not _alive(int(found["pid"])):
            entry.unlink(missing_ok=True)


# ---- a whole folder replaced at once ----

_STALE_FILE = re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
STAGED, BACKUP = "inilora-new", "inilora-old"  # .NAME.inilora-new-PID-HEX: being written; -old-: the folder it replaces
_RENAME_EXCHANGE = 2  # renameat2 flag (Linux): swap two paths in one atomic step


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's content to the disk (a folder: its names)."""
    if os.name == "nt" and os.path.isdir(path):  # Windows cannot open a folder to flush it
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _temporaries(target: Path) -> list[tuple[str, int, Path]]:
    """The (kind, pid, path) of each temporary folder a save of ``target`` made beside it."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?P<kind>{STAGED}|{BACKUP})-(?P<pid>\d+)-[0-9a-f]{{8}}$")
    if not target.parent.is_dir():
        return []
    found = []
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match:
            found.append((match["kind"], int(match["pid"]), entry))
    return found


def _target(path: str | os.PathLike) -> Path:
    target = Path(os.path.abspath(path))
    return Path(os.path.realpath(target)) if target.is_symlink() else target  # a link keeps pointing at the folder


def recover_folder(path: str | os.PathLike) -> None:
    """Finish what a save of the folder ``path`` left when its process was killed: if ``path`` is missing
    and the folder it was replacing was set aside (only where the swap takes two renames, see
    :func:`replaced_folder`), put it back; remove the temporary folders of saves whose process is gone.
    Called by every save and every load of an adapter."""
    target = _target(path)
    temporaries = [(kind, pid, folder) for kind, pid, folder in _temporaries(target) if not _alive(pid)]
    backups = [folder for kind, _, folder in temporaries if kind == BACKUP]
    if backups and not os.path.lexists(target):
        os.rename(max(backups, key=lambda folder: folder.stat().st_mtime), target)
        _fsync(target.parent)
    for _, _, folder in temporaries:
        shutil.rmtree(folder, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux's renameat2); False where the system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(error, os.strerror(error), str(b))


def _link(source: Path, destination: Path) -> None:
    """``destination`` becomes the same file as ``source`` (a hard link; a copy where links are refused)."""
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _keep(old: Path, new: Path, replaced: Callable[[PurePath], bool], relative: PurePath = PurePath()) -> None:
    """Bring into ``new`` every file of ``old`` that the save did not write and that ``replaced`` does not claim."""
    for entry in os.scandir(old / relative):
        rel = relative / entry.name
        source, destination = Path(entry.path), new / rel
        if replaced(rel):
            continue
        if entry.is_dir(follow_symlinks=False):
            if not os.path.lexists(destination):
                destination.mkdir()
            if destination.is_dir() and not destination.is_symlink():
                _keep(old, new, replaced, rel)
        elif not os.path.lexists(destination):
            _link(source, destination)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _fsync(os.path.join(folder, name))
        _fsync(folder)


@contextmanager
def replaced_folder(path: str | os.PathLike, replaced: Callable[[PurePath, Path], bool] = lambda rel, new: False,
                    seed: Iterable[str] = ()) -> Iterator[Path]:
    """Write a folder anew and swap it in whole: the block writes into the empty temporary folder it is
    given (a hidden sibling of ``path``, ``.NAME.inilora-new-PID-HEX``); when it ends, every file already in
    ``path`` that the block did not write is kept (hard-linked: no copy) unless ``replaced(relative path,
    new folder)`` says the save owns it, everything is flushed to disk, and the new folder takes ``path``'s
    place. ``seed``: files of ``path`` copied into the temporary folder first, for a writer that updates
    them (a model card).

    A kill at any instant leaves ``path`` as it was or as the block wrote it, never a mix: on Linux the
    swap is one atomic ``renameat2(RENAME_EXCHANGE)``; elsewhere (or on a file system without it) it is two
    renames, ``path`` → ``.NAME.inilora-old-…`` then new → ``path``, and a kill between them leaves
    ``path`` missing until the next save or load of it puts the old folder back (:func:`recover_folder`).
    If the block or the swap fails (a full disk, an exception), ``path`` is unchanged, the temporary
    folder is removed, and an ``OSError`` says so. The next save removes what a killed one left."""
    target = _target(path)
    for folder in (target.parent, target):  # the parent too: an adapter saved into a folder whose save was killed
        recover_folder(folder)
    if os.path.lexists(target) and not target.is_dir():
        raise FileExistsError(errno.EEXIST, "cannot save into a file; give a folder", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.{STAGED}-{os.getpid()}-{secrets.token_hex(4)}")
    staged.mkdir()
    swapped = False
    try:
        for name in seed:
            if (target / name).is_file():
                (staged / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(target / name, staged / name)
        yield staged
        if target.is_dir():
            _keep(target, staged, lambda rel: replaced(rel, staged))
        _fsync_tree(staged)
        swapped = _swap(staged, target)
    except BaseException as exc:
        if not swapped:
            shutil.rmtree(staged, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"{exc.strerror or exc}: saving {target} failed and left it as it was",
                          exc.filename) from exc
        if isinstance(exc, Exception) and hasattr(exc, "add_note"):
            exc.add_note(f"saving {target} failed and left it as it was")
        raise


def _swap(staged: Path, target: Path) -> bool:
    """``staged`` takes ``target``'s place; the folder it replaces is removed. True once the swap is done."""
    cwd = os.getcwd()
    inside = os.path.lexists(target) and (cwd == str(target) or cwd.startswith(str(target) + os.sep))
    if not os.path.lexists(target):
        os.rename(staged, target)
        old = None
    elif _exchange(staged, target):
        old = staged  # now holds what target held
    else:
        old = target.with_name(f".{target.name}.{BACKUP}-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(target, old)
        try:
            os.rename(staged, target)
        except BaseException:
            os.rename(old, target)
            raise
    try:  # the swap is done: what follows cannot undo it
        _fsync(target.parent)
        if inside:  # the process stood in the folder it replaced: stand in the new one
            os.chdir(cwd if os.path.isdir(cwd) else target)
    except OSError:
        pass
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return True
