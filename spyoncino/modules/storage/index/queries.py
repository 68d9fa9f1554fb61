"""The index's read side: what the requests of ``spyoncino.schemas.index`` ask, in SQL.

Only the index module runs these (on its own read-only connection, in the executor); every
other module asks it over the bus. Values are always bound parameters; only fixed fragments
are joined into the statements.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from spyoncino.schemas.index import (
    DayCountsQuery,
    EventRecord,
    EventsPage,
    EventsQuery,
    LabelsQuery,
)


def connect_ro(db: Path) -> sqlite3.Connection:
    """A read-only connection (never creates nor changes the file); the caller serialises use."""
    conn = sqlite3.connect(
        f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0, check_same_thread=False
    )
    conn.execute("PRAGMA query_only=1")
    return conn


def _texts(col: str) -> str:
    """A JSON array column as an array of its strings (a malformed value: empty)."""
    return (
        f"(SELECT json_group_array(value) FROM json_each(CASE WHEN json_valid({col}) "  # noqa: S608
        f"THEN {col} ELSE '[]' END) WHERE type = 'text')"
    )


def _dicts(col: str) -> str:
    """A JSON array column as an array of its objects (a malformed value: empty)."""
    return (
        f"(SELECT json_group_array(json(value)) FROM json_each(CASE WHEN json_valid({col}) "  # noqa: S608
        f"THEN {col} ELSE '[]' END) WHERE type = 'object')"
    )


_ARTIFACTS = (
    "(SELECT json_group_array(json_object('kind', a.kind, 'relpath', a.relpath, 'mime', a.mime, "
    "'size_bytes', a.size_bytes, 'duration_s', a.duration_s)) "
    "FROM artifacts a WHERE a.event_id = events.id)"
)


def _record_json(with_artifacts: bool) -> str:
    """One ``EventRecord`` as JSON, built by SQLite: the rows go to pydantic's JSON validation
    in one piece (a third of the cost of building the records row by row in Python)."""
    arts = f", 'artifacts', json({_ARTIFACTS})" if with_artifacts else ""
    return (
        "json_object('id', id, 'camera_id', camera_id, 'kind', kind, "
        f"'labels', json({_texts('events.labels')}), 'top_score', top_score, "
        f"'zones', json({_texts('events.zones')}), 'started_at', started_at, "
        "'updated_at', updated_at, 'ended_at', ended_at, 'phase', phase, "
        f"'severity', severity, 'objects', json({_dicts('events.objects')}){arts})"
    )


def _page(rows: list[tuple[str]]) -> EventsPage:
    return EventsPage.model_validate_json('{"events":[' + ",".join(r[0] for r in rows) + "]}")


def _where(
    camera: str | None,
    label: str | None,
    severity: str | None,
    zone: str | None,
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if camera:
        where.append("camera_id = ?")
        args.append(camera)
    if label:
        where.append("EXISTS (SELECT 1 FROM json_each(events.labels) WHERE value = ?)")
        args.append(label)
    if severity:
        where.append("severity = ?")
        args.append(severity)
    if zone:
        where.append("EXISTS (SELECT 1 FROM json_each(events.zones) WHERE value = ?)")
        args.append(zone)
    return where, args


def list_events(conn: sqlite3.Connection, q: EventsQuery) -> EventsPage:
    """Newest first, at most ``q.limit`` after skipping ``q.offset``."""
    where, args = _where(q.camera, q.label, q.severity, q.zone)
    if q.after is not None:
        where.append("started_at >= ?")
        args.append(q.after)
    if q.before is not None:
        where.append("started_at < ?")
        args.append(q.before)
    clause = " WHERE " + " AND ".join(where) if where else ""
    sql = (
        f"SELECT {_record_json(q.with_artifacts)} FROM events{clause} "  # noqa: S608
        "ORDER BY started_at DESC LIMIT ? OFFSET ?"
    )
    return _page(conn.execute(sql, [*args, q.limit, q.offset]).fetchall())


def get_event(conn: sqlite3.Connection, event_id: str) -> EventRecord | None:
    sql = f"SELECT {_record_json(True)} FROM events WHERE id = ?"  # noqa: S608
    page = _page(conn.execute(sql, (event_id,)).fetchall())
    return page.events[0] if page.events else None


def labels(conn: sqlite3.Connection, q: LabelsQuery) -> tuple[str, ...]:
    cur = conn.execute(
        "SELECT DISTINCT value FROM events, json_each(events.labels) ORDER BY value LIMIT ?",
        (q.limit,),
    )
    return tuple(str(r[0]) for r in cur)


def day_counts(conn: sqlite3.Connection, q: DayCountsQuery) -> tuple[int, ...]:
    where, args = _where(q.camera, None, q.severity, None)
    where.append("started_at >= ? AND started_at < ?")
    sql = f"SELECT COUNT(*) FROM events WHERE {' AND '.join(where)}"  # noqa: S608
    return tuple(int(conn.execute(sql, [*args, lo, hi]).fetchone()[0]) for lo, hi in q.days)
