"""The outbox's own database file: a box updated in place keeps (and sends) its pending alerts.

Releases before the split kept the ``outbox`` table (and S3's ``s3_multipart``) inside the
event index's file. These tests build such a file with the old layout frozen below (the
DDL that release shipped, not today's), then open the outbox the way this release does.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from spyoncino.core.bus import Bus
from spyoncino.core.contracts import BoundedExecutor
from spyoncino.helpers.outbox import Outbox, OutboxItem, OutboxSettings, held_files, outbox_path
from spyoncino.helpers.outbox.store import SCHEMA_VERSION, open_db
from spyoncino.modules.storage.index.db import connect as index_connect
from spyoncino.modules.storage.s3._state import UploadState
from tests.support.wait import Log

#: the event database as the release before the split left it: the index's tables (version
#: 2) and the outbox's table in one file
OLD_LAYOUT = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    id TEXT PRIMARY KEY, camera_id TEXT NOT NULL, kind TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]', top_score REAL NOT NULL DEFAULT 0,
    zones TEXT NOT NULL DEFAULT '[]', started_at REAL NOT NULL, updated_at REAL NOT NULL,
    ended_at REAL, phase TEXT NOT NULL, severity TEXT NOT NULL DEFAULT 'alert',
    objects TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE artifacts (
    event_id TEXT NOT NULL, kind TEXT NOT NULL, relpath TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, mime TEXT NOT NULL,
    created_at REAL NOT NULL, duration_s REAL, width INTEGER, height INTEGER,
    PRIMARY KEY (event_id, kind)
);
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, channel TEXT NOT NULL,
    kind TEXT NOT NULL, status TEXT NOT NULL, recipient TEXT NOT NULL, attempt INTEGER NOT NULL,
    error TEXT, at REAL NOT NULL
);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, recipient TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE, event_id TEXT NOT NULL, camera_id TEXT NOT NULL,
    kind TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,
    coalesced INTEGER NOT NULL DEFAULT 0, last_error TEXT, sent_at REAL, result TEXT
);
CREATE INDEX outbox_pending ON outbox(channel, status, recipient, id);
CREATE INDEX outbox_event ON outbox(channel, recipient, event_id);
CREATE TABLE s3_multipart (
    key TEXT PRIMARY KEY, upload_id TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    part_size INTEGER NOT NULL, parts TEXT NOT NULL DEFAULT '{}', started_at REAL NOT NULL
);
PRAGMA user_version = 2;
"""

#: (channel, recipient, event, kind, status, payload) as the old release stored them
ROWS = [
    ("fake", "1", "ev-1", "snapshot", "sent", {}),
    ("fake", "1", "ev-2", "snapshot", "pending", {}),
    ("fake", "1", "ev-2", "gif", "pending", {}),
    ("fake", "2", "ev-3", "snapshot", "pending", {}),
    ("fake", "1", "ev-4", "snapshot", "failed", {}),
    (
        "s3",
        "bucket",
        "ev-2",
        "copy:clip",
        "pending",
        {"relpath": "c/d/ev-2.mp4", "hold_local": True},
    ),
]


def old_box(db: Path) -> None:
    """An index file with the old layout: one event, the rows above, one multipart upload."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(OLD_LAYOUT)
    now = time.time()
    conn.execute(
        "INSERT INTO events(id, camera_id, kind, started_at, updated_at, phase) "
        "VALUES ('ev-2', 'c', 'object', ?, ?, 'ended')",
        (now, now),
    )
    for ch, to, ev, kind, status, payload in ROWS:
        conn.execute(
            "INSERT INTO outbox(channel, recipient, key, event_id, camera_id, kind, payload, "
            "created_at, status, next_at, sent_at, result) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                ch,
                to,
                f"{ch}:{ev}:{kind}:{to}",
                ev,
                "c",
                kind,
                json.dumps(payload),
                now,
                status,
                now,
                now if status == "sent" else None,
                "msg-9" if status == "sent" else None,
            ),
        )
    conn.execute(
        "INSERT INTO s3_multipart VALUES ('k', 'up-1', ?, 10, 5, '{\"1\": \"e1\"}', ?)",
        ("0" * 64, now),
    )
    conn.close()


def tables(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def outbox_rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT id, channel, recipient, event_id, kind, status FROM outbox ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(workers=2)
    boxes: list[Outbox] = []
    delivered: Log[tuple[str, str, str]] = Log()

    async def send(item: OutboxItem) -> str | None:
        delivered.append((item.recipient, item.event_id, item.kind))
        return "ok"

    def make(index_db: Path) -> Outbox:
        box = Outbox(
            channel="fake",
            db_path=outbox_path(index_db),
            legacy_db=index_db,
            bus=bus,
            executor=executor,
            sender=send,
            settings=OutboxSettings(min_interval_s=0.0),
        )
        boxes.append(box)
        return box

    yield {"make": make, "delivered": delivered}
    for b in boxes:
        await b.close()
    await bus.close()
    executor.shutdown()


async def test_a_box_updated_in_place_sends_its_pending_alerts_once(
    env: dict[str, Any], tmp_path: Path
) -> None:
    index = tmp_path / "events.sqlite3"
    old_box(index)
    before = outbox_rows(index)
    # retention may run before any channel started: the old table still holds its files
    assert [h[0] for h in held_files(outbox_path(index), index)] == ["c/d/ev-2.mp4"]
    index_connect(index).close()  # the index starts first, as in service: its own migration
    box = env["make"](index)
    await box.start()
    # the pending alerts of the old file are sent, in their order, the sent and failed are not
    await env["delivered"].wait_for(3)
    assert sorted(env["delivered"]) == [
        ("1", "ev-2", "gif"),
        ("1", "ev-2", "snapshot"),
        ("2", "ev-3", "snapshot"),
    ]
    assert [d for d in env["delivered"] if d[0] == "1"] == [
        ("1", "ev-2", "snapshot"),
        ("1", "ev-2", "gif"),
    ]
    # every row moved, ids and all; the index file no longer has the outbox's table
    ob = outbox_path(index)
    moved = outbox_rows(ob)
    assert [r[:5] for r in moved] == [r[:5] for r in before]
    assert "outbox" not in tables(index) and {"events", "artifacts"} <= tables(index)
    conn = sqlite3.connect(ob)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    # S3's copy is still pending in the new file, and its file still held
    assert [h[0] for h in held_files(ob, index)] == ["c/d/ev-2.mp4"]
    await box.close()
    # a restart sends nothing again
    again = env["make"](index)
    await again.start()
    assert again.pending() == 0
    assert len(env["delivered"]) == 3


async def test_a_crash_between_copy_and_drop_copies_nothing_twice(tmp_path: Path) -> None:
    index = tmp_path / "events.sqlite3"
    old_box(index)
    ob = outbox_path(index)
    conn = open_db(ob, index)  # copied and dropped
    conn.close()
    first = outbox_rows(ob)
    old_box(tmp_path / "again.sqlite3")  # the old table is back (the drop never happened)
    (tmp_path / "again.sqlite3").replace(index)
    open_db(ob, index).close()
    assert outbox_rows(ob) == first
    assert "outbox" not in tables(index)


async def test_rows_an_older_release_added_after_a_rollback_are_taken_too(tmp_path: Path) -> None:
    """Rolled back, the old release made a new outbox table in the index file; updating again
    adds its rows after ours (the key keeps what both have once)."""
    index = tmp_path / "events.sqlite3"
    old_box(index)
    ob = outbox_path(index)
    open_db(ob, index).close()
    conn = sqlite3.connect(index, isolation_level=None)
    conn.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, "
        "recipient TEXT NOT NULL, key TEXT NOT NULL UNIQUE, event_id TEXT NOT NULL, "
        "camera_id TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL, "
        "created_at REAL NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
        "next_at REAL NOT NULL, coalesced INTEGER NOT NULL DEFAULT 0, last_error TEXT, "
        "sent_at REAL, result TEXT);"
    )
    for ev in ("ev-2", "ev-9"):  # ev-2's snapshot is known already, ev-9 is new
        conn.execute(
            "INSERT INTO outbox(channel, recipient, key, event_id, camera_id, kind, payload, "
            "created_at, status, next_at) VALUES ('fake', '1', ?, ?, 'c', 'snapshot', '{}', 0, "
            "'pending', 0)",
            (f"fake:{ev}:snapshot:1", ev),
        )
    conn.close()
    open_db(ob, index).close()
    rows = outbox_rows(ob)
    assert [r[3] for r in rows].count("ev-9") == 1
    assert len(rows) == len(ROWS) + 1
    assert rows[-1][3] == "ev-9"


def test_an_upload_in_progress_resumes_from_the_outbox_file(tmp_path: Path) -> None:
    index = tmp_path / "events.sqlite3"
    old_box(index)
    state = UploadState(outbox_path(index), index)
    try:
        m = state.get("k")
        assert m is not None and m.upload_id == "up-1" and m.parts == {1: "e1"}
        assert state.pending_rows("s3") == [
            ("ev-2", "copy:clip", state.pending_rows("s3")[0][2], 0)
        ]
    finally:
        state.close()
    assert "s3_multipart" not in tables(index)
