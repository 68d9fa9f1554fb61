from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from spyoncino.modules.storage.index import EventIndex
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact
from spyoncino.testing import BusHarness
from tests.support.tmpfs import fill, small_tmpfs
from tests.support.wait import until


def notice(phase: str, **kw: object) -> EventNotice:
    base = dict(
        event_id="e1",
        camera_id="cam",
        kind="object",
        phase=phase,
        labels=("person",),
        top_score=0.8,
        started_at=100.0,
        updated_at=100.0,
    )
    base.update(kw)
    return EventNotice.model_validate(base)


async def test_index_records_events_artifacts_and_notifications_in_batches(tmp_path: Path) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        saved = h.record("storage.event.saved")
        idx = h.build(EventIndex, {"index": {"flush_interval": 60}}, name="index")
        await idx.configure(idx.ctx.app)
        await idx.start()
        await h.bus.publish("event.object.started", notice("started"))
        await h.bus.publish(
            "event.object.updated",
            notice("updated", labels=("person", "dog"), top_score=0.9, updated_at=101.0),
        )
        await h.bus.publish(
            "media.snapshot.ready",
            MediaArtifact(
                event_id="e1",
                camera_id="cam",
                kind="snapshot",
                path=str(tmp_path / "x.jpg"),
                relpath="cam/2026-01-01/e1.jpg",
                size_bytes=10,
                sha256="0" * 64,
                mime="image/jpeg",
                created_at=time.time(),
            ),
        )
        await h.bus.publish(
            "notify.telegram.sent",
            AlertNotification(
                channel="telegram",
                event_id="e1",
                camera_id="cam",
                kind="snapshot",
                status="sent",
                recipient="42",
                at=time.time(),
            ),
        )
        await h.bus.drain(timeout=2)
        db = tmp_path / "events.sqlite3"
        # nothing committed yet: writes are batched
        assert sqlite3.connect(db).execute("SELECT count(*) FROM events").fetchone()[0] == 0
        assert idx.metrics()["batched_rows"] == 4
        assert await idx.flush() == 4  # type: ignore[attr-defined]
        await h.bus.drain(timeout=2)
        conn = sqlite3.connect(db)
        row = conn.execute("SELECT camera_id, labels, top_score, phase FROM events").fetchone()
        assert row == ("cam", '["person", "dog"]', 0.9, "updated")
        assert conn.execute("SELECT kind, relpath FROM artifacts").fetchall() == [
            ("snapshot", "cam/2026-01-01/e1.jpg")
        ]
        assert conn.execute("SELECT channel, status, recipient FROM notifications").fetchall() == [
            ("telegram", "sent", "42")
        ]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert idx.metrics()["commits"] == 1
        stored = saved.payloads[-1]
        assert stored.event_id == "e1" and stored.artifacts == ("snapshot",)
        # stop flushes what is pending
        await h.bus.publish("event.object.ended", notice("ended", ended_at=105.0))
        await h.bus.drain(timeout=2)
        await idx.stop()
        assert conn.execute("SELECT phase, ended_at FROM events").fetchone() == ("ended", 105.0)


async def test_a_full_disk_degrades_the_index_and_it_catches_up_when_space_returns(
    tmp_path: Path,
) -> None:
    """SQLite has already rolled back a failed COMMIT; the flush must survive that and retry."""
    with small_tmpfs(tmp_path / "disk", "2m") as root:
        async with BusHarness(storage_root=root) as h:
            faults = h.record("storage.fault")
            idx = h.build(EventIndex, {"index": {"flush_interval": 0.05}}, name="index")
            await idx.configure(idx.ctx.app)
            await idx.start()
            await h.bus.publish("event.object.started", notice("started"))
            await h.bus.drain(timeout=2)
            await until(lambda: idx.metrics()["commits"] == 1)
            filler = fill(root / "filler")
            big = "x" * 2000  # rows bigger than the pages left
            for i in range(200):
                await h.bus.publish(
                    "event.object.started", notice("started", event_id=f"f{i}", camera_id=big)
                )
            await h.bus.drain(timeout=2)
            fault = await faults.wait_for(timeout=5)
            assert "full" in fault.payload.error.lower()
            health = idx.health()
            assert health.state == "degraded"
            assert "cannot write" in health.detail
            assert idx.metrics()["storage_writable"] == 0
            filler.unlink()
            await until(lambda: idx.metrics()["batched_rows"] == 0, timeout=5)
            conn = sqlite3.connect(root / "events.sqlite3")
            assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 201
            conn.close()
            assert idx.health().state == "ok"
            assert idx.metrics()["storage_writable"] == 1
            # the flush task lives on: a new row after recovery is written too
            await h.bus.publish("event.object.started", notice("started", event_id="after"))
            await h.bus.drain(timeout=2)
            await until(lambda: idx.metrics()["rows_written"] == 202, timeout=5)


async def test_start_closes_events_a_crash_left_open_and_indexes_orphan_media(
    tmp_path: Path,
) -> None:
    """After SIGKILLs, events stayed 'started' forever and alerted files were not indexed."""
    from spyoncino.modules.storage.index.db import connect, upsert_event

    db = tmp_path / "events.sqlite3"
    conn = connect(db)
    upsert_event(conn, notice("started", event_id="open1", updated_at=150.0))
    upsert_event(conn, notice("updated", event_id="open2", updated_at=160.0))
    upsert_event(conn, notice("ended", event_id="done", updated_at=170.0, ended_at=171.0))
    conn.close()
    orphan = tmp_path / "cam" / "2026-01-01" / "20260101T101010-abcdef.jpg"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"\xff\xd8jpeg")
    async with BusHarness(storage_root=tmp_path) as h:
        idx = h.build(EventIndex, {"index": {"flush_interval": 60}}, name="index")
        await idx.configure(idx.ctx.app)
        await idx.start()
        conn = sqlite3.connect(db)
        rows = dict(
            (r[0], (r[1], r[2]))
            for r in conn.execute("SELECT id, phase, ended_at FROM events").fetchall()
        )
        assert rows["open1"] == ("ended", 150.0)  # ended at its last update
        assert rows["open2"] == ("ended", 160.0)
        assert rows["done"] == ("ended", 171.0)
        assert conn.execute(
            "SELECT relpath FROM artifacts WHERE event_id='20260101T101010-abcdef'"
        ).fetchall() == [("cam/2026-01-01/20260101T101010-abcdef.jpg",)]
        assert idx.metrics()["recovered_events"] == 2
        assert idx.metrics()["reindexed_rows"] == 2  # the event and its snapshot
        conn.close()


async def test_an_activity_is_indexed_with_its_severity_and_objects(tmp_path: Path) -> None:
    from spyoncino.schemas.events import TrackedObject
    from spyoncino.schemas.frames import Box

    box = Box(x1=1, y1=1, x2=20, y2=40)
    objs = (
        TrackedObject(track_id=1, label="car", score=0.7, box=box, zones=("street",)),
        TrackedObject(track_id=2, label="person", score=0.91234, box=box),
    )
    async with BusHarness(storage_root=tmp_path) as h:
        idx = h.build(EventIndex, {"index": {"flush_interval": 60}}, name="index")
        await idx.configure(idx.ctx.app)
        await idx.start()
        await h.bus.publish("event.object.started", notice("started", severity="detection"))
        await h.bus.publish(
            "event.object.ended",
            notice("ended", severity="alert", objects=objs, ended_at=110.0),
        )
        await h.bus.drain(timeout=2)
        await idx.flush()
        await idx.stop()
    conn = sqlite3.connect(tmp_path / "events.sqlite3")
    severity, objects = conn.execute("SELECT severity, objects FROM events").fetchone()
    assert severity == "alert"
    assert objects == (
        '[{"track_id": 1, "label": "car", "score": 0.7, "zones": ["street"]}, '
        '{"track_id": 2, "label": "person", "score": 0.912, "zones": []}]'
    )


async def test_a_flush_waits_for_the_write_already_under_way(tmp_path: Path) -> None:
    # the periodic flush took the batch and is writing it when stop (or a caller) flushes:
    # that flush returns only once those rows are committed, or a reader sees them missing
    async with BusHarness(storage_root=tmp_path) as h:
        idx = h.build(EventIndex, {"index": {"flush_interval": 60}}, name="index")
        await idx.configure(idx.ctx.app)
        await idx.start()
        await h.bus.publish("event.object.started", notice("started"))
        await h.bus.drain(timeout=2)
        with idx._db_lock:  # the write of the first flush cannot finish yet
            first = asyncio.create_task(idx.flush())  # type: ignore[attr-defined]
            await asyncio.sleep(0)  # it took the batch and waits for the executor
            second = asyncio.create_task(idx.flush())  # type: ignore[attr-defined]
            await asyncio.sleep(0)
            returned_early = second.done()
        assert await asyncio.gather(first, second) == [1, 0]
        assert not returned_early
        db = sqlite3.connect(tmp_path / "events.sqlite3")
        assert db.execute("SELECT id FROM events").fetchall() == [("e1",)]
        await idx.stop()
