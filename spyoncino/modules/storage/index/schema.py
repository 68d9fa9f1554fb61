"""Schema versions of the event index's database, migrations and their backups.

The database file carries ``PRAGMA user_version``. Opening it (``db.connect``) calls
:func:`ensure_schema`. Only the index's tables follow this version: the outbox keeps its own
file with its own version (``spyoncino.helpers.outbox.store``), and only moves an older
release's ``outbox`` table out of this file, once:

* older than this code: a consistent copy is taken first with SQLite's backup API into
  ``<db>.schema<N>.bak`` (N = the version it had), then the migrations run forward, each in
  one transaction, and ``user_version`` is raised;
* newer than this code (an update was rolled back to a version that does not know the new
  schema): the newest backup taken at this code's version is restored, and the events
  recorded since are re-indexed from the media folder (``reindex``, this package). With no
  such backup the newer file is kept aside as ``<db>.schema<N>.newer`` and the index is
  rebuilt from the media folder alone.

Media files are never touched. A file lock serialises two openers of the same file at start.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import structlog

from spyoncino.helpers.files import exclusive_lock

_log = structlog.get_logger().bind(module="db_schema")

#: version 1: the schema before versions were recorded (user_version 0 means 1)
BASE_VERSION = 1
Migration = Callable[[sqlite3.Connection], None]


def _activities(conn: sqlite3.Connection) -> None:
    """Version 2: an event is an activity; its severity and its objects (JSON) are kept."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    if not cols:  # a file an older release's outbox made first: the tables, then the columns
        from spyoncino.modules.storage.index.db import SCHEMA as INDEX_SCHEMA

        for statement in INDEX_SCHEMA.split(";"):  # executescript would commit the migration
            if statement.strip():
                conn.execute(statement)
    if "severity" not in cols:
        conn.execute("ALTER TABLE events ADD COLUMN severity TEXT NOT NULL DEFAULT 'alert'")
    if "objects" not in cols:
        conn.execute("ALTER TABLE events ADD COLUMN objects TEXT NOT NULL DEFAULT '[]'")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS events_severity_started ON events(severity, started_at)"
    )


#: version -> what turns version-1 into it; a release with a new schema adds one entry. Each
#: is idempotent: a database rebuilt after a rollback runs them on the base tables again.
MIGRATIONS: dict[int, Migration] = {2: _activities}


def current_version() -> int:
    return max([BASE_VERSION, *MIGRATIONS])


def backup_path(db: Path, version: int) -> Path:
    return db.with_name(f"{db.name}.schema{version}.bak")


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0]) or BASE_VERSION


def _set_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute(f"PRAGMA user_version = {int(version)}")


def _backup(conn: sqlite3.Connection, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    out = sqlite3.connect(tmp)
    try:
        conn.backup(out)
    finally:
        out.close()
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def _empty(conn: sqlite3.Connection) -> bool:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")} & {
        "events",
        "outbox",  # an older release's outbox table, not adopted yet: worth a backup too
        "artifacts",
        "notifications",
    }
    return all(
        conn.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone() is None  # noqa: S608
        for t in tables
    )


def ensure_schema(conn: sqlite3.Connection, db: Path, media_root: Path | None = None) -> str:
    """Bring the open database to this code's schema; what was done ("ok", "migrated",
    "restored", "rebuilt") for the caller's log."""
    want = current_version()
    with exclusive_lock(db.with_name(f".{db.name}.schema-lock")):
        have = _version(conn)
        if have == want:
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                _set_version(conn, want)
            return "ok"
        if have < want:
            if not _empty(conn):  # a new file has nothing to keep
                _backup(conn, backup_path(db, have))
            for version in range(have + 1, want + 1):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    MIGRATIONS[version](conn)
                    _set_version(conn, version)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            _log.info("db_migrated", db=str(db), from_version=have, to_version=want)
            return "migrated"
        return _downgrade(conn, db, have, want, media_root or db.parent)


def _downgrade(conn: sqlite3.Connection, db: Path, have: int, want: int, media: Path) -> str:
    from spyoncino.modules.storage.index.reindex import _reindex

    bak = backup_path(db, want)
    if bak.is_file():
        src = sqlite3.connect(bak)
        try:
            src.backup(conn)
        finally:
            src.close()
        what = "restored"
    else:
        aside = db.with_name(f"{db.name}.schema{have}.newer")
        _backup(conn, aside)
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for name in tables:
            conn.execute(f'DROP TABLE "{name}"')
        what = "rebuilt"
    _set_version(conn, want)
    # after a rebuild no table is left: create the index's again (IF NOT EXISTS, so a
    # restored file is left as it is); the outbox is in a file of its own
    from spyoncino.modules.storage.index.db import SCHEMA as INDEX_SCHEMA

    conn.executescript(INDEX_SCHEMA)
    for version in range(BASE_VERSION + 1, want + 1):
        MIGRATIONS[version](conn)  # the base tables, brought to this code's schema
    added = _reindex(conn, media)
    _log.warning(
        "db_schema_rolled_back",
        db=str(db),
        from_version=have,
        to_version=want,
        how=what,
        reindexed=added,
    )
    return what
