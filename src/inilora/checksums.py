"""Integrity of a saved adapter: a sha256 of every file the load reads, recorded at save time in a
sealed ``inilora_config.json`` (the record carries a checksum of its own content), all checked before
the model is touched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ._io import file_sha256
from .errors import AdapterLoadError

SEAL = "sha256"  # the record's own checksum, over its canonical JSON without this key


def _canonical(record: dict) -> bytes:
    return json.dumps({k: v for k, v in record.items() if k != SEAL}, sort_keys=True).encode()


def write_sealed(path: Path, record: dict) -> None:
    """Write ``record`` as JSON with a checksum of its own content, so a changed byte is detected."""
    sealed = {**record, SEAL: hashlib.sha256(_canonical(record)).hexdigest()}
    path.write_text(json.dumps(sealed, indent=2))


def read_sealed(path: Path) -> dict:
    """Read a record written by :func:`write_sealed`; :class:`AdapterLoadError` if it was changed."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterLoadError(f"{path} is corrupted ({exc}).") from exc
    if not isinstance(record, dict) or record.get(SEAL) != hashlib.sha256(_canonical(record)).hexdigest():
        raise AdapterLoadError(f"{path} is corrupted: its content does not match its own checksum.")
    return record


def verify_files(directory: Path, recorded: dict[str, str]) -> None:
    """Check that each file named in ``recorded`` is present in ``directory`` with its recorded sha256."""
    for name, expected in recorded.items():
        path = directory / name
        if not path.is_file():
            raise AdapterLoadError(f"{path} is missing; the adapter was saved with it.")
        if file_sha256(path) != expected:
            raise AdapterLoadError(f"{path} is corrupted (truncated or changed): its sha256 differs from the one "
                                   "recorded at save time.")
