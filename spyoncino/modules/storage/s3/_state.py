"""Multipart progress, kept so that a restart resumes a large clip instead of starting over.

One row per object being uploaded in parts: the upload id the provider gave and the parts it
confirmed (number -> ETag). The table lives in the outbox's database, next to the outbox
rows it belongs to; this module is its only user (older releases kept both in the event
index's file: ``legacy``, whose rows are moved over once). After a restart the parts are checked
against the provider's own list (``ListParts``) before they are trusted.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from spyoncino.helpers.outbox import open_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS s3_multipart (
    key TEXT PRIMARY KEY,
    upload_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    part_size INTEGER NOT NULL,
    parts TEXT NOT NULL DEFAULT '{}',
    started_at REAL NOT NULL
);
"""


@dataclass
class Multipart:
    key: str
    upload_id: str
    sha256: str
    size: int
    part_size: int
    started_at: float
    #: part number -> ETag (quoted, as the provider returns it)
    parts: dict[int, str] = field(default_factory=dict)


class UploadState:
    """Blocking SQLite access; call it through the outbox's I/O thread."""

    def __init__(self, path: Path, legacy: Path | None = None) -> None:
        self.conn: sqlite3.Connection = open_db(path, legacy)  # the outbox's file and settings
        self.conn.executescript(SCHEMA)
        if legacy is not None and legacy.is_file():
            self._adopt(legacy)

    def _adopt(self, legacy: Path) -> None:
        """Uploads in progress an older release recorded in the index file resume here."""
        old = sqlite3.connect(legacy, timeout=10.0, isolation_level=None)
        try:
            if old.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='s3_multipart'"
            ).fetchone():
                cols = "key, upload_id, sha256, size, part_size, parts, started_at"
                rows = old.execute(f"SELECT {cols} FROM s3_multipart").fetchall()  # noqa: S608
                self.conn.executemany(
                    f"INSERT OR IGNORE INTO s3_multipart({cols}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    rows,
                )
                old.execute("DROP TABLE s3_multipart")
        finally:
            old.close()

    def get(self, key: str) -> Multipart | None:
        row = self.conn.execute(
            "SELECT upload_id, sha256, size, part_size, parts, started_at FROM s3_multipart "
            "WHERE key=?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        parts = {int(n): str(e) for n, e in json.loads(row[4]).items()}
        return Multipart(key, row[0], row[1], int(row[2]), int(row[3]), float(row[5]), parts)

    def put(self, m: Multipart) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO s3_multipart(key, upload_id, sha256, size, part_size, parts, "
            "started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                m.key,
                m.upload_id,
                m.sha256,
                m.size,
                m.part_size,
                json.dumps({str(n): e for n, e in m.parts.items()}),
                m.started_at,
            ),
        )

    def drop(self, key: str) -> None:
        self.conn.execute("DELETE FROM s3_multipart WHERE key=?", (key,))

    def in_progress(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM s3_multipart").fetchone()[0])

    def pending_rows(self, channel: str) -> list[tuple[str, str, float, int]]:
        """(event id, kind, created_at, size) of the copies still pending, for the backlog."""
        rows = self.conn.execute(
            "SELECT event_id, kind, created_at, json_extract(payload, '$.size') FROM outbox "
            "WHERE channel=? AND status='pending'",
            (channel,),
        ).fetchall()
        return [(str(e), str(k), float(t), int(s or 0)) for e, k, t, s in rows]

    def close(self) -> None:
        self.conn.close()
