"""Schema versions of the event database: a migration backs up first, a rollback restores.

The scenario of an update with a schema change: version N+1 migrates the database on start
(after a backup), records events, then is rolled back to N, which restores the backup and
re-indexes from the media folder what N+1 recorded: no event is missing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from spyoncino.helpers.outbox import open_db, outbox_path
from spyoncino.helpers.outbox.store import SCHEMA_VERSION as OUTBOX_VERSION
from spyoncino.modules.storage.index import schema as db_schema
from spyoncino.modules.storage.index.db import connect, upsert_event
from spyoncino.schemas.events import EventNotice


def event(event_id: str, t: float) -> EventNotice:
    return EventNotice(
        event_id=event_id,
        camera_id="cam",
        kind="object",
        phase="ended",
        labels=("person",),
        top_score=0.9,
        started_at=t,
        updated_at=t,
        ended_at=t,
    )


def record(root: Path, conn: sqlite3.Connection, event_id: str, t: float) -> None:
    """An event the way the pipeline leaves it: a snapshot on disk and a row in the index."""
    snap = root / "cam" / "2026-01-02" / f"{event_id}.jpg"
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.write_bytes(b"jpeg")
    upsert_event(conn, event(event_id, t))


def ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM events")}
    finally:
        conn.close()


def user_version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


#: this code's schema version, and the one of a hypothetical next release
NOW = db_schema.current_version()
NEXT = NOW + 1


def add_note_column(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE events ADD COLUMN note TEXT")


def test_a_new_database_records_its_version(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite3"
    connect(db).close()
    assert user_version(db) == db_schema.current_version()
    assert not list(tmp_path.glob("*.bak"))


def test_the_outbox_keeps_its_own_file_and_version(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite3"
    open_db(outbox_path(db), db).close()
    connect(db).close()
    assert user_version(db) == db_schema.current_version()
    assert user_version(outbox_path(db)) == OUTBOX_VERSION
    conn = sqlite3.connect(db)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert "outbox" not in tables


def test_migration_takes_a_consistent_backup_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "events.sqlite3"
    conn = connect(db)
    record(tmp_path, conn, "20260102T100000-before", 1.0)
    conn.close()
    monkeypatch.setitem(db_schema.MIGRATIONS, NEXT, add_note_column)
    conn = connect(db)
    cols = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    conn.close()
    assert "note" in cols and user_version(db) == NEXT
    bak = db_schema.backup_path(db, NOW)
    assert ids(bak) == {"20260102T100000-before"} and user_version(bak) == NOW
    connect(db).close()  # already migrated: nothing more happens
    assert list(tmp_path.glob("*.bak")) == [bak]


def test_a_failed_migration_leaves_the_old_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "events.sqlite3"
    connect(db).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE events ADD COLUMN half TEXT")
        raise RuntimeError("migration bug")

    monkeypatch.setitem(db_schema.MIGRATIONS, NEXT, broken)
    with pytest.raises(RuntimeError, match="migration bug"):
        connect(db)
    assert user_version(db) == NOW
    conn = sqlite3.connect(db)
    assert "half" not in {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    conn.close()


def test_rollback_restores_the_backup_and_reindexes_what_came_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "events.sqlite3"
    conn = connect(db)  # version N
    record(tmp_path, conn, "20260102T100000-before", 1.0)
    conn.close()
    with monkeypatch.context() as m:  # version N+1: migrates, records more
        m.setitem(db_schema.MIGRATIONS, NEXT, add_note_column)
        conn = connect(db)
        record(tmp_path, conn, "20260102T110000-after", 2.0)
        conn.execute("UPDATE events SET note = 'new' WHERE id LIKE '%after'")
        conn.close()
    assert user_version(db) == NEXT
    conn = connect(db)  # back on N: the file is newer than the code
    rows = dict(conn.execute("SELECT id, labels FROM events").fetchall())
    conn.close()
    assert user_version(db) == NOW
    assert set(rows) == {"20260102T100000-before", "20260102T110000-after"}
    assert rows["20260102T100000-before"] == '["person"]'  # the full row, from the backup
    assert (tmp_path / "cam" / "2026-01-02" / "20260102T110000-after.jpg").read_bytes() == b"jpeg"


def test_rollback_without_a_backup_rebuilds_from_the_media(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite3"
    conn = connect(db)
    record(tmp_path, conn, "20260102T100000-one", 1.0)
    conn.execute("PRAGMA user_version = 7")  # written by some future release
    conn.close()
    connect(db).close()
    assert ids(db) == {"20260102T100000-one"}
    assert user_version(db) == NOW
    aside = db.with_name("events.sqlite3.schema7.newer")
    assert user_version(aside) == 7  # kept, in case the newer version comes back


def test_a_version_1_index_gets_severity_and_objects_its_events_kept_as_alerts(
    tmp_path: Path,
) -> None:
    from spyoncino.modules.storage.index.db import SCHEMA

    db = tmp_path / "events.sqlite3"
    old = sqlite3.connect(db)  # a file written by version 1
    old.executescript(SCHEMA)
    old.execute(
        "INSERT INTO events(id, camera_id, kind, started_at, updated_at, phase) "
        "VALUES ('20260102T100000-old', 'cam', 'object', 1, 1, 'ended')"
    )
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    conn = connect(db)
    rows = conn.execute("SELECT id, severity, objects FROM events").fetchall()
    conn.close()
    assert rows == [("20260102T100000-old", "alert", "[]")]
    assert user_version(db) == NOW >= 2
    assert user_version(db_schema.backup_path(db, 1)) == 1  # taken before the migration
