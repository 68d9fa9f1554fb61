"""Snapshot writer: the event's frame, a clean copy, a thumbnail, replacements, manual ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2

from spyoncino.modules.event.snapshot import SnapshotWriter
from spyoncino.schemas import topics
from spyoncino.schemas.control import ControlCommand
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Box
from spyoncino.schemas.media import MediaArtifact

from .conftest import Harness, make_frame


def notice(phase: str, seq: int, box: Box, **kw: Any) -> EventNotice:
    frame = make_frame("cam", seq, seq / 10, 1280, 720, boxes=(box.as_tuple(),))
    return EventNotice(
        event_id="20240101T000000-abcdef",
        camera_id="cam",
        kind="object",
        phase=phase,  # type: ignore[arg-type]
        labels=("person",),
        top_score=0.9,
        started_at=1_700_000_000.0,
        updated_at=1_700_000_001.0,
        boxes=(box,),
        frame_seq=seq,
        frame_width=1280,
        frame_height=720,
        frame=frame,
        **kw,
    )


async def start(h: Harness) -> tuple[SnapshotWriter, list[tuple[str, Any]]]:
    app = h.app({"snapshot": SnapshotWriter}, {"cameras": {"cam": {"source": "x.mp4"}}})
    rec = h.record("media.*.ready")
    return await h.start(SnapshotWriter, app), rec


def arts(rec: list[tuple[str, Any]]) -> list[MediaArtifact]:
    return [p for _, p in rec]


async def test_started_writes_snapshot_clean_copy_and_thumbnail(harness: Harness) -> None:
    _, rec = await start(harness)
    box = Box(x1=100, y1=100, x2=300, y2=500)
    await harness.bus.publish("event.object.started", notice("started", 3, box))
    await harness.settle()
    by_kind = {a.kind: a for a in arts(rec)}
    assert set(by_kind) == {"snapshot", "snapshot_clean", "thumbnail"}
    assert [t for t, _ in rec] == [
        "media.snapshot.ready",
        "media.snapshot_clean.ready",
        "media.thumbnail.ready",
    ]
    snap = cv2.imread(by_kind["snapshot"].path)
    clean = cv2.imread(by_kind["snapshot_clean"].path)
    thumb = cv2.imread(by_kind["thumbnail"].path)
    assert snap.shape == clean.shape == (720, 1280, 3)
    assert thumb.shape[1] == 320
    # the box outline is drawn on the snapshot only (red on the white box's edge)
    assert snap[300, 100, 2] > 200
    assert snap[300, 100, 0] < 80
    assert clean[300, 100, 0] > 200
    assert by_kind["snapshot_clean"].relpath.endswith(".clean.jpg")
    assert by_kind["thumbnail"].relpath.endswith(".thumb.jpg")


async def test_better_frame_at_end_replaces_the_snapshot(harness: Harness) -> None:
    mod, rec = await start(harness)
    box = Box(x1=100, y1=100, x2=300, y2=500)
    await harness.bus.publish("event.object.started", notice("started", 3, box))
    await harness.bus.publish("event.object.updated", notice("updated", 5, box))  # not replaced
    await harness.bus.publish("event.object.ended", notice("ended", 9, box, ended_at=1.7e9 + 2))
    await harness.settle()
    snaps = [a for a in arts(rec) if a.kind == "snapshot"]
    assert len(snaps) == 2
    assert snaps[0].path == snaps[1].path
    assert snaps[0].sha256 != snaps[1].sha256
    assert mod.metrics()["replaced"] == 1


async def test_same_frame_at_end_is_not_rewritten(harness: Harness) -> None:
    _, rec = await start(harness)
    box = Box(x1=100, y1=100, x2=300, y2=500)
    await harness.bus.publish("event.object.started", notice("started", 3, box))
    await harness.bus.publish("event.object.ended", notice("ended", 3, box, ended_at=1.7e9 + 2))
    await harness.settle()
    assert len([a for a in arts(rec) if a.kind == "snapshot"]) == 1


async def test_manual_snapshot_from_the_latest_frame(harness: Harness) -> None:
    _, rec = await start(harness)
    for seq in range(3):
        await harness.bus.publish(topics.FRAME.at(camera="cam"), make_frame("cam", seq, seq / 10))
    await harness.bus.wait_idle(topics.FRAME.at(camera="cam"))
    cmd = ControlCommand(command="snapshot", camera_id="cam", source="api", request_id="r42")
    await harness.bus.publish(topics.CONTROL.name, cmd)
    await harness.settle()
    (art,) = arts(rec)
    assert art.event_id == "manual-r42"
    assert art.kind == "snapshot"
    assert Path(art.path).name == "manual-r42.jpg"
    assert cv2.imread(art.path).shape == (360, 640, 3)


async def test_manual_snapshot_without_frames_writes_nothing(harness: Harness) -> None:
    _, rec = await start(harness)
    cmd = ControlCommand(command="snapshot", camera_id="cam", source="api")
    await harness.bus.publish(topics.CONTROL.name, cmd)
    await harness.settle()
    assert rec == []


async def test_an_activity_snapshot_boxes_every_object_and_is_redone_when_it_alerts(
    harness: Harness,
) -> None:
    from spyoncino.schemas.events import TrackedObject

    _, rec = await start(harness)
    a, b = Box(x1=100, y1=100, x2=300, y2=500), Box(x1=700, y1=100, x2=900, y2=500)
    objs = (
        TrackedObject(track_id=1, label="car", score=0.8, box=a),
        TrackedObject(track_id=2, label="person", score=0.9, box=b),
    )
    frame = make_frame("cam", 5, 0.5, 1280, 720, boxes=(a.as_tuple(), b.as_tuple()))
    first = notice("started", 5, a, severity="detection").model_copy(
        update={"frame_objects": objs[:1], "frame": frame}
    )
    await harness.bus.publish("event.object.started", first)
    await harness.settle()
    assert len([x for x in arts(rec) if x.kind == "snapshot"]) == 1
    escalated = notice("updated", 9, b, severity="alert").model_copy(
        update={
            "frame_objects": objs,
            "frame": make_frame("cam", 9, 0.9, 1280, 720, boxes=(a.as_tuple(), b.as_tuple())),
        }
    )
    await harness.bus.publish("event.object.updated", escalated)
    await harness.settle()
    snaps = [x for x in arts(rec) if x.kind == "snapshot"]
    assert len(snaps) == 2  # the detection's picture is replaced once it is an alert
    img = cv2.imread(snaps[-1].path)
    for box in (a, b):  # both outlines, not only the first object's
        assert img[300, box.x1, 2] > 200
        assert img[300, box.x1, 0] < 80
    # an ordinary update after that does not rewrite it
    later = escalated.model_copy(update={"frame_seq": 11})
    await harness.bus.publish("event.object.updated", later)
    await harness.settle()
    assert len([x for x in arts(rec) if x.kind == "snapshot"]) == 2


async def test_an_ended_activity_gets_its_objects_best_crops_as_thumbnail(
    harness: Harness,
) -> None:
    from spyoncino.schemas.events import TrackedObject

    _, rec = await start(harness)
    a, b = Box(x1=100, y1=100, x2=300, y2=500), Box(x1=700, y1=200, x2=800, y2=400)
    objs = (
        TrackedObject(track_id=1, label="person", score=0.9, box=a),
        TrackedObject(track_id=2, label="person", score=0.6, box=b),
    )
    f1 = make_frame("cam", 3, 0.3, 1280, 720, boxes=(a.as_tuple(),))
    f2 = make_frame("cam", 7, 0.7, 1280, 720, boxes=(b.as_tuple(),))
    await harness.bus.publish("event.object.started", notice("started", 3, a))
    await harness.settle()
    ended = notice("ended", 3, a).model_copy(
        update={"objects": objs, "crops": ((1, f1, a), (2, f2, b))}
    )
    await harness.bus.publish("event.object.ended", ended)
    await harness.settle()
    thumbs = [x for x in arts(rec) if x.kind == "thumbnail"]
    assert len(thumbs) == 2  # the started one, then the crops at the end
    img = cv2.imread(thumbs[-1].path)
    assert img.shape[0] == 120 + 18  # crop_height plus the label band
    # two tiles side by side, each about as wide as its box at that height (+ margins)
    assert 2 * 60 < img.shape[1] < 2 * 2 * 120 + 8
    assert Path(thumbs[-1].path).name.endswith(".thumb.jpg")
