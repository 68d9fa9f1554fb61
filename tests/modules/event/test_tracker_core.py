"""The tracker's pure core, driven directly: observations and times in, intents out.

No bus, no event loop, no clock: every call is handed its time, so each case states exactly
when things happen.
"""

from __future__ import annotations

from spyoncino.modules.event._tracker_core import Intent, Notice, Parked, TrackerCore
from spyoncino.modules.event.tracker import Camera, Config, Zone
from spyoncino.schemas.frames import Box

W, H = 640, 360
FPS = 10.0
WALL0 = 1_700_000_000.0


def box(x: int, y: int = 150, w: int = 40, h: int = 100) -> Box:
    return Box(x1=x, y1=y, x2=x + w, y2=y + h)


def see(
    core: TrackerCore,
    seq: int,
    dets: list[tuple[str, float, Box]],
    camera: str = "cam",
    now: float | None = None,
) -> list[Intent]:
    t = seq / FPS
    return core.observe(camera, t, WALL0 + t, W, H, seq, dets, None, now=t if now is None else now)


def notices(intents: list[Intent], phase: str | None = None) -> list[Notice]:
    return [i for i in intents if isinstance(i, Notice) and (phase is None or i.phase == phase)]


def walk(core: TrackerCore, seqs: range, label: str = "person", x0: int = 20) -> list[Intent]:
    out: list[Intent] = []
    for s in seqs:
        out += see(core, s, [(label, 0.9, box(x0 + 15 * (s - seqs.start)))])
    return out


def test_a_person_is_confirmed_on_the_second_sighting_and_the_activity_opens_then() -> None:
    core = TrackerCore(Config(source="objects"))
    assert see(core, 0, [("person", 0.9, box(20))]) == []  # one sighting: not yet
    started = notices(see(core, 1, [("person", 0.9, box(35))]), "started")
    assert len(started) == 1
    n = started[0].payload
    assert n.severity == "alert" and n.labels == ("person",)
    # the activity starts where the person was first seen, not where it was confirmed
    assert n.started_at == WALL0 + 0.0
    assert core.events_started == 1


def test_the_activity_closes_activity_gap_s_after_the_last_sighting_by_the_clock_alone() -> None:
    core = TrackerCore(Config(source="objects", activity_gap_s=5.0))
    walk(core, range(0, 10))  # last seen at 0.9 s (frame clock and module clock agree)
    # no more frames: only the module's clock moves on
    assert notices(core.expire(now=0.9 + 4.9)) == []
    ended = notices(core.expire(now=0.9 + 5.05), "ended")
    assert len(ended) == 1
    assert ended[0].payload.ended_at == WALL0 + 0.9  # the last sighting, not the expiry
    assert core.open_activities == 0


def test_updates_are_rate_limited_by_update_every_s() -> None:
    core = TrackerCore(Config(source="objects", update_every_s=2.0))
    out = walk(core, range(0, 50))  # 5 s of one person walking
    assert len(notices(out, "started")) == 1
    updates = notices(out, "updated")
    assert 1 <= len(updates) <= 3  # at most one per 2 s after the start


def test_an_activity_longer_than_activity_max_s_is_split_and_goes_on_at_once() -> None:
    core = TrackerCore(Config(source="objects", activity_max_s=5.0, activity_gap_s=10.0))
    out: list[Intent] = []
    for s in range(0, 80):  # 8 s of someone always in view, pacing up and down
        x = 20 + 15 * (s % 30) if (s // 30) % 2 == 0 else 20 + 15 * (29 - s % 30)
        out += see(core, s, [("person", 0.9, box(x))])
    started, ended = notices(out, "started"), notices(out, "ended")
    assert len(ended) == 1 and len(started) == 2
    first, second = started[0].payload, started[1].payload
    assert first.event_id != second.event_id
    # the second starts where the first was closed: no moment falls between the two
    assert abs(second.started_at - (WALL0 + 5.0)) <= 0.2
    assert out.index(ended[0]) < out.index(started[1])


def test_a_car_is_a_detection_until_a_person_joins_which_says_so_at_once() -> None:
    core = TrackerCore(Config(source="objects"))
    out: list[Intent] = []
    for s in range(0, 4):
        out += see(core, s, [("car", 0.8, box(100 + 20 * s, 200, 120, 80))])
    started = notices(out, "started")
    assert [n.payload.severity for n in started] == ["detection"]
    more: list[Intent] = []
    for s in range(4, 7):
        car = ("car", 0.8, box(100 + 20 * s, 200, 120, 80))
        more += see(core, s, [car, ("person", 0.9, box(400 + 15 * s, 100))])
    updated = notices(more, "updated")
    assert updated and updated[0].payload.severity == "alert"
    assert set(updated[0].payload.labels) == {"car", "person"}


def test_an_exclude_zone_silences_and_an_include_zone_is_named() -> None:
    left = Zone(name="left", polygon=((0, 0), (0.5, 0), (0.5, 1), (0, 1)), mode="exclude")
    right = Zone(name="path", polygon=((0.5, 0), (1, 0), (1, 1), (0.5, 1)))
    core = TrackerCore(Config(source="objects"), {"cam": Camera(zones=(left, right))})
    assert notices(walk(core, range(0, 5), x0=20)) == []  # in the excluded half
    started = notices(walk(core, range(10, 15), x0=400), "started")
    assert len(started) == 1 and started[0].payload.zones == ("path",)


def test_a_car_that_stays_put_leaves_its_activity_as_parked() -> None:
    core = TrackerCore(Config(source="objects", stationary_after_s=2.0, warmup_s=0.0))
    out: list[Intent] = []
    for s in range(0, 40):
        x = 100 + min(s, 5) * 30  # drives in, then stops
        out += see(core, s, [("car", 0.8, box(x, 200, 120, 80))])
    parked = [i for i in out if isinstance(i, Parked)]
    assert parked and {p.label for p in parked} == {"car"}
    assert parked[0].event_id == notices(out, "started")[0].payload.event_id
    assert not [i for i in out[out.index(parked[-1]) :] if isinstance(i, Notice)]


def test_close_all_ends_the_open_activities() -> None:
    core = TrackerCore(Config(source="objects"))
    walk(core, range(0, 5))
    core.observe("other", 0.0, WALL0, W, H, 0, [("person", 0.9, box(20))], None, now=0.0)
    core.observe("other", 0.1, WALL0 + 0.1, W, H, 1, [("person", 0.9, box(35))], None, now=0.1)
    ended = notices(core.close_all(now=0.5), "ended")
    assert {n.payload.camera_id for n in ended} == {"cam", "other"}
    assert core.close_all(now=0.6) == []


def test_tick_moves_a_quiet_camera_s_frame_clock_so_its_activity_ends_in_a_replay() -> None:
    """Objects mode: motion frames carry no detections but keep time; a fast replay ends its
    activities by the frames' clock even though no module time passed."""
    core = TrackerCore(Config(source="objects", activity_gap_s=2.0))
    walk(core, range(0, 5))  # last seen at 0.4 s
    out: list[Intent] = []
    for s in range(5, 30):
        out += core.tick("cam", s / FPS, now=0.4)  # the replay runs far faster than real time
    ended = notices(out, "ended")
    assert len(ended) == 1
    assert ended[0].payload.ended_at == WALL0 + 0.4
