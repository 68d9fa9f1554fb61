"""The index's read side: what the requests of ``spyoncino.schemas.index`` ask, in SQL.

Only the index module runs these (on its own read-only connection, in the executor); every
other module asks it over the bus. Values are always bound parameters; only fixed fragments
are joined into the statements.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from spyoncino.schemas.index import (
    ArtifactRef,
    DayCountsQuery,
    EventRecord,
    EventsQuery,
    LabelsQuery,
)

_COLUMNS = (
    "id, camera_id, kind, labels, top_score, zones, started_at, updated_at, ended_at, phase, "
    "severity, objects"
)


def connect_ro(db: Path) -> sqlite3.Connection:
    """A read-only connection (never creates nor changes the file); the caller serialises use."""
    conn = sqlite3.connect(
        f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0, check_same_thread=False
    )
    conn.execute("PRAGMA query_only=1")
    return conn


def _loads(raw: str | None) -> list[Any]:
    try:
        out = json.loads(raw or "[]")
    except ValueError:
        return []
    return out if isinstance(out, list) else []


def _record(r: tuple[Any, ...], artifacts: tuple[ArtifactRef, ...] = ()) -> EventRecord:
    # validated construction: with pydantic 2 it is cheaper than model_construct (~1 us/row)
    return EventRecord(
        id=r[0],
        camera_id=r[1],
        kind=r[2],
        labels=tuple(str(x) for x in _loads(r[3])),
        top_score=float(r[4] or 0.0),
        zones=tuple(str(x) for x in _loads(r[5])),
        started_at=float(r[6]),
        updated_at=float(r[7]),
        ended_at=None if r[8] is None else float(r[8]),
        phase=r[9],
        severity=str(r[10] or "alert"),
        objects=tuple(o for o in _loads(r[11]) if isinstance(o, dict)),
        artifacts=artifacts,
    )


def _artifacts(conn: sqlite3.Connection, ids: list[str]) -> dict[str, list[ArtifactRef]]:
    out: dict[str, list[ArtifactRef]] = {}
    for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        cur = conn.execute(
            "SELECT event_id, kind, relpath, mime, size_bytes, duration_s FROM artifacts "  # noqa: S608
            f"WHERE event_id IN ({marks})",
            chunk,
        )
        for a in cur:
            out.setdefault(a[0], []).append(
                ArtifactRef(
                    kind=a[1], relpath=a[2], mime=a[3], size_bytes=int(a[4]), duration_s=a[5]
                )
            )
    return out


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


def list_events(conn: sqlite3.Connection, q: EventsQuery) -> tuple[EventRecord, ...]:
    """Newest first, at most ``q.limit`` after skipping ``q.offset``."""
    where, args = _where(q.camera, q.label, q.severity, q.zone)
    if q.after is not None:
        where.append("started_at >= ?")
        args.append(q.after)
    if q.before is not None:
        where.append("started_at < ?")
        args.append(q.before)
    clause = " WHERE " + " AND ".join(where) if where else ""
    sql = f"SELECT {_COLUMNS} FROM events{clause} ORDER BY started_at DESC LIMIT ? OFFSET ?"  # noqa: S608
    rows = conn.execute(sql, [*args, q.limit, q.offset]).fetchall()
    if not q.with_artifacts or not rows:
        return tuple(_record(r) for r in rows)
    arts = _artifacts(conn, [r[0] for r in rows])
    return tuple(_record(r, tuple(arts.get(r[0], ()))) for r in rows)


def get_event(conn: sqlite3.Connection, event_id: str) -> EventRecord | None:
    r = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE id = ?",  # noqa: S608
        (event_id,),
    ).fetchone()
    if r is None:
        return None
    return _record(r, tuple(_artifacts(conn, [event_id]).get(event_id, ())))


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
