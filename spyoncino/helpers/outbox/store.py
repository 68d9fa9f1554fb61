"""The outbox's database: its own file, schema, version and migrations, the stored item and
the SQL (all run on the outbox's I/O thread).

The outbox keeps its rows in a file of its own, ``outbox.sqlite3`` beside the event index
(``outbox_path``), with its own ``PRAGMA user_version`` (``SCHEMA_VERSION``) and migrations
(``MIGRATIONS``): the index's schema owner (``modules/storage/index``) never sees it, and an
index migration, restore or rebuild cannot touch a pending alert. Every channel (Telegram,
webhook, email, S3) shares that one file, each its own ``channel`` rows.

Releases before this one kept the ``outbox`` table inside the index file. Opening the outbox
with ``legacy`` (the index file) adopts that table once: every row is copied into the
outbox's file in one transaction (ids kept when the new file is empty; otherwise new ids in
the old order, the idempotency key deciding what is already there), then the old table is
dropped. A crash between the two steps copies again at the next start and the key keeps it
from doubling, so a box updated in place keeps its pending alerts and never sends one twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from spyoncino.helpers.files import exclusive_lock, private_file

_log = structlog.get_logger("spyoncino").bind(module="outbox")

#: the outbox file's schema version (``PRAGMA user_version``); the index's is its own
SCHEMA_VERSION = 1
#: version -> what turns the version before it into it; a release with a new outbox schema
#: adds one entry (version 1 is ``SCHEMA`` itself)
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}
#: the outbox's file, beside the index
FILE_NAME = "outbox.sqlite3"

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
    #: a newer message replaced it while it was on its way (``supersede``): delivered, it is
    #: recorded sent; not delivered, superseded (never retried: the newer one goes after it)
    superseded: bool = False

    @property
    def primary(self) -> bool:
        return self.kind in PRIMARY_KINDS


def item_key(channel: str, event_id: str, kind: str, recipient: str) -> str:
    return f"{channel}:{event_id}:{kind}:{recipient}"


def outbox_path(index_db: Path) -> Path:
    """The outbox's own database file, beside the event index ``index_db``."""
    return index_db.with_name(FILE_NAME)


# -- SQLite (runs in the executor) ------------------------------------------------------------
#: every column, for the adoption of an older release's table
_ALL = (
    "channel, recipient, key, event_id, camera_id, kind, payload, created_at, status, "
    "attempts, next_at, coalesced, last_error, sent_at, result"
)


def open_db(path: Path, legacy: Path | None = None) -> sqlite3.Connection:
    """Open (create, migrate) the outbox's file; ``legacy``: the index file whose ``outbox``
    table an older release left, adopted once."""
    private_file(path)  # 0640, as the index's
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        # serialise the channels that open the outbox at the same start (one migration)
        with exclusive_lock(path.with_name(f".{path.name}.lock")):
            _migrate(conn, path)
            if legacy is not None and legacy.resolve() != path.resolve():
                _adopt(conn, path, legacy)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    have = int(conn.execute("PRAGMA user_version").fetchone()[0])
    conn.executescript(SCHEMA)  # version 1's tables (IF NOT EXISTS)
    if have > SCHEMA_VERSION:
        # a rolled-back release: its columns have defaults, so this code goes on with them
        _log.warning("outbox_schema_newer", db=str(path), version=have, known=SCHEMA_VERSION)
        return
    for version in range(max(have, 1) + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    if have < SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _adopt(conn: sqlite3.Connection, path: Path, legacy: Path) -> None:
    """Move an older release's ``outbox`` table out of the index file into ``conn``'s."""
    if not legacy.is_file():
        return
    old = sqlite3.connect(legacy, timeout=10.0, isolation_level=None)
    try:
        old.execute("PRAGMA busy_timeout=10000")
        found = old.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='outbox'"
        ).fetchone()
        if found is None:
            return
        rows = old.execute(f"SELECT id, {_ALL} FROM outbox ORDER BY id").fetchall()  # noqa: S608
        fresh = conn.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is None
        marks = ",".join("?" * (_ALL.count(",") + 1))
        conn.execute("BEGIN IMMEDIATE")
        try:
            if fresh:  # the first start of this release: the very same rows, ids and all
                conn.executemany(
                    f"INSERT OR IGNORE INTO outbox(id, {_ALL}) VALUES (?, {marks})",  # noqa: S608
                    rows,
                )
            else:  # an older release ran again meanwhile: its rows after ours, in its order
                conn.executemany(
                    f"INSERT OR IGNORE INTO outbox({_ALL}) VALUES ({marks})",  # noqa: S608
                    [r[1:] for r in rows],
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        old.execute("DROP TABLE outbox")  # its indexes go with it
        _log.info(
            "outbox_moved",
            rows=len(rows),
            pending=sum(1 for r in rows if r[9] == "pending"),
            source=str(legacy),
            target=str(path),
        )
    finally:
        old.close()


def held_files(path: Path, legacy: Path | None = None) -> list[tuple[str, str, str, str, str]]:
    """(relpath, channel, event id, kind, recipient) of the pending rows that still have to
    send a file off the box (``hold_local``); read-only, [] without an outbox. ``legacy``: an
    index file whose table no channel has adopted yet (read too)."""
    out: list[tuple[str, str, str, str, str]] = []
    for db in (path, legacy):
        if db is None or not db.is_file():
            continue
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)
        except sqlite3.Error:
            continue
        try:
            rows = conn.execute(
                "SELECT json_extract(payload, '$.relpath'), channel, event_id, kind, recipient "
                "FROM outbox WHERE status='pending' "
                "AND json_extract(payload, '$.hold_local') = 1"
            ).fetchall()
        except sqlite3.Error:  # no outbox table: nothing is held there
            rows = []
        finally:
            conn.close()
        out.extend((str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows if r[0])
    return out


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


def _insert_superseding(conn: sqlite3.Connection, item: OutboxItem, older: list[int]) -> int | None:
    """Store ``item`` and mark the pending rows ``older`` (which it replaces) superseded, in
    one transaction: a crash leaves either the older rows pending or the newer one stored,
    never the older ones superseded with nothing stored to replace them."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row_id = _insert(conn, item)
        if row_id is not None:
            conn.executemany(
                "UPDATE outbox SET status='superseded' WHERE id=? AND status='pending'",
                [(i,) for i in older],
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return row_id


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
