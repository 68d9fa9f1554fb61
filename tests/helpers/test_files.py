"""What the box writes is private: media, the index and secrets are 0640 or tighter."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from spyoncino.helpers.files import atomic_move, atomic_write_bytes
from spyoncino.helpers.outbox import open_db, outbox_path
from spyoncino.modules.storage.index.db import connect


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual 022: without care, files would come out 0644 (world-readable)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_media_files_are_not_world_readable(tmp_path: Path, open_umask: None) -> None:
    snap = tmp_path / "cam" / "day" / "e1.jpg"
    atomic_write_bytes(snap, b"\xff\xd8")
    src = tmp_path / "scratch.mp4"
    src.write_bytes(b"mp4")
    clip = tmp_path / "cam" / "day" / "e1.mp4"
    atomic_move(src, clip)
    assert mode(snap) & 0o027 == 0, oct(mode(snap))
    assert mode(clip) & 0o027 == 0, oct(mode(clip))


def test_the_index_and_its_wal_are_not_world_readable(tmp_path: Path, open_umask: None) -> None:
    db = tmp_path / "events.sqlite3"
    conn = connect(db)
    conn.execute("INSERT INTO meta(key, value) VALUES ('x', 'y')")
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        assert p.exists(), p
        assert mode(p) & 0o027 == 0, (p.name, oct(mode(p)))
    conn.close()


def test_an_index_created_loose_is_tightened(tmp_path: Path, open_umask: None) -> None:
    db = tmp_path / "events.sqlite3"
    connect(db).close()
    os.chmod(db, 0o644)  # as an older version left it
    connect(db).close()
    assert mode(db) & 0o027 == 0
    outbox = outbox_path(db)  # the outbox's own file, tightened the same way
    open_db(outbox).close()
    os.chmod(outbox, 0o644)
    open_db(outbox).close()
    assert mode(outbox) & 0o027 == 0
