"""Reading events: what the index answers (typed requests on the bus) plus what the bus said
lately. The status page never opens the index database; ``storage/index`` owns it.

The index batches its writes, so an event seen on the bus a second ago may not be in the file
yet; ``LiveEvents`` keeps the last few hundred so lists and pages are never behind the bus.
Media paths are resolved strictly inside the storage root.
"""

from __future__ import annotations

import stat
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo

from spyoncino.helpers.requests import Requester, RequestError
from spyoncino.schemas import topics
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.index import EventLookup, EventRecord, EventsQuery, LabelsQuery
from spyoncino.schemas.media import MediaArtifact

#: What the media route will serve; everything else under the root (index, state) is private.
MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
}


@dataclass
class EventRow:
    id: str
    camera_id: str
    kind: str
    labels: list[str]
    top_score: float
    started_at: float
    updated_at: float
    ended_at: float | None
    phase: str
    zones: list[str] = field(default_factory=list)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    severity: str = "alert"
    #: the activity's objects: [{track_id, label, score, zones}]
    objects: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        """``2 people, 1 car`` (the labels, or the kind, when the objects are not known)."""
        if not self.objects:
            return ", ".join(self.labels) or self.kind
        plural = {"person": "people", "bus": "buses"}
        return ", ".join(
            f"{n} {label if n == 1 else plural.get(label, label + 's')}"
            for label, n in self.counts().items()
        )

    def counts(self) -> dict[str, int]:
        """How many objects of each label the activity had (people first)."""
        out: dict[str, int] = {}
        for o in sorted(self.objects, key=lambda o: o.get("label") != "person"):
            label = str(o.get("label", ""))
            out[label] = out.get(label, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "camera_id": self.camera_id,
            "kind": self.kind,
            "labels": self.labels,
            "top_score": round(self.top_score, 3),
            "zones": self.zones,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "ended_at": self.ended_at,
            "phase": self.phase,
            "severity": self.severity,
            "objects": self.objects,
            "artifacts": self.artifacts,
        }


def _artifact_dict(relpath: str, mime: str, size: int, duration: float | None) -> dict[str, Any]:
    return {"url": "/media/" + relpath, "mime": mime, "size_bytes": size, "duration_s": duration}


def _objects(e: EventNotice) -> list[dict[str, Any]]:
    return [
        {
            "track_id": o.track_id,
            "label": o.label,
            "score": round(o.score, 3),
            "zones": list(o.zones),
        }
        for o in e.objects
    ]


class LiveEvents:
    """The most recent events as the bus announced them (bounded, newest last)."""

    def __init__(self, capacity: int = 300) -> None:
        self.capacity = capacity
        self._rows: OrderedDict[str, EventRow] = OrderedDict()

    def on_event(self, e: EventNotice) -> EventRow:
        row = self._rows.get(e.event_id)
        if row is None:
            row = EventRow(
                id=e.event_id,
                camera_id=e.camera_id,
                kind=e.kind,
                labels=list(e.labels),
                top_score=e.top_score,
                started_at=e.started_at,
                updated_at=e.updated_at,
                ended_at=e.ended_at,
                phase=e.phase,
                zones=list(e.zones),
                severity=e.severity,
                objects=_objects(e),
            )
            self._rows[e.event_id] = row
            while len(self._rows) > self.capacity:
                self._rows.popitem(last=False)
        else:
            row.labels = list(e.labels)
            row.top_score = e.top_score
            row.updated_at = e.updated_at
            row.ended_at = e.ended_at
            row.phase = e.phase
            row.zones = list(e.zones)
            row.severity = e.severity
            row.objects = _objects(e)
        return row

    def on_artifact(self, a: MediaArtifact) -> EventRow | None:
        row = self._rows.get(a.event_id)
        if row is not None:
            row.artifacts[a.kind] = _artifact_dict(a.relpath, a.mime, a.size_bytes, a.duration_s)
        return row

    def get(self, event_id: str) -> EventRow | None:
        return self._rows.get(event_id)

    def rows(self) -> list[EventRow]:
        return list(self._rows.values())

    def last_by_camera(self) -> dict[str, EventRow]:
        out: dict[str, EventRow] = {}
        for row in self._rows.values():
            prev = out.get(row.camera_id)
            if prev is None or row.started_at >= prev.started_at:
                out[row.camera_id] = row
        return out


@dataclass(frozen=True)
class EventQuery:
    camera: str | None = None
    label: str | None = None
    day: str | None = None  # YYYY-MM-DD, local time
    before: float | None = None
    after: float | None = None  # started at or after (a Unix time)
    severity: str | None = None  # alert | detection
    zone: str | None = None
    limit: int = 50
    tz: str | None = None  # runtime.timezone: the zone media folders and captions use

    def day_bounds(self) -> tuple[float, float] | None:
        if not self.day:
            return None
        day = datetime.strptime(self.day, "%Y-%m-%d")
        zone = ZoneInfo(self.tz) if self.tz else None
        start = day.replace(tzinfo=zone) if zone else day.astimezone()
        end = (
            (day + timedelta(days=1)).replace(tzinfo=zone)
            if zone
            else (day + timedelta(days=1)).astimezone()
        )
        return start.timestamp(), end.timestamp()  # a DST day is 23 or 25 hours long

    def matches(self, row: EventRow) -> bool:
        if self.camera and row.camera_id != self.camera:
            return False
        if self.label and self.label not in row.labels:
            return False
        if self.severity and row.severity != self.severity:
            return False
        if self.zone and self.zone not in row.zones:
            return False
        if self.before is not None and row.started_at >= self.before:
            return False
        if self.after is not None and row.started_at < self.after:
            return False
        bounds = self.day_bounds()
        return not (bounds and not bounds[0] <= row.started_at < bounds[1])


#: seconds a page waits for the index's answer before it shows what the bus said lately
INDEX_TIMEOUT_S = 5.0


def index_request(q: EventQuery) -> EventsQuery:
    """``q`` as the index's typed request: the day becomes time bounds (in ``q.tz``)."""
    after, before = q.after, q.before
    bounds = q.day_bounds()
    if bounds:
        after = bounds[0] if after is None else max(after, bounds[0])
        before = bounds[1] if before is None else min(before, bounds[1])
    return EventsQuery(
        camera=q.camera,
        label=q.label,
        severity=q.severity,
        zone=q.zone,
        after=after,
        before=before,
        limit=q.limit,
    )


def from_record(r: EventRecord) -> EventRow:
    return EventRow(
        id=r.id,
        camera_id=r.camera_id,
        kind=r.kind,
        labels=list(r.labels),
        top_score=r.top_score,
        started_at=r.started_at,
        updated_at=r.updated_at,
        ended_at=r.ended_at,
        phase=r.phase,
        zones=list(r.zones),
        severity=r.severity,
        objects=list(r.objects),
        artifacts={
            a.kind: _artifact_dict(a.relpath, a.mime, a.size_bytes, a.duration_s)
            for a in r.artifacts
        },
    )


async def query_index(index: Requester, q: EventQuery) -> list[EventRow]:
    """Newest first, as the index answers; [] when there is no index or it cannot answer
    (the page then shows what the bus said lately)."""
    try:
        page = await index.ask(
            topics.INDEX_EVENTS,
            index_request(q),
            topics.INDEX_EVENTS_REPLY,
            timeout=INDEX_TIMEOUT_S,
        )
    except RequestError:
        return []
    return [from_record(r) for r in page.events]


async def get_event(index: Requester, event_id: str) -> EventRow | None:
    try:
        page = await index.ask(
            topics.INDEX_EVENT,
            EventLookup(event_id=event_id),
            topics.INDEX_EVENTS_REPLY,
            timeout=INDEX_TIMEOUT_S,
        )
    except RequestError:
        return None
    return from_record(page.events[0]) if page.events else None


async def labels_in_index(index: Requester) -> list[str]:
    """Every label seen, for the filter menu."""
    try:
        reply = await index.ask(
            topics.INDEX_LABELS, LabelsQuery(), topics.INDEX_LABELS_REPLY, timeout=INDEX_TIMEOUT_S
        )
    except RequestError:
        return []
    return list(reply.labels)


def merge(indexed: list[EventRow], live: list[EventRow], q: EventQuery) -> list[EventRow]:
    """Index rows updated with fresher live ones; newest first, at most ``q.limit``."""
    out = {r.id: r for r in indexed}
    for row in live:
        if not q.matches(row):
            continue
        old = out.get(row.id)
        if old is None:
            out[row.id] = row
        elif row.updated_at >= old.updated_at:
            out[row.id] = replace(row, artifacts={**old.artifacts, **row.artifacts})
        else:
            old.artifacts = {**row.artifacts, **old.artifacts}
    return sorted(out.values(), key=lambda r: r.started_at, reverse=True)[: q.limit]


def resolve_media(root: Path, relpath: str) -> Path | None:
    """The file ``relpath`` names under ``root``, or None for anything else.

    Refuses absolute paths, ``..``, hidden names (temp files, scratch), unknown types, and
    symlinks of any kind: the checks above are on the name asked for, so a link planted in the
    root (``x.jpg -> events.sqlite3``) must not lead anywhere. Only a regular file reached
    without following a link is served.
    """
    if not relpath or "\x00" in relpath or "\\" in relpath:
        return None
    pure = PurePosixPath(relpath)
    if pure.is_absolute() or relpath.startswith("/"):
        return None
    if any(part in ("", ".", "..") or part.startswith(".") for part in pure.parts):
        return None
    if pure.suffix.lower() not in MEDIA_TYPES:
        return None
    try:
        base = root.resolve()
        target = (base / pure).resolve()
    except (OSError, RuntimeError):
        return None
    if target != base / pure:  # a link somewhere on the way
        return None
    try:
        if not stat.S_ISREG(target.lstat().st_mode):
            return None
    except OSError:
        return None
    return target
