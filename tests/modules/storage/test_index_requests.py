"""storage/index answers the typed requests everyone else asks instead of opening the file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from spyoncino.helpers.requests import NoOwner, Requester
from spyoncino.modules.storage.index import EventIndex
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.events import EventNotice, TrackedObject
from spyoncino.schemas.frames import Box
from spyoncino.schemas.index import (
    DayCountsQuery,
    EventLookup,
    EventsQuery,
    LabelsQuery,
    MediaRemoved,
)
from spyoncino.schemas.media import MediaArtifact
from spyoncino.testing import BusHarness


def _notice(
    i: int, camera: str, labels: tuple[str, ...], severity: str, zones: tuple[str, ...]
) -> EventNotice:
    return EventNotice(
        event_id=f"e{i}",
        camera_id=camera,
        kind="object",
        phase="ended",
        labels=labels,
        top_score=0.5,
        zones=zones,
        started_at=1000.0 + i,
        updated_at=1000.0 + i,
        ended_at=1001.0 + i,
        severity=severity,  # type: ignore[arg-type]
        objects=tuple(
            TrackedObject(track_id=n, label=lb, score=0.5, box=Box(x1=0, y1=0, x2=1, y2=1))
            for n, lb in enumerate(labels)
        ),
    )


def _art(i: int, kind: str = "snapshot") -> MediaArtifact:
    ext = {"snapshot": "jpg", "clip": "mp4"}[kind]
    return MediaArtifact(
        event_id=f"e{i}",
        camera_id="front",
        kind=kind,  # type: ignore[arg-type]
        path=f"/x/e{i}.{ext}",
        relpath=f"front/1970-01-01/e{i}.{ext}",
        size_bytes=10,
        sha256="0" * 64,
        mime="image/jpeg" if kind == "snapshot" else "video/mp4",
        created_at=1000.0 + i,
        duration_s=3.0 if kind == "clip" else None,
    )


async def _ask(req: Requester, q: EventsQuery) -> list[str]:
    page = await req.ask(topics.INDEX_EVENTS, q, topics.INDEX_EVENTS_REPLY, timeout=10)
    return [e.id for e in page.events]


async def test_lists_filter_page_and_look_up_events(tmp_path: Path) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        idx = h.build(EventIndex, {"index": {"flush_interval": 60}}, name="index")
        await idx.configure(idx.ctx.app)
        await idx.start()
        for i in range(6):
            await h.bus.publish(
                topics.EVENT.at(kind="object", phase="ended"),
                _notice(
                    i,
                    "front" if i % 2 else "back",
                    ("person",) if i % 3 else ("car", "person"),
                    "alert" if i < 3 else "detection",
                    ("door",) if i == 4 else (),
                ),
            )
        await h.bus.publish(topics.ARTIFACT.at(artifact="snapshot"), _art(5))
        await h.bus.publish(topics.ARTIFACT.at(artifact="clip"), _art(5, "clip"))
        await h.bus.drain(timeout=5)
        await idx.flush()  # type: ignore[attr-defined]
        req = Requester(h.bus, "asker")
        assert await _ask(req, EventsQuery()) == ["e5", "e4", "e3", "e2", "e1", "e0"]
        assert await _ask(req, EventsQuery(camera="front")) == ["e5", "e3", "e1"]
        assert await _ask(req, EventsQuery(label="car")) == ["e3", "e0"]
        assert await _ask(req, EventsQuery(severity="alert")) == ["e2", "e1", "e0"]
        assert await _ask(req, EventsQuery(zone="door")) == ["e4"]
        assert await _ask(req, EventsQuery(after=1002.0, before=1004.0)) == ["e3", "e2"]
        assert await _ask(req, EventsQuery(limit=2, offset=1)) == ["e4", "e3"]
        page = await req.ask(
            topics.INDEX_EVENT, EventLookup(event_id="e5"), topics.INDEX_EVENTS_REPLY, timeout=10
        )
        (e5,) = page.events
        assert (e5.camera_id, e5.labels, e5.objects[0]["label"]) == ("front", ("person",), "person")
        assert {a.kind: (a.relpath, a.duration_s) for a in e5.artifacts} == {
            "snapshot": ("front/1970-01-01/e5.jpg", None),
            "clip": ("front/1970-01-01/e5.mp4", 3.0),
        }
        missing = await req.ask(
            topics.INDEX_EVENT, EventLookup(event_id="nope"), topics.INDEX_EVENTS_REPLY, timeout=10
        )
        assert missing.events == ()
        labels = await req.ask(
            topics.INDEX_LABELS, LabelsQuery(), topics.INDEX_LABELS_REPLY, timeout=10
        )
        assert labels.labels == ("car", "person")
        counts = await req.ask(
            topics.INDEX_COUNTS,
            DayCountsQuery(days=((1000.0, 1003.0), (1003.0, 1010.0)), camera="front"),
            topics.INDEX_COUNTS_REPLY,
            timeout=10,
        )
        assert counts.counts == (1, 2)
        await idx.stop()
        # the index stopped: nobody answers, and the asker is told so at once
        with pytest.raises(NoOwner):
            await _ask(req, EventsQuery())
        req.close()


async def test_media_removed_forgets_rows_in_the_next_batch(tmp_path: Path) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        idx = h.build(EventIndex, {"index": {"flush_interval": 60}}, name="index")
        await idx.configure(idx.ctx.app)
        await idx.start()
        await h.bus.publish(
            topics.EVENT.at(kind="object", phase="ended"),
            _notice(1, "front", ("person",), "alert", ()),
        )
        await h.bus.publish(topics.ARTIFACT.at(artifact="snapshot"), _art(1))
        await h.bus.drain(timeout=5)
        await idx.flush()  # type: ignore[attr-defined]
        lost = AlertNotification(
            channel="s3",
            event_id="e1",
            camera_id="front",
            kind="snapshot",
            status="failed",
            recipient="bucket",
            error="lost before upload",
            at=time.time(),
        )
        await h.bus.publish(
            topics.MEDIA_REMOVED, MediaRemoved(relpaths=("front/1970-01-01/e1.jpg",), lost=(lost,))
        )
        await h.bus.drain(timeout=5)
        await idx.flush()  # type: ignore[attr-defined]
        conn = sqlite3.connect(tmp_path / "events.sqlite3")
        assert conn.execute("SELECT count(*) FROM artifacts").fetchone()[0] == 0
        # an ended event with no file left is forgotten too
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        assert conn.execute("SELECT channel, status, error FROM notifications").fetchall() == [
            ("s3", "failed", "lost before upload")
        ]
        conn.close()
        await idx.stop()
