"""Rebuild the event index from the media folder (``spyoncino storage reindex``).

The folder is the source of truth: ``<root>/<camera>/<YYYY-MM-DD>/<event-id>[.<variant>].<ext>``.
Rows for files that exist but are not indexed (the index lost its last transactions in a power
cut, or was deleted) are added; rows whose file is gone are removed. What counts as a media
file is the folder's layout (``spyoncino.helpers.media_layout``). Existing rows are kept as
they are, since they carry more than a file name can tell (labels, zones, scores).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from pathlib import Path

from spyoncino.helpers.files import sha256_file
from spyoncino.helpers.media_layout import MediaFile, scan
from spyoncino.modules.storage.index.db import connect

_STAMP = re.compile(r"^(\d{8}T\d{6})")


def _started_at(event_id: str, fallback: float) -> float:
    m = _STAMP.match(event_id)
    if m:
        with contextlib.suppress(ValueError, OverflowError):
            return time.mktime(time.strptime(m.group(1), "%Y%m%dT%H%M%S"))
    return fallback


def _probe(m: MediaFile) -> tuple[float | None, int | None, int | None]:
    """(duration, width, height); None where the file cannot tell cheaply."""
    if m.kind == "clip":
        try:
            import av

            with av.open(str(m.path)) as c:
                s = c.streams.video[0]
                dur = float(c.duration) / 1_000_000 if c.duration else None
                return dur, s.codec_context.width, s.codec_context.height
        except Exception:
            return None, None, None
    return None, None, None


def reindex(root: Path, db_path: Path) -> int:
    """Bring the index at ``db_path`` in line with the files under ``root``.

    Returns how many rows were added (events plus artifacts).
    """
    conn = connect(db_path)
    try:
        return _reindex(conn, root)
    finally:
        conn.close()


def reindex_into(conn: sqlite3.Connection, root: Path) -> int:
    """``reindex`` on an open connection (the index module runs it at every start)."""
    return _reindex(conn, root)


def _reindex(conn: sqlite3.Connection, root: Path) -> int:
    files = scan(root)
    present = {m.relpath for m in files}
    known_arts = {
        (row[0], row[1]): row[2]
        for row in conn.execute("SELECT event_id, kind, relpath FROM artifacts")
    }
    known_events = {row[0] for row in conn.execute("SELECT id FROM events")}
    added = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for (event_id, kind), relpath in known_arts.items():
            if relpath not in present:
                conn.execute(
                    "DELETE FROM artifacts WHERE event_id = ? AND kind = ?", (event_id, kind)
                )
        for m in files:
            st = m.path.stat()
            if m.event_id not in known_events:
                started = _started_at(m.event_id, st.st_mtime)
                conn.execute(
                    """INSERT OR IGNORE INTO events(id, camera_id, kind, labels, top_score, zones,
                           started_at, updated_at, ended_at, phase)
                       VALUES (?, ?, ?, '[]', 0, '[]', ?, ?, ?, 'ended')""",
                    (
                        m.event_id,
                        m.camera_id,
                        "manual" if m.event_id.startswith("manual-") else "unknown",
                        started,
                        st.st_mtime,
                        st.st_mtime,
                    ),
                )
                known_events.add(m.event_id)
                added += 1
            if known_arts.get((m.event_id, m.kind)) == m.relpath:
                continue
            duration, width, height = _probe(m)
            conn.execute(
                """INSERT OR REPLACE INTO artifacts(event_id, kind, relpath, size_bytes, sha256,
                       mime, created_at, duration_s, width, height)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    m.event_id,
                    m.kind,
                    m.relpath,
                    st.st_size,
                    sha256_file(m.path),
                    m.mime,
                    st.st_mtime,
                    duration,
                    width,
                    height,
                ),
            )
            added += 1
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT has rolled back already
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return added


__all__ = ["reindex", "reindex_into"]
