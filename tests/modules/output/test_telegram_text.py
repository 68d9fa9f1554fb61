"""What the bot says and how it reads durations."""

from __future__ import annotations

import math
import time
from datetime import time as dtime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spyoncino.modules.output import _telegram_text as text
from spyoncino.schemas.control import MAX_MUTE_S, ControlState
from spyoncino.schemas.index import EventsPage


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("15min", 900),
        ("1h", 3600),
        ("2h30m", 9000),
        ("1d", 86400),
        ("30", 1800),
        ("1.5h", 5400),
        ("10 sec", 10),
    ],
)
def test_durations(raw: str, seconds: float) -> None:
    assert text.parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "soon", "1h30", "h", "-5m", "0m", "1x"])
def test_bad_durations(raw: str) -> None:
    with pytest.raises(ValueError):
        text.parse_duration(raw)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(45, "45 s"), (60, "1 min"), (3600, "1 h"), (5400, "1 h 30 min"), (90000, "1 d 1 h")],
)
def test_format_duration(seconds: float, shown: str) -> None:
    assert text.format_duration(seconds) == shown


def test_quiet_hours_wrap_midnight() -> None:
    start, end = dtime(22, 30), dtime(7, 0)
    assert text.in_quiet_hours(dtime(23, 0), start, end)
    assert text.in_quiet_hours(dtime(6, 59), start, end)
    assert not text.in_quiet_hours(dtime(7, 0), start, end)
    assert not text.in_quiet_hours(dtime(12, 0), start, end)
    assert text.in_quiet_hours(dtime(13, 0), dtime(12, 0), dtime(14, 0))
    assert not text.in_quiet_hours(dtime(13, 0), None, end)


def test_caption_links_to_the_status_page() -> None:
    info = text.AlertInfo("ev-1", "door", "Door", "object", ("person", "dog"), 0.5, (), 0.0)
    cap = text.caption(info, "UTC", "http://box.local:8080/")
    assert cap.splitlines() == [
        "person, dog \u00b7 Door \u00b7 00:00",
        "1970-01-01",
        "http://box.local:8080/events/ev-1",
    ]
    motion = text.AlertInfo("ev-2", "door", "Door", "motion", (), 0.0, ("porch",), 0.0)
    assert text.caption(motion, "UTC", None).splitlines() == [
        "motion \u00b7 Door \u00b7 00:00",
        "1970-01-01",
        "zone: porch",
    ]


def test_an_activity_caption_counts_its_objects_and_spans_its_minutes() -> None:
    info = text.AlertInfo(
        "ev-3",
        "door",
        "front_door",
        "object",
        ("person", "car"),
        0.9,
        (),
        50_520.0,  # 14:02
        counts=(("person", 2), ("car", 1)),
        until=50_580.0,  # 14:03
    )
    assert text.caption(info, "UTC", None).splitlines()[0] == (
        "2 people, 1 car \u00b7 front_door \u00b7 14:02\u201314:03"
    )
    one = text.AlertInfo(
        "ev-4",
        "door",
        "Door",
        "object",
        ("person",),
        0.9,
        (),
        50_520.0,
        counts=(("person", 1),),
        until=50_530.0,
    )
    assert text.caption(one, "UTC", None).splitlines()[0] == "1 person \u00b7 Door \u00b7 14:02"


def test_state_text_lists_live_mutes_only() -> None:
    now = time.time()
    state = ControlState(armed=False, muted_until={"door": now + 600, "*": now + 60, "x": now - 1})
    lines = text.state_text(state, now, "UTC", {"door": "Door"}).splitlines()
    assert lines[0].startswith("Disarmed")
    assert any(line.startswith("Muted all cameras for 1 min") for line in lines)
    assert any(line.startswith("Muted Door for 10 min") for line in lines)
    assert len(lines) == 3


def test_no_events_recorded_yet() -> None:
    assert text.event_dicts(EventsPage()) == []
    assert text.events_text([], {}, None) == "No events recorded yet."
    assert text.events_text([], {}, None, filtered=True) == "No events match."


def test_disk_free_of_a_folder_not_made_yet(tmp_path: Path) -> None:
    free = text.disk_free(tmp_path / "not" / "yet")
    assert free is not None
    assert 0 < free[0] <= free[1]


@settings(max_examples=3000, deadline=None, derandomize=True, database=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.from_regex(r"\A[0-9.]{0,400}(s|m|h|d|min|sec)?\Z"),
        st.from_regex(r"\A([0-9]{1,12}(\.[0-9]{1,3})?(s|m|h|d)){1,6}\Z"),
    )
)
def test_any_mute_duration_is_bounded_or_refused(raw: str) -> None:
    """Whatever a chat sends after /mute: a finite duration within 7 days, or a ValueError."""
    try:
        seconds = text.parse_duration(raw)
    except ValueError as e:
        error = str(e)
    else:
        assert math.isfinite(seconds) and 0 < seconds <= MAX_MUTE_S
        assert text.format_duration(seconds)
        return
    assert len(error) < 260  # the reply quotes the input: never a whole 400-digit one


def test_events_command_filters_activities_by_severity_camera_label_zone_and_time(
    tmp_path: Path,
) -> None:
    from spyoncino.modules.storage.index.db import connect, upsert_event
    from spyoncino.modules.storage.index.queries import connect_ro, list_events
    from spyoncino.schemas.events import EventNotice, TrackedObject
    from spyoncino.schemas.frames import Box

    box = Box(x1=1, y1=1, x2=9, y2=9)
    person = TrackedObject(track_id=1, label="person", score=0.9, box=box)
    car = TrackedObject(track_id=2, label="car", score=0.8, box=box)
    now = time.time()
    db = tmp_path / "events.sqlite3"
    conn = connect(db)
    for event_id, cam, objs, severity, zones, age in (
        (
            "a1",
            "door",
            (person, person.model_copy(update={"track_id": 3}), car),
            "alert",
            ("porch",),
            60,
        ),
        ("d1", "door", (car,), "detection", (), 120),
        ("a2", "yard", (person,), "alert", (), 3 * 3600),
    ):
        upsert_event(
            conn,
            EventNotice(
                event_id=event_id,
                camera_id=cam,
                kind="object",
                phase="ended",
                labels=tuple(dict.fromkeys(o.label for o in objs)),
                top_score=0.9,
                started_at=now - age,
                updated_at=now - age,
                objects=objs,
                severity=severity,  # type: ignore[arg-type]
                zones=zones,
            ),
        )
    conn.close()
    names = {"door": "Front door", "yard": "Yard"}
    reader = connect_ro(db)  # what storage/index answers the bot's request with

    def read(limit: int, flt: text.EventFilter | None = None) -> list[dict[str, object]]:
        return text.event_dicts(list_events(reader, text.events_request(limit, flt)))

    def ids(*args: str) -> list[str]:
        flt = text.parse_events_args(args, names, now, "UTC")
        assert isinstance(flt, text.EventFilter), flt
        return [str(r["id"]) for r in read(flt.limit, flt)]

    assert ids() == ["a1", "d1", "a2"]
    assert ids("alerts") == ["a1", "a2"]
    assert ids("detections") == ["d1"]
    assert ids("front", "door") == []  # "front" alone is a label, not half a name
    assert ids("door") == ["a1", "d1"]
    assert ids("yard") == ["a2"]
    assert ids("car") == ["a1", "d1"]
    assert ids("zone:porch") == ["a1"]
    assert ids("1h") == ["a1", "d1"]
    assert ids("1") == ["a1"]
    assert isinstance(text.parse_events_args(["%%"], names, now, None), str)
    rows = read(5)
    lines = text.events_text(rows, names, "UTC").splitlines()
    assert lines[1].endswith("Front door: 2 people, 1 car 90%")
    assert lines[2].endswith("Front door: 1 car 90% (detection)")
