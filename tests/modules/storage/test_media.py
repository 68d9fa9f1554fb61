"""Retention: by age per kind, by free space in the stated order, never the newest event."""

from __future__ import annotations

import os
import time
from pathlib import Path

from spyoncino.modules.storage.index.db import connect
from spyoncino.modules.storage.media import MediaRetention
from spyoncino.schemas import topics
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.index import MediaRemoved
from spyoncino.schemas.media import MediaArtifact, RetentionReport, StorageFault
from spyoncino.testing import BusHarness
from tests.support.tmpfs import small_tmpfs
from tests.support.wait import until

DAY = 86400.0
MB = 1_000_000


def put(root: Path, cam: str, event: str, suffix: str, size: int, age_s: float) -> Path:
    day = time.strftime("%Y-%m-%d", time.localtime(time.time() - age_s))
    p = root / cam / day / f"{event}{suffix}"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\0" * size)
    t = time.time() - age_s
    os.utime(p, (t, t))
    return p


def du(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class FakeDisk:
    """A filesystem of ``total`` bytes holding ``root`` and ``other`` bytes of something else."""

    def __init__(self, root: Path, total: int, other: int) -> None:
        self.root, self.total, self.other = root, total, other

    def __call__(self, path: Path) -> tuple[int, int]:
        return self.total - self.other - du(self.root), self.total


def event(i: int, age_s: float, root: Path) -> dict[str, Path]:
    eid = f"e{i}"
    return {
        "snapshot": put(root, "cam", eid, ".jpg", 100_000, age_s),
        "thumbnail": put(root, "cam", eid, ".thumb.jpg", 10_000, age_s),
        "gif": put(root, "cam", eid, ".gif", 400_000, age_s),
        "clip": put(root, "cam", eid, ".mp4", 1_000_000, age_s),
    }


async def run(
    root: Path, disk: FakeDisk | None, removed: list[MediaRemoved] | None = None, **cfg: object
) -> tuple[MediaRetention, list]:
    async with BusHarness(storage_root=root) as h:
        rec = h.record("storage.retention")
        gone = h.record(topics.MEDIA_REMOVED)
        mod = h.build(MediaRetention, {"media": cfg}, name="media")
        if disk is not None:
            mod.disk_free = disk  # type: ignore[attr-defined]
        await mod.configure(mod.ctx.app)
        await mod.start()
        await h.bus.drain()
        if removed is not None:
            removed.extend(gone.payloads)
        return mod, rec.payloads  # type: ignore[return-value]


async def test_age_limits_per_kind(tmp_path: Path) -> None:
    root = tmp_path / "media"
    old8 = event(1, 8 * DAY, root)  # clip expired (7 d), GIF and snapshot not
    old15 = event(2, 15 * DAY, root)  # clip and GIF expired
    old31 = event(3, 31 * DAY, root)  # everything expired
    fresh = event(4, 60, root)
    _, reports = await run(root, None)
    assert not old8["clip"].exists()
    assert old8["gif"].exists()
    assert old8["snapshot"].exists()
    assert not old15["gif"].exists()
    assert old15["snapshot"].exists()
    assert not any(p.exists() for p in old31.values())
    assert all(p.exists() for p in fresh.values())
    (report,) = reports
    assert isinstance(report, RetentionReport)
    assert report.reason == "age"
    assert report.by_kind == {"clip": 3, "gif": 2, "snapshot": 1, "thumbnail": 1}


async def test_space_pressure_removes_clips_then_gifs_then_snapshots(tmp_path: Path) -> None:
    root = tmp_path / "media"
    events = [event(i, (10 - i) * 3600, root) for i in range(6)]  # e0 oldest, e5 newest
    per_event = 1_510_000
    # 10 MB disk, 10 % to keep free: with 9.06 MB of media + 0.5 MB else, 0.44 MB is free
    disk = FakeDisk(root, total=10 * MB, other=500_000)
    assert du(root) == 6 * per_event
    _, reports = await run(root, disk)
    free, total = disk(root)
    assert free >= total * 0.10
    gone = [(i, k) for i, ev in enumerate(events) for k, p in ev.items() if not p.exists()]
    # the oldest clips went first, and only as many as needed
    assert gone == [(0, "clip")]
    assert reports[0].reason == "space"

    # much fuller: every clip but the newest event's goes, then GIFs oldest first
    disk.other = 5 * MB
    await run(root, disk)
    assert all(not ev["clip"].exists() for ev in events[:5])
    assert events[5]["clip"].exists()  # the newest event is always stored
    gifs_left = [i for i, ev in enumerate(events) if ev["gif"].exists()]
    assert gifs_left == sorted(gifs_left)
    assert gifs_left[-1] == 5
    assert 0 not in gifs_left
    assert all(ev["snapshot"].exists() for ev in events)
    free, total = disk(root)
    assert free >= total * 0.10

    # a disk nearly full of something else: snapshots go too, never the newest event's
    disk.other = int(9.3 * MB)
    await run(root, disk)
    assert all(p.exists() for p in events[5].values())
    assert not events[0]["snapshot"].exists()


async def test_open_event_is_never_removed(tmp_path: Path) -> None:
    root = tmp_path / "media"
    disk = FakeDisk(root, total=10 * MB, other=int(8.5 * MB))
    async with BusHarness(storage_root=root) as h:
        mod = h.build(MediaRetention, {"media": {}}, name="media")
        mod.disk_free = disk  # type: ignore[attr-defined]
        await mod.configure(mod.ctx.app)
        await mod.start()
        await h.bus.publish(
            "event.object.started",
            EventNotice(
                event_id="e0",
                camera_id="cam",
                kind="object",
                phase="started",
                labels=("person",),
                top_score=0.9,
                started_at=1.0,
                updated_at=1.0,
            ),
        )
        await h.bus.drain()
        writing = event(0, 20 * DAY, root)  # files of the open event, dated old (clock jump)
        event(1, 60, root)
        await mod.run_pass()  # type: ignore[attr-defined]
    assert all(p.exists() for p in writing.values())


async def test_removed_files_leave_the_index_and_leftovers_are_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "media"
    old = event(1, 40 * DAY, root)
    event(2, 60, root)
    temp = root / "cam" / "x" / ".e9.mp4.1234.part"
    temp.parent.mkdir(parents=True)
    temp.write_bytes(b"half")
    scratch = root / ".scratch" / ".e9.abcd.mp4"
    scratch.parent.mkdir(parents=True)
    scratch.write_bytes(b"half")
    removed: list[MediaRemoved] = []
    await run(root, None, removed)
    assert not temp.exists()
    assert not scratch.exists()
    assert not any(p.exists() for p in old.values())
    # the index (its only owner) is told which rows to forget: e1's four files, nothing else
    (msg,) = removed
    assert sorted(msg.relpaths) == sorted(p.relative_to(root).as_posix() for p in old.values())
    assert msg.lost == ()


async def test_idle_pass_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "media"
    event(1, 60, root)
    db = root / "events.sqlite3"
    connect(db).close()
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    mod, reports = await run(root, None)
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert before == after
    assert reports[0].removed_files == 0
    assert reports[0].reason == "none"
    metrics = mod.metrics()
    assert metrics["media_bytes_last_hour"] == 0
    assert "process_write_bytes_per_hour" in metrics


def _notice(eid: str, phase: str) -> EventNotice:
    now = time.time()
    return EventNotice(
        event_id=eid,
        camera_id="cam",
        kind="object",
        phase=phase,  # type: ignore[arg-type]
        labels=("person",),
        top_score=0.9,
        started_at=now,
        updated_at=now,
        ended_at=now if phase == "ended" else None,
    )


async def test_a_burst_filling_the_disk_deletes_the_oldest_not_the_newest(tmp_path: Path) -> None:
    """Default timer (300 s) and protect_s (600 s): the floor is still held as files arrive."""
    with small_tmpfs(tmp_path / "disk", "8m") as root:
        async with BusHarness(storage_root=root) as h:
            mod = h.build(MediaRetention, {"media": {"min_free_percent": 25}}, name="media")
            mod.urgent_gap_s = 0.0  # type: ignore[attr-defined]
            await mod.configure(mod.ctx.app)
            await mod.start()
            files: list[Path] = []
            for i in range(12):  # 12 x 1 MB on an 8 MB disk keeping 2 MB free
                eid = f"e{i:02d}"
                await h.bus.publish("event.object.started", _notice(eid, "started"))
                await h.bus.publish("event.object.ended", _notice(eid, "ended"))
                p = put(root, "cam", eid, ".mp4", MB, 0)
                files.append(p)
                await h.bus.publish(
                    "media.clip.ready",
                    MediaArtifact(
                        event_id=eid,
                        camera_id="cam",
                        kind="clip",
                        path=str(p),
                        relpath=str(p.relative_to(root)),
                        size_bytes=MB,
                        sha256="0" * 64,
                        mime="video/mp4",
                        created_at=time.time(),
                    ),
                )
                await h.bus.drain()
                await until(lambda: mod.metrics()["retention_busy"] == 0)  # type: ignore[attr-defined]
                st = os.statvfs(root)
                assert st.f_bavail * st.f_frsize >= 0.25 * st.f_blocks * st.f_frsize, i
            assert files[-1].exists()  # the newest event is stored
            kept = [p.exists() for p in files]
            assert kept == sorted(kept)  # oldest went first
            assert sum(kept) >= 4


async def test_a_storage_fault_triggers_a_pass_at_once(tmp_path: Path) -> None:
    root = tmp_path / "media"
    event(1, 3600, root)
    event(2, 60, root)
    disk = FakeDisk(root, total=10 * MB, other=0)
    async with BusHarness(storage_root=root) as h:
        rec = h.record("storage.retention")
        mod = h.build(MediaRetention, {"media": {}}, name="media")
        mod.disk_free = disk  # type: ignore[attr-defined]
        await mod.configure(mod.ctx.app)
        await mod.start()
        await rec.wait_for()
        disk.other = 8 * MB  # something else filled the card; the index cannot commit
        await h.bus.publish(
            "storage.fault",
            StorageFault(module="index", path="x", error="database or disk is full"),
        )
        msg = await rec.wait_for(lambda m: m.payload.removed_files > 0)
        assert msg.payload.reason == "space"


def hold(db: Path, relpath: str, event_id: str) -> None:
    """A pending off-box copy of ``relpath``, as the s3 module queues it."""
    from spyoncino.helpers.outbox.store import OutboxItem, _insert, open_db, outbox_path

    conn = open_db(outbox_path(db))
    now = time.time()
    payload = {"relpath": relpath, "hold_local": True, "size": 1}
    _insert(
        conn,
        OutboxItem(
            0,
            "s3",
            "bucket",
            f"s3:{event_id}",
            event_id,
            "cam",
            "copy:clip",
            payload,
            now,
            next_at=now,
        ),
    )
    conn.close()


async def test_pending_copies_are_kept_until_the_floor_forces_them_and_then_marked_lost(
    tmp_path: Path,
) -> None:
    root = tmp_path / "media"
    events = [event(i, (10 - i) * 3600, root) for i in range(6)]  # e0 oldest, e5 newest
    old = event(9, 8 * DAY, root)  # its clip is past clip_days
    async with BusHarness(storage_root=root) as h:
        gone = h.record(topics.MEDIA_REMOVED)
        mod = h.build(MediaRetention, {"media": {}}, name="media")
        await mod.configure(mod.ctx.app)
        assert isinstance(mod, MediaRetention)
        for ev in (old, events[0]):
            hold(mod.db_path, ev["clip"].relative_to(root).as_posix(), ev["clip"].stem)
        disk = FakeDisk(root, total=10 * MB, other=0)
        mod.disk_free = disk  # type: ignore[assignment]
        await mod.start()
        # by age: the clip still to copy stays, its GIF (not held) and nothing else goes
        assert old["clip"].exists()
        # a little pressure: the oldest clip that is not held goes, not e0's
        disk.other = int(1.2 * MB)
        await mod.run_pass()
        assert events[0]["clip"].exists() and old["clip"].exists()
        assert not events[1]["clip"].exists()
        assert mod.removed_before_upload == 0
        # a card nearly full of something else: the floor wins, held clips go last, recorded
        disk.other = int(9.0 * MB)
        await mod.run_pass()
        assert not old["clip"].exists()
        assert mod.removed_before_upload >= 1
        assert events[5]["clip"].exists()  # the newest event is always stored
        await h.bus.drain()
        await mod.stop()
    rows = [
        (n.channel, n.event_id, n.kind, n.status, n.error) for m in gone.payloads for n in m.lost
    ]
    assert rows[0][:4] == ("s3", "e9", "copy:clip", "failed")
    assert rows[0][4].startswith("lost before upload")
