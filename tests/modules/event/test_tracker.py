"""The tracker on a real bus, fed synthetic detections with their own clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spyoncino.core.config import ConfigService, Layer
from spyoncino.core.orchestrator import Orchestrator
from spyoncino.modules.event.tracker import (
    MAX_CROPS,
    EventTracker,
    Zone,
    point_in_polygon,
    zone_check,
)
from spyoncino.schemas import topics
from spyoncino.schemas.control import ConfigUpdate
from spyoncino.schemas.detections import Detection, DetectionEvent, MotionEvent
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Box

from .conftest import Harness, make_frame

W, H = 640, 360
FPS = 10.0


def det(label: str, score: float, box: tuple[int, int, int, int]) -> Detection:
    return Detection(label=label, score=score, box=Box(x1=box[0], y1=box[1], x2=box[2], y2=box[3]))


async def feed(
    h: Harness,
    seq: int,
    dets: list[Detection],
    camera: str = "cam",
    motion: list[tuple[int, int, int, int]] | None = None,
) -> None:
    """One inference's detections; ``motion``: the motion boxes it looked around (None: none)."""
    t = seq / FPS
    ev = DetectionEvent(
        motion_boxes=tuple(Box(x1=a, y1=b, x2=c, y2=d) for a, b, c, d in motion or ()),
        camera_id=camera,
        seq=seq,
        mono_ts=t,
        wall_ts=1_700_000_000.0 + t,
        frame_width=W,
        frame_height=H,
        detections=tuple(dets),
        backend="test",
        model="test",
        inference_ms=1.0,
        frame=make_frame(camera, seq, t, W, H),
    )
    await h.bus.publish(topics.OBJECTS.name, ev)
    await h.bus.wait_idle(topics.OBJECTS.name)


def walker(seq: int, x0: int = 20, speed: int = 12, y: int = 150) -> tuple[int, int, int, int]:
    x = x0 + seq * speed
    return (x, y, x + 40, y + 100)


def events(rec: list[tuple[str, Any]], phase: str | None = None) -> list[EventNotice]:
    return [p for t, p in rec if isinstance(p, EventNotice) and (phase is None or p.phase == phase)]


async def tracker(h: Harness, **cfg: Any) -> tuple[EventTracker, list[tuple[str, Any]]]:
    cams = cfg.pop("cameras", {"cam": {"source": "x.mp4"}})
    app = h.app(
        {"tracker": EventTracker}, {"tracker": {"source": "objects", **cfg}, "cameras": cams}
    )
    rec = h.record("event.#")
    mod = await h.start(EventTracker, app)
    return mod, rec


async def test_one_walker_is_one_event_with_lifecycle(harness: Harness) -> None:
    mod, rec = await tracker(harness, update_every_s=1.0)
    for seq in range(40):
        await feed(harness, seq, [det("person", 0.8, walker(seq))])
    for seq in range(40, 99):  # the activity stays open 10 s after the last sighting
        await feed(harness, seq, [])
    assert events(rec, "ended") == []
    for seq in range(99, 150):
        await feed(harness, seq, [])
    await harness.settle()
    assert len(events(rec, "started")) == 1
    assert len(events(rec, "ended")) == 1
    assert 2 <= len(events(rec, "updated")) <= 5  # rate-limited, not every frame
    started, ended = events(rec, "started")[0], events(rec, "ended")[0]
    assert started.event_id == ended.event_id
    assert started.started_at == pytest.approx(1_700_000_000.0)  # first sighting, not confirmation
    assert ended.ended_at == pytest.approx(1_700_000_003.9)
    assert started.frame is not None
    assert started.objects[0].label == "person"
    assert started.severity == "alert"  # a person, anywhere: the default alert_labels
    assert mod.metrics()["open_events"] == 0


async def test_single_frame_flicker_raises_nothing_but_two_of_three_does(harness: Harness) -> None:
    _, rec = await tracker(harness)
    await feed(harness, 0, [det("person", 0.9, (100, 100, 140, 200))])
    for seq in range(1, 40):
        await feed(harness, seq, [])
    assert events(rec) == []
    await feed(harness, 40, [det("person", 0.9, (100, 100, 140, 200))])
    await feed(harness, 41, [])
    await feed(harness, 42, [det("person", 0.9, (104, 100, 144, 200))])
    await harness.settle()
    assert len(events(rec, "started")) == 1


async def test_parked_car_present_at_start_does_not_alert_until_it_moves(harness: Harness) -> None:
    _, rec = await tracker(harness)
    car = (300, 200, 420, 280)
    for seq in range(100):
        await feed(harness, seq, [det("car", 0.9, car)])
    assert events(rec) == []
    for seq in range(100, 110):  # drives off
        x = 300 + (seq - 99) * 20
        await feed(harness, seq, [det("car", 0.9, (x, 200, x + 120, 280))])
    await harness.settle()
    assert len(events(rec, "started")) == 1


async def test_parked_car_seen_at_start_stays_quiet_when_seen_again_later(
    harness: Harness,
) -> None:
    # motion-gated, the detector sees the parked car only while motion brings it into a crop:
    # at start, then not for 10 s (its track is dropped), then again when someone walks by
    _, rec = await tracker(harness)
    car = (500, 40, 600, 100)
    for seq in range(10):
        await feed(harness, seq, [det("car", 0.6, car)])
    for seq in range(10, 110):
        await feed(harness, seq, [])
    for seq in range(110, 140):
        await feed(harness, seq, [det("car", 0.6, (501, 41, 601, 101))])
    await harness.settle()
    assert events(rec) == []


async def test_a_still_object_no_motion_touches_is_a_bystander_until_it_moves(
    harness: Harness,
) -> None:
    # long after start a crop around a walker also takes in a car parked nearby: the motion is
    # the walker's, not the car's, so the walker alerts and the car does not -- until it drives
    _, rec = await tracker(harness, warmup_s=0)
    car = (420, 40, 540, 110)
    for seq in range(100, 130):
        box = walker(seq - 100, x0=200, y=60)
        await feed(harness, seq, [det("person", 0.8, box), det("car", 0.7, car)], motion=[box])
    assert [o.label for o in events(rec)[-1].objects] == ["person"]
    for seq in range(130, 140):  # the car drives off: its own motion
        x = 420 + (seq - 129) * 25
        box = (x, 40, x + 120, 110)
        await feed(harness, seq, [det("car", 0.7, box)], motion=[box])
    await harness.settle()
    assert len(events(rec, "started")) == 1  # the same activity, which the car joins
    assert [o.label for o in events(rec)[-1].objects] == ["person", "car"]


async def test_a_small_parked_car_whose_box_jitters_without_motion_has_not_moved(
    harness: Harness,
) -> None:
    # the front of a car cut by the frame edge, 40 px wide: the detector's box for it shifts by
    # half its width from look to look (IoU 0.5 < stationary_iou), but no motion is on it
    _, rec = await tracker(harness)
    for seq in range(60):
        dx = 20 if seq % 2 else 0
        car = (600 + dx, 40, 640, 90)
        box = walker(seq, x0=20, y=200)
        await feed(harness, seq, [det("car", 0.5, car), det("person", 0.8, box)], motion=[box])
    await harness.settle()
    assert len(events(rec, "started")) == 1
    assert {o.label for e in events(rec) for o in e.objects} == {"person"}


async def test_without_motion_boxes_every_newcomer_counts(harness: Harness) -> None:
    # trigger: always (no motion stage) sends no motion boxes: the bystander rule is off
    _, rec = await tracker(harness, warmup_s=0)
    for seq in range(100, 110):
        await feed(harness, seq, [det("car", 0.7, (420, 40, 540, 110))])
    await harness.settle()
    assert len(events(rec, "started")) == 1


async def test_arriving_car_that_parks_ends_its_event_and_stays_quiet(harness: Harness) -> None:
    _, rec = await tracker(harness, stationary_after_s=5.0)
    for seq in range(10):
        x = 100 + seq * 20
        await feed(harness, seq, [det("car", 0.9, (x, 200, x + 120, 280))])
    for seq in range(10, 200):  # sits there for 19 s, with detector dropouts
        dets = [] if seq % 7 == 0 else [det("car", 0.9, (280, 200, 400, 280))]
        await feed(harness, seq, dets)
    # lost for 8 s (a bus passes in front), found again at the same spot: still parked
    for seq in range(200, 280):
        await feed(harness, seq, [])
    for seq in range(280, 300):
        await feed(harness, seq, [det("car", 0.9, (281, 201, 401, 281))])
    await harness.settle()
    assert len(events(rec, "started")) == 1
    assert len(events(rec, "ended")) == 1


async def test_best_snapshot_prefers_big_uncut_confident_boxes(harness: Harness) -> None:
    _, rec = await tracker(harness, update_every_s=0.1, warmup_s=0)
    await feed(harness, 0, [det("person", 0.9, (0, 100, 60, 300))])  # cut by the left edge
    await feed(harness, 1, [det("person", 0.9, (10, 100, 70, 300))])
    await feed(harness, 2, [det("person", 0.5, (20, 100, 60, 180))])  # small and unsure
    await feed(harness, 3, [det("person", 0.9, (30, 100, 90, 300))])
    for seq in range(4, 150):
        await feed(harness, seq, [])
    await harness.settle()
    ended = events(rec, "ended")[0]
    assert ended.frame_seq == 1
    assert ended.boxes == (Box(x1=10, y1=100, x2=70, y2=300),)
    assert ended.frame is not None
    assert ended.frame.seq == 1


async def test_cooldown_reopens_the_activity_per_camera_and_label(harness: Harness) -> None:
    _, rec = await tracker(harness, cooldown_s=20.0, warmup_s=0, activity_gap_s=2.0)
    box = (300, 100, 340, 200)
    for seq in range(5):
        await feed(harness, seq, [det("person", 0.9, box)])
    for seq in range(5, 70):  # gone 6.5 s: closed after 2 s
        await feed(harness, seq, [])
    assert len(events(rec, "ended")) == 1
    for seq in range(70, 75):  # back at the door 6.5 s later: the same activity again
        await feed(harness, seq, [det("person", 0.9, box)])
    await harness.settle()
    started = events(rec, "started")
    assert len(started) == 1
    resumed = [e for e in events(rec, "updated") if e.event_id == started[0].event_id]
    assert resumed
    assert resumed[-1].ended_at is None
    # a car far from the door after the activity closed: another label, its own activity
    for seq in range(75, 110):
        await feed(harness, seq, [])
    for seq in range(110, 115):
        await feed(harness, seq, [det("car", 0.9, (500, 250, 600, 330))])
    await harness.settle()
    assert [e.labels for e in events(rec, "started")] == [("person",), ("car",)]


async def test_after_cooldown_a_new_event(harness: Harness) -> None:
    _, rec = await tracker(harness, cooldown_s=2.0, warmup_s=0, activity_gap_s=2.0)
    box = (300, 100, 340, 200)
    for seq in range(5):
        await feed(harness, seq, [det("person", 0.9, box)])
    for seq in range(5, 100):
        await feed(harness, seq, [])
    for seq in range(100, 105):
        await feed(harness, seq, [det("person", 0.9, box)])
    await harness.settle()
    assert len(events(rec, "started")) == 2


async def test_two_people_are_one_activity_with_both_boxed(harness: Harness) -> None:
    _, rec = await tracker(harness)
    for seq in range(30):
        await feed(
            harness,
            seq,
            [det("person", 0.8, walker(seq)), det("person", 0.8, walker(seq, x0=560, speed=-12))],
        )
    await harness.settle()
    assert len(events(rec, "started")) == 1
    last = events(rec)[-1]
    assert [o.label for o in last.objects] == ["person", "person"]
    assert len(last.frame_objects) == 2  # the snapshot boxes both, not only the first
    assert len(last.boxes) == 2


async def test_labels_filter(harness: Harness) -> None:
    _, rec = await tracker(harness, labels=["person"])
    for seq in range(10):
        await feed(harness, seq, [det("cat", 0.9, walker(seq))])
    await harness.settle()
    assert events(rec) == []


def test_polygon_and_zone_rules() -> None:
    square = ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5))
    assert point_in_polygon((0.25, 0.25), square)
    assert not point_in_polygon((0.75, 0.25), square)
    road = Zone(name="road", polygon=square, mode="exclude", labels=("person",))
    yard = Zone(name="yard", polygon=((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)))
    assert zone_check((road, yard), "person", (0.25, 0.25)) == (False, ())
    assert zone_check((road, yard), "car", (0.25, 0.25)) == (True, ("yard",))
    assert zone_check((road, yard), "person", (0.75, 0.75)) == (True, ("yard",))
    only_left = Zone(name="left", polygon=square)
    assert zone_check((only_left,), "person", (0.75, 0.75)) == (False, ())
    with pytest.raises(ValueError):
        Zone(name="bad", polygon=((0.0, 0.0), (1.2, 0.0), (1.0, 1.0)))


EXCLUDE_LEFT = {
    "name": "hedge",
    "mode": "exclude",
    "polygon": [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]],
}


async def test_person_only_inside_exclude_zone_raises_nothing(harness: Harness) -> None:
    cams = {"cam": {"source": "x.mp4", "tracker": {"zones": [EXCLUDE_LEFT]}}}
    _, rec = await tracker(harness, cameras=cams)
    for seq in range(40):  # walks around in the left half only
        x = 20 + (seq % 20) * 8
        await feed(harness, seq, [det("person", 0.9, (x, 100, x + 40, 250))])
    await harness.settle()
    assert events(rec) == []


async def test_events_carry_zones_entered(harness: Harness) -> None:
    porch = {"name": "porch", "polygon": [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]}
    drive = {"name": "drive", "polygon": [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]}
    cams = {"cam": {"source": "x.mp4", "tracker": {"zones": [drive, porch]}}}
    _, rec = await tracker(harness, cameras=cams)
    for seq in range(45):
        await feed(harness, seq, [det("person", 0.9, walker(seq))])
    for seq in range(45, 160):
        await feed(harness, seq, [])
    await harness.settle()
    assert events(rec, "started")[0].zones == ("drive",)
    assert events(rec, "ended")[0].zones == ("drive", "porch")


async def test_motion_only_events_follow_the_same_lifecycle(harness: Harness) -> None:
    _, rec = await tracker(harness, source="motion")
    for seq in range(30):
        t = seq / FPS
        x1, y1, x2, y2 = walker(seq) if seq < 20 else (0, 0, 0, 0)
        boxes = (Box(x1=x1, y1=y1, x2=x2, y2=y2),) if seq < 20 else ()
        m = MotionEvent(
            camera_id="cam",
            seq=seq,
            mono_ts=t,
            wall_ts=1e9 + t,
            frame_width=W,
            frame_height=H,
            boxes=boxes,
            changed_fraction=0.02 if boxes else 0.0,
            frame=make_frame("cam", seq, t, W, H),
        )
        await harness.bus.publish(topics.MOTION.name, m)
    for seq in range(30, 150):
        await feed(harness, seq, [])  # detections are ignored in motion mode; clock from motion
        m = MotionEvent(
            camera_id="cam",
            seq=seq,
            mono_ts=seq / FPS,
            wall_ts=1e9 + seq / FPS,
            frame_width=W,
            frame_height=H,
            boxes=(),
            changed_fraction=0.0,
        )
        await harness.bus.publish(topics.MOTION.name, m)
    await harness.settle()
    assert [e.kind for e in events(rec, "started")] == ["motion"]
    assert len(events(rec, "ended")) == 1


async def test_zone_change_through_config_update_applies_without_restart(tmp_path: Any) -> None:
    registry = {"tracker": EventTracker}
    EventTracker.name = "tracker"
    from spyoncino.core.config import build_app_model

    model = build_app_model(registry)
    data = {
        "storage": {"root": str(tmp_path)},
        "tracker": {"source": "objects", "warmup_s": 0},
        "cameras": {"cam": {"source": "x.mp4", "enabled": False}},
    }
    service = ConfigService(model, [Layer("test", data)])
    orch = Orchestrator(service, registry)
    await orch.start()
    try:
        h = Harness(orch.bus, orch.executor, tmp_path)
        rec = h.record("event.#")
        snaps = h.record("config.snapshot")
        mod = orch.slots[0].module
        for seq in range(10):
            await feed(h, seq, [det("person", 0.9, (50 + seq, 100, 90 + seq, 250))])
        for seq in range(10, 80):
            await feed(h, seq, [])
        assert len(events(rec, "started")) == 1
        await orch.bus.publish(
            topics.CONFIG_UPDATE.name,
            ConfigUpdate(changes={"cameras": {"cam": {"tracker": {"zones": [EXCLUDE_LEFT]}}}}),
        )
        await orch.bus.drain()
        assert [t for t, _ in snaps] == ["config.snapshot"]
        assert orch.slots[0].module is mod  # reconfigured in place, not restarted
        for seq in range(200, 240):
            await feed(h, seq, [det("person", 0.9, (50 + seq % 20, 100, 90 + seq % 20, 250))])
        await orch.bus.drain()
        assert len(events(rec, "started")) == 1
    finally:
        await orch.stop()


@given(
    x1=st.floats(0.0, 0.9),
    y1=st.floats(0.0, 0.9),
    w=st.floats(0.05, 0.5),
    h=st.floats(0.05, 0.5),
    px=st.floats(0.0, 1.0),
    py=st.floats(0.0, 1.0),
)
def test_point_in_rectangle_polygon_matches_bounds(
    x1: float, y1: float, w: float, h: float, px: float, py: float
) -> None:
    x2, y2 = min(1.0, x1 + w), min(1.0, y1 + h)
    rect = ((x1, y1), (x2, y1), (x2, y2), (x1, y2))
    eps = 1e-9
    if x1 + eps < px < x2 - eps and y1 + eps < py < y2 - eps:
        assert point_in_polygon((px, py), rect)
    elif not (x1 - eps <= px <= x2 + eps and y1 - eps <= py <= y2 + eps):
        assert not point_in_polygon((px, py), rect)


async def test_two_people_walking_together_keep_their_own_tracks(harness: Harness) -> None:
    """A detector that misses one of a pair now and then must not hand that person's track to
    the other: the pair is one activity (one alert) of two objects, which ends once."""
    _, rec = await tracker(harness, update_every_s=0.1)
    for seq in range(40):
        dets = []
        if seq % 3 != 1:  # the detector misses the first walker every third frame
            dets.append(det("person", 0.8, walker(seq, speed=6)))
        if seq >= 4 and seq % 3 != 0:  # and the second one, who joins a moment later
            dets.append(det("person", 0.8, walker(seq, x0=70, speed=6, y=210)))
        await feed(harness, seq, dets)
    for seq in range(40, 160):
        await feed(harness, seq, [])
    await harness.settle()
    assert len(events(rec, "started")) == 1
    assert len(events(rec, "ended")) == 1
    ended = events(rec, "ended")[0]
    assert len(ended.objects) == 2
    for obj in ended.objects:  # each track kept its own person: the two stay apart
        assert not obj.present
    ys = sorted(o.box.y1 for o in ended.objects)
    assert ys == [150, 210]


async def test_activity_gap_joins_people_seconds_apart_and_splits_after_it(
    harness: Harness,
) -> None:
    _, rec = await tracker(harness, activity_gap_s=10.0, warmup_s=0)

    async def walk(start: int) -> None:
        for i in range(20):
            await feed(harness, start + i, [det("person", 0.8, walker(i))])

    await walk(0)
    for seq in range(20, 70):  # 5 s later, someone else: the same activity
        await feed(harness, seq, [])
    await walk(70)
    for seq in range(90, 250):  # 16 s later: a new one
        await feed(harness, seq, [])
    await walk(250)
    await harness.settle()
    started = events(rec, "started")
    assert len(started) == 2
    first_end = next(e for e in events(rec, "ended") if e.event_id == started[0].event_id)
    assert len(first_end.objects) == 2
    assert first_end.ended_at == pytest.approx(1_700_000_008.9)


DRIVEWAY = {
    "name": "driveway",
    "polygon": [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]],
    "alert_labels": ["car"],
}


async def test_severity_car_alerts_only_in_a_zone_asking_for_it(harness: Harness) -> None:
    street = {"name": "street", "polygon": [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]}
    cams = {"cam": {"source": "x.mp4", "tracker": {"zones": [street, DRIVEWAY]}}}
    _, rec = await tracker(harness, cameras=cams, warmup_s=0, update_every_s=0.1)
    for seq in range(10):  # a car passing in the street: a detection
        x = 20 + seq * 10
        await feed(harness, seq, [det("car", 0.9, (x, 200, x + 100, 260))])
    assert {e.severity for e in events(rec)} == {"detection"}
    assert events(rec, "started")[0].zones == ("street",)
    for seq in range(10, 20):  # it turns into the driveway: an alert, said at once
        x = 200 + (seq - 10) * 20
        await feed(harness, seq, [det("car", 0.9, (x, 200, x + 100, 260))])
    await harness.settle()
    escalated = [e for e in events(rec) if e.severity == "alert"]
    assert escalated
    assert escalated[0].phase == "updated"
    assert escalated[0].frame_objects[0].label == "car"
    assert escalated[0].frame_seq >= 13  # the frame it entered the driveway, not the first
    assert len(events(rec, "started")) == 1


async def test_a_person_makes_a_detection_activity_an_alert(harness: Harness) -> None:
    _, rec = await tracker(harness, warmup_s=0)
    for seq in range(10):
        x = 20 + seq * 10
        await feed(harness, seq, [det("car", 0.9, (x, 200, x + 100, 260))])
    assert [e.severity for e in events(rec)] == ["detection"]
    for seq in range(10, 14):
        await feed(harness, seq, [det("person", 0.8, walker(seq, x0=400, speed=0))])
    await harness.settle()
    last = events(rec)[-1]
    assert last.severity == "alert"
    assert last.labels == ("car", "person")
    assert len(events(rec, "started")) == 1


async def test_a_long_activity_is_closed_at_its_maximum_and_goes_on_in_the_next(
    harness: Harness,
) -> None:
    _, rec = await tracker(harness, activity_max_s=10.0, warmup_s=0)
    for seq in range(250):  # 25 s of someone pacing up and down in front of the door
        x = 100 + abs((seq % 40) - 20) * 10
        await feed(harness, seq, [det("person", 0.8, (x, 150, x + 40, 250))])
    for seq in range(250, 400):
        await feed(harness, seq, [])
    await harness.settle()
    started, ended = events(rec, "started"), events(rec, "ended")
    assert len(started) == 3
    assert [e.event_id for e in ended] == [e.event_id for e in started]
    assert started[0].started_at == pytest.approx(1_700_000_000.0)
    for prev, nxt in zip(ended, started[1:], strict=False):
        # back to back: the next one starts where the last was closed, nothing in between
        assert prev.ended_at is not None
        assert 0.0 <= nxt.started_at - prev.ended_at <= 0.2
        assert nxt.started_at - prev.started_at == pytest.approx(10.0, abs=0.2)
    assert {e.severity for e in ended} == {"alert"}
    assert ended[-1].ended_at == pytest.approx(1_700_000_024.9)


async def test_a_long_activity_keeps_a_bounded_number_of_frames_for_its_crops(
    harness: Harness,
) -> None:
    """Each object of an activity kept its best whole frame (4 MB at 720p once decoded) until
    the activity ended: a street with people all day grew the service by ~1 MB/s a camera."""
    mod, rec = await tracker(harness, activity_gap_s=10.0, warmup_s=0)
    seq = 0
    for person in range(14):  # one after the other, all in one activity
        for i in range(20):
            await feed(harness, seq, [det("person", 0.6 + person / 50, walker(i, speed=30))])
            seq += 1
        for _ in range(30):
            await feed(harness, seq, [])
            seq += 1
        frames = {id(f) for ev in _open_activities(mod) for _q, f, _b in ev.crops.values()}
        assert len(frames) <= MAX_CROPS
    for _ in range(160):
        await feed(harness, seq, [])
        seq += 1
    await harness.settle()
    (ended,) = [e for e in events(rec, "ended")]
    assert len(ended.objects) == 14
    assert ended.crops is not None and len(ended.crops) == MAX_CROPS
    # the ones kept are the best pictures: here the most confident, the last people
    kept = {tid for tid, _f, _b in ended.crops}
    best = sorted(ended.objects, key=lambda o: -o.score)[:MAX_CROPS]
    assert kept == {o.track_id for o in best}


def _open_activities(mod: EventTracker) -> list[Any]:
    return [s.activity for s in mod._cstate.values() if s.activity is not None]


def test_a_crop_of_a_decoded_frame_keeps_only_its_pixels_and_draws_the_same_thumbnail() -> None:
    import numpy as np

    from spyoncino.modules.event.snapshot import render_crops
    from spyoncino.modules.event.tracker import crop_of

    frame = make_frame("cam", 1, 0.1, 1280, 720, boxes=((600, 200, 680, 420),))
    image = frame.image  # decoded, as the detector leaves it
    box = Box(x1=600, y1=200, x2=680, y2=420)
    small, moved = crop_of(frame, box)
    assert small.image.base is None and small.image.nbytes < image.nbytes / 20
    assert np.array_equal(
        small.image[moved.y1 : moved.y2, moved.x1 : moved.x2], image[200:420, 600:680]
    )
    assert render_crops([(image, box, "person 80%")], 160, 80) == render_crops(
        [(small.image, moved, "person 80%")], 160, 80
    )
    # not decoded yet: the frame itself (decoding is not for the event loop)
    lazy = make_frame("cam", 2, 0.2)
    assert crop_of(lazy, box) == (lazy, box)


async def test_an_idle_tracker_rests_and_still_ends_an_activity_when_frames_stop(
    harness: Harness,
) -> None:
    """Nothing open: the expire loop sleeps on nothing (it woke 4 times a second on an idle
    box); the first sighting wakes it, and the activity ends on the module's clock once the
    camera goes quiet, with no frame to carry the time."""
    from spyoncino.core.contracts import ModuleContext
    from spyoncino.testing.clock import FakeClock

    clock = FakeClock(mono=0.0)
    app = harness.app(
        {"tracker": EventTracker},
        {"tracker": {"source": "objects"}, "cameras": {"cam": {"source": "x.mp4"}}},
    )
    rec = harness.record("event.#")
    ctx = ModuleContext(
        bus=harness.bus, executor=harness.executor, app=app, instance="tracker", clock=clock
    )
    mod = EventTracker(ctx)
    await mod.configure(app)
    await mod.start()
    harness.modules.append(mod)
    for _ in range(20):
        await asyncio.sleep(0)
    assert clock.sleepers == 0  # resting: no timer while nothing is open
    for seq in range(5):
        await feed(harness, seq, [det("person", 0.8, walker(seq))])
    assert len(events(rec, "started")) == 1
    await clock.sleeping()  # the sighting woke the loop
    for _ in range(80):  # 20 s of the module's clock, no frame at all
        clock.advance(0.25)
        await asyncio.sleep(0)
        await harness.settle()
    assert len(events(rec, "ended")) == 1
    await harness.settle()
    for _ in range(20):
        await asyncio.sleep(0)
    cooldown = mod.core.cfg.cooldown_s
    for _ in range(int(cooldown / 0.25) + 8):  # past the cooldown: nothing left to end
        clock.advance(0.25)
        await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert mod.core.quiet
    assert clock.sleepers == 0  # resting again
