"""A spool of jobs a module could not finish before it stopped, for the next start.

A job is a small JSON header and a list of byte blobs (the JPEG frames of a GIF, say) in one
file, ``<folder>/<name>.job``, written crash-safely (temp file, fsync, rename) and 0640. A
job file that cannot be read back is moved aside as ``<name>.bad`` (kept for a look, never
retried) instead of blocking the spool. The folder lives under the storage root in a hidden
directory, which the media scan, retention and the status page skip.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import Any

from spyoncino.helpers.files import atomic_write_bytes

SUFFIX = ".job"
_MAGIC = b"SPYJOB1\n"
_LEN = struct.Struct(">I")


class SpoolError(ValueError):
    """A job file that is truncated or not a job at all."""


def job_path(folder: Path, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"not a job name: {name!r}")
    return folder / f"{name}{SUFFIX}"


def save(folder: Path, name: str, meta: dict[str, Any], blobs: list[bytes]) -> Path:
    """Write one job; returns its path. Blocking: run it in the executor."""
    header = json.dumps(meta, separators=(",", ":")).encode()
    parts = [_MAGIC, _LEN.pack(len(header)), header, _LEN.pack(len(blobs))]
    for blob in blobs:
        parts += [_LEN.pack(len(blob)), blob]
    path = job_path(folder, name)
    atomic_write_bytes(path, b"".join(parts))
    return path


def load(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    """(meta, blobs) of a job file; ``SpoolError`` when it is not a whole job."""
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        raise SpoolError(f"{path.name}: not a job file")
    pos = len(_MAGIC)

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise SpoolError(f"{path.name}: truncated")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    try:
        meta = json.loads(take(_LEN.unpack(take(4))[0]))
        count = _LEN.unpack(take(4))[0]
        blobs = [take(_LEN.unpack(take(4))[0]) for _ in range(count)]
    except (ValueError, struct.error) as e:
        raise SpoolError(f"{path.name}: {e}") from e
    if not isinstance(meta, dict):
        raise SpoolError(f"{path.name}: header is not an object")
    return meta, blobs


def pending(folder: Path) -> list[Path]:
    """The job files waiting in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    jobs = [p for p in folder.iterdir() if p.suffix == SUFFIX and p.is_file()]
    return sorted(jobs, key=lambda p: (p.stat().st_mtime, p.name))


def discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def set_aside(path: Path) -> None:
    """Keep an unreadable job for a look without retrying it on every start."""
    with contextlib.suppress(OSError):
        path.replace(path.with_suffix(".bad"))
