"""Crash-safe files: temp name, fsync, rename, fsync the folder. Shared path layout of media.

After a power cut a reader finds either the old state or the complete new file, never a
half-written one under the final name. Temp names start with ``.`` and end with ``.part`` so
the index rebuild and retention skip (and clean) them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

TEMP_SUFFIX = ".part"


def local_time(wall_ts: float, tz: str | None = None) -> datetime:
    zone = ZoneInfo(tz) if tz else None
    return datetime.fromtimestamp(wall_ts, tz=zone).astimezone(zone)


def media_relpath(
    camera_id: str, wall_ts: float, event_id: str, ext: str, tz: str | None = None
) -> str:
    """``<camera>/<YYYY-MM-DD>/<event-id>.<ext>`` (the day in local time)."""
    day = local_time(wall_ts, tz).strftime("%Y-%m-%d")
    return f"{camera_id}/{day}/{event_id}.{ext.lstrip('.')}"


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created 0640): one process at a time runs
    the block (a schema migration at start); the kernel releases it if the holder dies."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: Mode of every file the box writes (media, index, state): owner and group, never others.
#: A camera's pictures and the event history are private, whatever the umask.
FILE_MODE = 0o640


def _create_private(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)


def private_file(path: Path) -> None:
    """Make sure ``path`` exists with at most ``FILE_MODE`` (SQLite gives its WAL the same).

    A file an older version created looser is tightened.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(_create_private(path))
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & ~FILE_MODE:
            os.chmod(path, mode & FILE_MODE)


def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` crash-safely; returns its sha256 hex digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with os.fdopen(_create_private(tmp), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()


def atomic_move(src: Path, dest: Path) -> str:
    """Move a finished file (e.g. assembled in a tmpfs scratch folder) into place crash-safely.

    Returns the sha256 of the file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dest)
    digest = hashlib.sha256()
    try:
        with open(src, "rb") as fin, os.fdopen(_create_private(tmp), "wb") as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b""):
                digest.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(dest.parent)
    with contextlib.suppress(OSError):
        src.unlink()
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def clean_temp_files(root: Path, older_than_s: float = 0.0) -> int:
    """Remove leftovers of interrupted writes; returns how many were removed."""
    if not root.is_dir():
        return 0
    removed = 0
    cutoff = time.time() - older_than_s
    for p in root.rglob(f"*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if p.stat().st_mtime <= cutoff:
                p.unlink()
                removed += 1
    return removed


def disk_free(path: Path) -> tuple[int, int]:
    """(free bytes, total bytes) of the filesystem holding ``path``."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return usage.free, usage.total
