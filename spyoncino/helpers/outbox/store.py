"""The outbox's table: its schema, the stored item and the SQL (all run on the outbox's I/O
thread)."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spyoncino.helpers.files import private_file

#: Kinds that are alerts in their own right (others are follow-ups of an alert).
PRIMARY_KINDS = frozenset({"snapshot", "text", "health_alert", "health_recovered"})
#: camera-health notices: alerts, but never folded into a summary of the camera's events
HEALTH_KINDS = frozenset({"health_alert", "health_recovered"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL,
    camera_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    coalesced INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at REAL,
    result TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(channel, status, recipient, id);
CREATE INDEX IF NOT EXISTS outbox_event ON outbox(channel, recipient, event_id);
"""


@dataclass
class OutboxItem:
    """One message for one recipient, as stored."""

    id: int
    channel: str
    recipient: str
    key: str
    event_id: str
    camera_id: str
    kind: str
    payload: dict[str, Any]
    created_at: float
    attempts: int = 0
    next_at: float = 0.0
    coalesced: int = 0
    #: results (e.g. message ids) of items already delivered for the same event and recipient
    related: dict[str, str] = field(default_factory=dict)
    #: failed while an item behind it went through: the item, not the server, is the trouble
    suspect: bool = False

    @property
    def primary(self) -> bool:
        return self.kind in PRIMARY_KINDS


def item_key(channel: str, event_id: str, kind: str, recipient: str) -> str:
    return f"{channel}:{event_id}:{kind}:{recipient}"


# -- SQLite (runs in the executor) ------------------------------------------------------------
def open_db(path: Path) -> sqlite3.Connection:
    private_file(path)  # 0640, as the index makes it: the outbox may open the file first
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.executescript(SCHEMA)
    # the same file as the index, whose schema owner (storage/index) versions and migrates it:
    # the index starts before any output, so the file is migrated when the outbox opens it
    return conn


_COLS = (
    "id, channel, recipient, key, event_id, camera_id, kind, payload, created_at, attempts, "
    "next_at, coalesced"
)


def _row_item(row: tuple[Any, ...]) -> OutboxItem:
    return OutboxItem(
        id=row[0],
        channel=row[1],
        recipient=row[2],
        key=row[3],
        event_id=row[4],
        camera_id=row[5],
        kind=row[6],
        payload=json.loads(row[7]),
        created_at=row[8],
        attempts=row[9],
        next_at=row[10],
        coalesced=row[11],
    )


def _insert(conn: sqlite3.Connection, item: OutboxItem) -> int | None:
    cur = conn.execute(
        """INSERT OR IGNORE INTO outbox(channel, recipient, key, event_id, camera_id, kind,
               payload, created_at, status, attempts, next_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?)""",
        (
            item.channel,
            item.recipient,
            item.key,
            item.event_id,
            item.camera_id,
            item.kind,
            json.dumps(item.payload),
            item.created_at,
            item.next_at,
        ),
    )
    return cur.lastrowid if cur.rowcount == 1 else None


def _insert_late(
    conn: sqlite3.Connection, item: OutboxItem, status: str, error: str | None, result: str | None
) -> int | None:
    """Store an item that could not be stored when it was enqueued, with its outcome so far."""
    cur = conn.execute(
        """INSERT OR IGNORE INTO outbox(channel, recipient, key, event_id, camera_id, kind,
               payload, created_at, status, attempts, next_at, coalesced, last_error, result,
               sent_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN ?='sent' THEN ? END)""",
        (
            item.channel,
            item.recipient,
            item.key,
            item.event_id,
            item.camera_id,
            item.kind,
            json.dumps(item.payload),
            item.created_at,
            status,
            item.attempts,
            item.next_at,
            item.coalesced,
            error,
            result,
            status,
            time.time(),
        ),
    )
    return cur.lastrowid if cur.rowcount == 1 else None


def _load_pending(conn: sqlite3.Connection, channel: str) -> list[OutboxItem]:
    rows = conn.execute(
        f"SELECT {_COLS} FROM outbox WHERE channel=? AND status='pending' ORDER BY id",  # noqa: S608
        (channel,),
    ).fetchall()
    return [_row_item(r) for r in rows]


def _related(
    conn: sqlite3.Connection, channel: str, recipient: str, event_id: str
) -> dict[str, str]:
    rows = conn.execute(
        "SELECT kind, result FROM outbox WHERE channel=? AND recipient=? AND event_id=? "
        "AND status='sent' AND result IS NOT NULL",
        (channel, recipient, event_id),
    ).fetchall()
    return {str(k): str(r) for k, r in rows}


def _mark(
    conn: sqlite3.Connection,
    item_id: int,
    status: str,
    attempts: int,
    next_at: float,
    error: str | None,
    result: str | None,
) -> None:
    conn.execute(
        """UPDATE outbox SET status=?, attempts=?, next_at=?, last_error=?, result=?,
               sent_at=CASE WHEN ?='sent' THEN ? ELSE sent_at END WHERE id=?""",
        (status, attempts, next_at, error, result, status, time.time(), item_id),
    )


def _primary_folded(conn: sqlite3.Connection, channel: str, recipient: str, event_id: str) -> bool:
    """Whether the alert of ``event_id`` was folded into another (so its follow-ups go too)."""
    rows = conn.execute(
        "SELECT status FROM outbox WHERE channel=? AND recipient=? AND event_id=? "
        "AND kind IN ('snapshot', 'text')",
        (channel, recipient, event_id),
    ).fetchall()
    statuses = {str(r[0]) for r in rows}
    return "coalesced" in statuses and not statuses & {"sent", "pending"}


def _fold(conn: sqlite3.Connection, keep: int, count: int, dropped: list[int]) -> None:
    with conn:
        conn.execute("BEGIN")
        conn.execute("UPDATE outbox SET coalesced=? WHERE id=?", (count, keep))
        conn.executemany("UPDATE outbox SET status='coalesced' WHERE id=?", [(i,) for i in dropped])


def _prune(conn: sqlite3.Connection, channel: str, before: float) -> int:
    cur = conn.execute(
        "DELETE FROM outbox WHERE channel=? AND status!='pending' AND created_at<?",
        (channel, before),
    )
    return cur.rowcount


def counts(conn: sqlite3.Connection, channel: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, COUNT(*) FROM outbox WHERE channel=? GROUP BY status", (channel,)
    ).fetchall()
    return {str(s): int(n) for s, n in rows}
