"""The event index database: schema and the helpers every writer and reader shares.

SQLite in WAL mode with ``synchronous=NORMAL``: a power cut loses at most the last
transactions, never the file's integrity. The media folder is the source of truth for files;
the index makes them searchable and ``reindex`` (this package) rebuilds it from the folder.
The index module is the only writer of these tables.

Schema (version 2, also read by the status page; ``schema`` (this package) migrates older files):

* ``events(id PK, camera_id, kind, labels JSON, top_score, zones JSON, started_at, updated_at,
  ended_at, phase, severity, objects JSON)``: one row per activity; ``severity`` is ``alert``
  or ``detection``, ``objects`` its objects (``[{track_id, label, score, zones}]``). The two
  columns are added by migration 2, also to a new file (the ``CREATE TABLE`` stays version 1).
* ``artifacts(event_id, kind, relpath, size_bytes, sha256, mime, created_at, duration_s, width,
  height, PRIMARY KEY(event_id, kind))``
* ``notifications(id PK, event_id, channel, kind, status, recipient, attempt, error, at)``
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from spyoncino.helpers.files import private_file
from spyoncino.modules.storage.index.schema import ensure_schema
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    camera_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]',
    top_score REAL NOT NULL DEFAULT 0,
    zones TEXT NOT NULL DEFAULT '[]',
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ended_at REAL,
    phase TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_camera_started ON events(camera_id, started_at);
CREATE INDEX IF NOT EXISTS events_started ON events(started_at);
CREATE TABLE IF NOT EXISTS artifacts (
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    relpath TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    mime TEXT NOT NULL,
    created_at REAL NOT NULL,
    duration_s REAL,
    width INTEGER,
    height INTEGER,
    PRIMARY KEY (event_id, kind)
);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    recipient TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    error TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_event ON notifications(event_id);
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open the index with the settings every writer uses (WAL, synchronous=NORMAL)."""
    private_file(path)  # 0640: SQLite gives the -wal and -shm files the same mode
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.executescript(SCHEMA)
    conn.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
        (str(SCHEMA_VERSION),),
    )
    ensure_schema(conn, path)  # PRAGMA user_version, migrations and their backups
    return conn


def objects_json(e: EventNotice) -> str:
    return json.dumps(
        [
            {
                "track_id": o.track_id,
                "label": o.label,
                "score": round(o.score, 3),
                "zones": list(o.zones),
            }
            for o in e.objects
        ]
    )


def upsert_event(conn: sqlite3.Connection, e: EventNotice) -> None:
    conn.execute(
        """INSERT INTO events(id, camera_id, kind, labels, top_score, zones, started_at,
                              updated_at, ended_at, phase, severity, objects)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT(id) DO UPDATE SET labels=excluded.labels, top_score=excluded.top_score,
               zones=excluded.zones, updated_at=excluded.updated_at, ended_at=excluded.ended_at,
               phase=excluded.phase, severity=excluded.severity, objects=excluded.objects""",
        (
            e.event_id,
            e.camera_id,
            e.kind,
            json.dumps(list(e.labels)),
            e.top_score,
            json.dumps(list(e.zones)),
            e.started_at,
            e.updated_at,
            e.ended_at,
            e.phase,
            e.severity,
            objects_json(e),
        ),
    )


def upsert_artifact(conn: sqlite3.Connection, a: MediaArtifact) -> None:
    conn.execute(
        """INSERT OR REPLACE INTO artifacts(event_id, kind, relpath, size_bytes, sha256, mime,
                                            created_at, duration_s, width, height)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            a.event_id,
            a.kind,
            a.relpath,
            a.size_bytes,
            a.sha256,
            a.mime,
            a.created_at,
            a.duration_s,
            a.width,
            a.height,
        ),
    )


def insert_notification(conn: sqlite3.Connection, n: AlertNotification) -> None:
    conn.execute(
        """INSERT INTO notifications(event_id, channel, kind, status, recipient, attempt, error, at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
        (n.event_id, n.channel, n.kind, n.status, n.recipient, n.attempt, n.error, n.at),
    )


def delete_artifact(conn: sqlite3.Connection, relpath: str) -> None:
    """Forget a file retention removed; an event with no artifact left is forgotten too."""
    row = conn.execute("SELECT event_id FROM artifacts WHERE relpath = ?", (relpath,)).fetchone()
    conn.execute("DELETE FROM artifacts WHERE relpath = ?", (relpath,))
    if row is not None:
        left = conn.execute(
            "SELECT 1 FROM artifacts WHERE event_id = ? LIMIT 1", (row[0],)
        ).fetchone()
        if left is None:
            conn.execute("DELETE FROM events WHERE id = ? AND ended_at IS NOT NULL", (row[0],))
