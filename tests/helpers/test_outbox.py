"""The persistent outbox: order, retries, horizon, restarts, idempotency, folding, budgets."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spyoncino.core.bus import Bus, Message
from spyoncino.core.clock import SYSTEM_CLOCK, Clock
from spyoncino.core.contracts import BoundedExecutor
from spyoncino.helpers.outbox import (
    DeliveredUnknown,
    Outbox,
    OutboxItem,
    OutboxSettings,
    PermanentError,
    RetryAfter,
    ServerError,
    TransientError,
)
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.testing.clock import FakeClock
from tests.support.wait import Log, until

FAST = {"min_interval_s": 0.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}


class FakeChannel:
    """A sender that records deliveries and fails on command, like a real server would."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.delivered: Log[tuple[str, str, str, float]] = Log()
        self.attempts: Log[tuple[str, float]] = Log()
        self.failures: list[BaseException] = []
        self.down = False
        self.items: list[OutboxItem] = []

    async def __call__(self, item: OutboxItem) -> str | None:
        now = self.clock.monotonic()
        self.attempts.append((item.key, now))
        if self.down:
            raise TransientError("connection refused")
        if self.failures:
            raise self.failures.pop(0)
        self.delivered.append((item.recipient, item.event_id, item.kind, now))
        self.items.append(item)
        return f"msg-{len(self.delivered)}"


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(workers=2)
    notes: list[AlertNotification] = []

    async def collect(msg: Message[AlertNotification]) -> None:
        notes.append(msg.payload)

    bus.subscribe("notify.#", collect, module="test")
    boxes: list[Outbox] = []

    def make(channel: FakeChannel, clock: Clock = SYSTEM_CLOCK, **settings: Any) -> Outbox:
        box = Outbox(
            clock=clock,
            channel="fake",
            db_path=tmp_path / "events.sqlite3",
            bus=bus,
            executor=executor,
            sender=channel,
            settings=OutboxSettings(**{**FAST, **settings}),
        )
        boxes.append(box)
        return box

    yield {"make": make, "bus": bus, "notes": notes, "db": tmp_path / "events.sqlite3"}
    for b in boxes:
        await b.close()
    await bus.close()
    executor.shutdown()


async def put(
    box: Outbox, event: str, kind: str = "snapshot", to: str = "1", cam: str = "c"
) -> bool:
    return await box.enqueue(recipient=to, event_id=event, camera_id=cam, kind=kind, payload={})


async def test_delivers_in_order_per_recipient_and_reports(env: dict[str, Any]) -> None:
    ch = FakeChannel()
    box = env["make"](ch)
    await box.start()
    for i in range(5):
        await put(box, f"e{i}", to="1")
        await put(box, f"e{i}", to="2")
    await until(lambda: len(ch.delivered) == 10)
    for rid in ("1", "2"):
        assert [d[1] for d in ch.delivered if d[0] == rid] == [f"e{i}" for i in range(5)]
    # each is reported sent once its row says so, just after the delivery
    await until(lambda: [n.status for n in env["notes"]].count("sent") == 10, what="10 sent")
    await env["bus"].drain()
    statuses = [n.status for n in env["notes"]]
    assert statuses.count("queued") == 10
    assert statuses.count("sent") == 10


async def test_the_same_alert_is_stored_once(env: dict[str, Any]) -> None:
    ch = FakeChannel()
    box = env["make"](ch)
    await box.start()
    assert await put(box, "e1")
    assert not await put(box, "e1")
    await ch.delivered.wait_for(1)
    # polled: the sent item leaves the queue once its row is marked, which fires no event
    await until(lambda: box.pending() == 0, what="the sent item recorded")
    assert not await put(box, "e1")  # also after it was sent
    assert box.pending() == 0  # nothing was queued: nothing more can go
    assert len(ch.delivered) == 1
    assert box.stats["duplicates"] == 2


async def test_retry_after_blocks_the_recipient_for_that_long(env: dict[str, Any]) -> None:
    ch = FakeChannel()
    ch.failures.append(RetryAfter(1.0))
    box = env["make"](ch)
    await box.start()
    await put(box, "e1")
    await put(box, "e2")
    await until(lambda: len(ch.delivered) == 2)
    first_try = ch.attempts[0][1]
    assert ch.delivered[0][3] - first_try >= 1.0
    assert [d[1] for d in ch.delivered] == ["e1", "e2"]


async def test_transient_errors_retry_with_backoff_until_the_server_is_back(
    env: dict[str, Any],
) -> None:
    clock = FakeClock()
    ch = FakeChannel(clock)
    ch.down = True
    box = env["make"](ch, clock)
    await box.start()
    for i in range(3):
        await put(box, f"e{i}")
    backoffs = []
    for n in range(1, 6):
        await ch.attempts.wait_for(n)
        await clock.sleeping()  # the attempt failed; the worker waits out its backoff
        assert len(ch.attempts) == n  # backoff, not a busy loop
        due = clock.next_due()
        assert due is not None
        backoffs.append(due)
        clock.advance(due)
    # 0.05 s doubling (0.8-1.2 jitter), capped at 0.2 s (FAST)
    for n, b in enumerate(backoffs):
        nominal = min(0.2, 0.05 * 2**n)
        assert 0.8 * nominal - 1e-9 <= b <= 1.2 * nominal + 1e-9, backoffs
    assert ch.delivered == []
    ch.down = False
    await ch.delivered.wait_for(3)
    assert [d[1] for d in ch.delivered] == ["e0", "e1", "e2"]


async def test_gives_up_after_the_horizon_and_on_permanent_errors(env: dict[str, Any]) -> None:
    ch = FakeChannel()
    ch.failures.append(PermanentError("400 bad request"))
    box = env["make"](ch, horizon_s=1.0)
    await box.start()
    await put(box, "bad")
    await put(box, "ok")
    await until(lambda: len(ch.delivered) == 1)
    assert ch.delivered[0][1] == "ok"
    ch.down = True
    await put(box, "late")
    await until(lambda: box.stats["failed"] == 2, timeout=5.0)
    await env["bus"].drain()
    failed = [n for n in env["notes"] if n.status == "failed"]
    assert [n.event_id for n in failed] == ["bad", "late"]
    assert "after" in (failed[1].error or "")  # gave up, or expired before the next try


async def test_pending_items_survive_a_restart_and_sent_ones_are_not_repeated(
    env: dict[str, Any],
) -> None:
    ch = FakeChannel()
    box = env["make"](ch)
    await box.start()
    await put(box, "e0")
    await until(lambda: len(ch.delivered) == 1)
    ch.down = True
    for i in range(1, 4):
        await put(box, f"e{i}")
    await ch.attempts.wait_for(1, lambda a: "e1" in a[0])  # the outage is under way
    await box.close()  # like a crash: nothing is flushed on purpose

    ch2 = FakeChannel()
    box2 = env["make"](ch2)
    await box2.start()
    await until(lambda: len(ch2.delivered) == 3)
    assert [d[1] for d in ch2.delivered] == ["e1", "e2", "e3"]

    def rows() -> dict[str, int]:
        conn = sqlite3.connect(env["db"])
        found = dict(conn.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status"))
        conn.close()
        return found

    # polled: the rows are marked in SQLite after the send, which fires no event
    await until(lambda: rows() == {"sent": 4}, what="every row marked sent")
    assert box2.pending() == 0
    assert len(ch2.delivered) == 3


async def test_a_new_alert_does_not_wait_for_an_older_follow_up(env: dict[str, Any]) -> None:
    ch = FakeChannel()
    ch.down = True
    box = env["make"](ch)
    await box.start()
    await put(box, "e1", "snapshot")
    await put(box, "e1", "gif")
    await put(box, "e1", "clip")
    await put(box, "e2", "snapshot")
    await ch.attempts.wait_for(1)  # the first try failed: the outage is seen
    ch.down = False
    await until(lambda: len(ch.delivered) == 4)
    assert [(d[1], d[2]) for d in ch.delivered] == [
        ("e1", "snapshot"),
        ("e2", "snapshot"),
        ("e1", "gif"),
        ("e1", "clip"),
    ]


async def test_alerts_older_than_the_horizon_are_not_sent_after_a_restart(
    env: dict[str, Any],
) -> None:
    clock = FakeClock()
    ch = FakeChannel(clock)
    ch.down = True
    box = env["make"](ch, clock, horizon_s=1.0, backoff_initial_s=5.0)
    await box.start()
    await put(box, "old")
    await ch.attempts.wait_for(1)
    await box.close()
    clock.advance(1.1)  # the power is off a little longer than the horizon
    ch2 = FakeChannel(clock)
    box2 = env["make"](ch2, clock, horizon_s=1.0)
    await box2.start()
    await until(lambda: box2.stats["failed"] == 1)
    assert ch2.attempts == []
    await env["bus"].drain()
    assert "expired" in (env["notes"][-1].error or "")


async def test_follow_ups_see_the_result_of_their_alert(env: dict[str, Any]) -> None:
    ch = FakeChannel()
    box = env["make"](ch)
    await box.start()
    await put(box, "e1", "snapshot")
    await put(box, "e1", "gif")
    await until(lambda: len(ch.delivered) == 2)
    assert ch.items[1].related == {"snapshot": "msg-1"}


async def test_far_behind_alerts_fold_into_one_per_camera(env: dict[str, Any]) -> None:
    ch = FakeChannel()
    ch.down = True
    box = env["make"](ch, coalesce_after=4)
    await box.start()
    for i in range(6):
        await put(box, f"a{i}", cam="front")
        await put(box, f"a{i}", "gif", cam="front")
    await put(box, "b0", cam="back")
    await ch.attempts.wait_for(1)  # the outage is seen
    ch.down = False
    await until(lambda: box.pending() == 0)
    delivered = [(d[1], d[2]) for d in ch.delivered]
    # the head item may have been tried before folding; the rest fold into the latest
    # alerts first and in order; the GIF after its own photo
    assert delivered[-3:] == [("a5", "snapshot"), ("b0", "snapshot"), ("a5", "gif")]
    summary = next(i for i in ch.items if i.event_id == "a5" and i.kind == "snapshot")
    assert summary.coalesced + 1 + (len(delivered) - 3) // 2 == 6
    assert box.stats["coalesced"] > 0


async def test_per_minute_cap_spaces_sends(env: dict[str, Any]) -> None:
    clock = FakeClock()
    ch = FakeChannel(clock)
    box = env["make"](ch, clock, per_minute=2)
    await box.start()
    for i in range(3):
        await put(box, f"e{i}")
    await ch.delivered.wait_for(2)
    await clock.sleeping()  # the worker waits...
    assert len(ch.delivered) == 2  # ...the third waits for the minute window
    clock.advance(59.0)
    await clock.sleeping()
    assert len(ch.delivered) == 2  # a second early: still waiting
    clock.advance(1.0)
    await ch.delivered.wait_for(3)
    assert ch.delivered[2][3] - ch.delivered[0][3] == pytest.approx(60.0)


def test_camera_budget_counts_what_it_holds_back() -> None:
    box = Outbox(
        channel="fake",
        db_path=Path("unused"),
        bus=Bus(status_interval=0),
        executor=BoundedExecutor(1),
        sender=FakeChannel(),
        settings=OutboxSettings(camera_budget=2, camera_window_s=10.0),
    )
    assert box.admit("c", now=0.0)
    assert box.admit("c", now=1.0)
    assert not box.admit("c", now=2.0)
    assert not box.admit("c", now=3.0)
    assert box.admit("other", now=3.0)
    assert box.take_over_budget("c") == 2
    assert box.take_over_budget("c") == 0
    assert box.admit("c", now=10.5)


@pytest.mark.parametrize("bad", [{"horizon_s": 0}, {"min_interval_s": -1}, {"nope": 1}])
def test_settings_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OutboxSettings(**bad)


def _notice(event_id: str, camera: str = "c") -> Any:
    from spyoncino.schemas.events import EventNotice

    return EventNotice(
        event_id=event_id,
        camera_id=camera,
        kind="object",
        phase="started",
        labels=("person",),
        top_score=0.9,
        started_at=0.0,
        updated_at=0.0,
    )


def _artifact(event_id: str, kind: str) -> Any:
    from spyoncino.schemas.media import MediaArtifact

    return MediaArtifact(
        event_id=event_id,
        camera_id="c",
        kind=kind,  # type: ignore[arg-type]
        path="/x",
        relpath="x",
        size_bytes=1,
        sha256="0" * 64,
        mime="image/jpeg",
        created_at=0.0,
    )


def test_gate_orders_follow_ups_after_the_photo_and_respects_state() -> None:
    from spyoncino.helpers.outbox import AlertGate
    from spyoncino.schemas.control import ControlState

    gate = AlertGate()
    gate.notice(_notice("e1"))
    assert gate.artifact(_artifact("e1", "gif")) == []  # held until the photo
    out = gate.artifact(_artifact("e1", "snapshot"))
    assert [a.kind for _e, a in out] == ["snapshot", "gif"]
    assert gate.artifact(_artifact("e1", "snapshot")) == []  # a better picture: not again
    assert gate.artifact(_artifact("unknown", "snapshot")) == []
    gate.state = ControlState(armed=False)
    gate.notice(_notice("e2"))
    assert gate.artifact(_artifact("e2", "snapshot")) == []
    assert gate.artifact(_artifact("e2", "clip")) == []
    assert gate.suppressed == 1
    assert gate.last_reason == "disarmed"


def test_gate_hands_out_events_whose_snapshot_never_came_once() -> None:
    from spyoncino.helpers.outbox import AlertGate

    gate = AlertGate()
    gate.notice(_notice("e1"))
    gate.notice(_notice("e2"))
    t0 = time.monotonic()
    assert gate.overdue(5.0, t0 + 1.0) == []
    assert gate.artifact(_artifact("e2", "snapshot"))  # e2 got its picture in time
    assert [e.event_id for e in gate.overdue(5.0, t0 + 6.0)] == ["e1"]
    assert gate.overdue(5.0, t0 + 7.0) == []
    assert gate.artifact(_artifact("e1", "snapshot")) == []  # too late: alerted as text
    assert gate.artifact(_artifact("e1", "gif"))  # but its GIF still follows


async def test_old_delivered_rows_are_pruned_and_pending_ones_kept(env: dict[str, Any]) -> None:
    ch = FakeChannel()
    box = env["make"](ch, keep_sent_s=60.0)
    await box.start()
    await put(box, "done")
    await until(lambda: len(ch.delivered) == 1)
    ch.down = True
    await put(box, "waiting")
    await ch.attempts.wait_for(1, lambda a: "waiting" in a[0])
    await box.close()
    conn = sqlite3.connect(env["db"])
    conn.execute("UPDATE outbox SET created_at = created_at - 3600")
    conn.commit()
    conn.close()
    box2 = env["make"](FakeChannel(), keep_sent_s=60.0, horizon_s=86400.0)
    await box2.start()
    await until(lambda: box2.stats["sent"] == 1)
    conn = sqlite3.connect(env["db"])
    rows = conn.execute("SELECT event_id, status FROM outbox").fetchall()
    conn.close()
    assert rows == [("waiting", "sent")]


async def test_a_poison_item_blocks_the_ones_behind_it_for_one_attempt_at_most(
    env: dict[str, Any],
) -> None:
    """An item that always fails transiently held its recipient's queue for up to 24 h."""

    class Poisoned(FakeChannel):
        async def __call__(self, item: OutboxItem) -> str | None:
            if item.event_id == "poison":
                self.attempts.append((item.key, time.monotonic()))
                raise ServerError("500: this one upsets the server")
            return await super().__call__(item)

    ch = Poisoned()
    box = env["make"](ch, backoff_initial_s=0.5, backoff_max_s=1.0)
    await box.start()
    await put(box, "poison")
    await put(box, "b")
    await put(box, "c")
    await until(lambda: len(ch.delivered) == 2, timeout=3)
    assert [d[1] for d in ch.delivered] == ["b", "c"]
    poison_tries = [a for a in ch.attempts if "poison" in a[0]]
    assert len(poison_tries) == 1  # b and c went within the poison's first backoff
    # a real outage still keeps the order: nothing overtakes while everything fails
    ch.down = True
    tried = len(ch.attempts)
    for e in ("d", "e", "f"):
        await put(box, e)
    await ch.attempts.wait_for(tried + 1)  # the head failed: an outage
    ch.down = False
    await until(lambda: len(ch.delivered) == 5, timeout=5)
    assert [d[1] for d in ch.delivered] == ["b", "c", "d", "e", "f"]


async def test_follow_ups_of_folded_alerts_are_folded_too(env: dict[str, Any]) -> None:
    """After an outage the GIFs of folded events arrived later and went out on their own."""
    ch = FakeChannel()
    ch.down = True
    box = env["make"](ch, coalesce_after=4)
    await box.start()
    for i in range(6):
        await put(box, f"a{i}", cam="front")
    await until(lambda: box.stats["coalesced"] > 0)
    for i in range(6):  # the GIFs are encoded after their photos were folded
        await put(box, f"a{i}", "gif", cam="front")
    ch.down = False
    await until(lambda: box.pending() == 0)
    photos = {d[1] for d in ch.delivered if d[2] == "snapshot"}
    gifs = [d[1] for d in ch.delivered if d[2] == "gif"]
    assert "a5" in photos and "a5" in gifs
    assert set(gifs) <= photos, (gifs, photos)
    conn = sqlite3.connect(env["db"])
    folded = conn.execute(
        "SELECT COUNT(*) FROM outbox WHERE kind='gif' AND status='coalesced'"
    ).fetchone()[0]
    conn.close()
    assert folded == 6 - len(gifs)


async def test_an_unreadable_success_answer_is_not_sent_again(env: dict[str, Any]) -> None:
    """A 200 whose body could not be parsed was retried as transient: the file went 5 times."""
    ch = FakeChannel()
    ch.failures.append(DeliveredUnknown("200 OK, but the answer could not be read"))
    box = env["make"](ch)
    await box.start()
    await put(box, "e1")
    await until(lambda: any(n.status == "sent" for n in env["notes"]))
    await put(box, "e2")
    await until(lambda: len(ch.delivered) == 1)
    assert [a[0].split(":")[1] for a in ch.attempts] == ["e1", "e2"]  # e1 once, no re-upload
    assert box.stats["delivered_unknown"] == 1


def test_gate_pushes_nothing_of_a_detection_and_its_photo_once_it_becomes_an_alert() -> None:
    from spyoncino.helpers.outbox import AlertGate

    gate = AlertGate()
    det = _notice("a1").model_copy(update={"severity": "detection"})
    gate.notice(det)
    t0 = time.monotonic()
    assert gate.artifact(_artifact("a1", "snapshot")) == []  # a detection: kept, not sent
    assert gate.artifact(_artifact("a1", "gif")) == []
    assert gate.overdue(5.0, t0 + 60.0) == []  # and never overdue
    assert not gate.alerted("a1")
    # a person joins: an alert now; the snapshot made at that moment is its photo
    gate.notice(det.model_copy(update={"phase": "updated", "severity": "alert"}))
    out = gate.artifact(_artifact("a1", "snapshot"))
    assert [a.kind for _e, a in out] == ["snapshot", "gif"]
    assert gate.alerted("a1")
    # had that snapshot not come, the one kept from before goes when it is overdue
    gate.notice(_notice("a2").model_copy(update={"severity": "detection"}))
    gate.artifact(_artifact("a2", "snapshot"))
    gate.notice(_notice("a2").model_copy(update={"phase": "updated", "severity": "alert"}))
    (due,) = gate.overdue(5.0, time.monotonic() + 6.0)
    assert due.event_id == "a2"
    assert [a.kind for a in gate.take_held("a2")] == ["snapshot"]


async def test_a_stop_lets_a_send_in_flight_finish_and_records_it(env: dict[str, Any]) -> None:
    """A stop cancelled the send in flight: when the server had already taken the message,
    the row stayed pending and the restart sent it a second time."""
    taken = asyncio.Event()
    answer = asyncio.Event()

    class SlowServer(FakeChannel):
        async def __call__(self, item: OutboxItem) -> str | None:
            taken.set()  # the server has the upload; its answer is on the way
            await answer.wait()
            return await super().__call__(item)

    ch = SlowServer()
    box = env["make"](ch)
    await box.start()
    await put(box, "e0")
    await taken.wait()
    closing = asyncio.ensure_future(box.close())
    # polled: close() fires no event of its own when it begins waiting for the send
    await until(lambda: box._closing, what="close has begun")
    answer.set()
    await closing
    assert len(ch.delivered) == 1
    conn = sqlite3.connect(env["db"])
    rows = dict(conn.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status").fetchall())
    conn.close()
    assert rows == {"sent": 1}  # the next start has nothing to send again


def test_the_gate_keeps_an_events_text_not_its_frames() -> None:
    """The gate remembers its last 512 events; each notice carried the activity's best frame
    and the frames of its crops (megabytes each at 720p), so every activity grew the service."""
    import gc
    import weakref

    import numpy as np

    from spyoncino.helpers.outbox import AlertGate
    from spyoncino.schemas.frames import Frame

    pixels = np.zeros((48, 64), np.uint8)
    gone = weakref.ref(pixels)
    frame = Frame("c", 1, 0.0, 0.0, 64, 48, pixels)
    gate = AlertGate(("object",))
    started = _notice("e1").model_copy(update={"frame": frame})
    ended = started.model_copy(update={"phase": "ended", "crops": ((1, frame, None),)})
    gate.notice(started)
    gate.notice(ended)
    del frame, pixels, started, ended
    gc.collect()
    assert gone() is None
    assert gate.alerted("e1") is False  # it still knows the event


async def test_alerts_of_four_cameras_at_once_go_out_in_one_burst_then_are_paced(
    env: dict[str, Any],
) -> None:
    """Issue #20: four cameras alerting together waited 0, 1, 2 and 3 s for their photos
    (one send a second). A burst of four goes at once; the fifth waits for min_interval_s."""
    clock = FakeClock()
    ch = FakeChannel(clock)
    box = env["make"](ch, clock, min_interval_s=1.0, burst=4)
    await box.start()
    for i in range(5):
        await put(box, f"e{i}", cam=f"c{i}")
    await ch.delivered.wait_for(4)
    await clock.sleeping()
    assert len(ch.delivered) == 4
    assert {d[3] for d in ch.delivered} == {ch.delivered[0][3]}  # no time passed
    clock.advance(1.0)
    await ch.delivered.wait_for(5)
    assert ch.delivered[4][3] - ch.delivered[0][3] == pytest.approx(1.0)


async def test_a_follow_up_leaves_the_last_send_of_the_burst_for_an_alert(
    env: dict[str, Any],
) -> None:
    """A photo right after an animation and a caption edit goes out at once: follow-ups never
    take the last send of the burst."""
    clock = FakeClock()
    ch = FakeChannel(clock)
    box = env["make"](ch, clock, min_interval_s=1.0, burst=2)
    await box.start()
    await put(box, "e0", "snapshot")
    await ch.delivered.wait_for(1)
    await put(box, "e0", "gif")
    await clock.sleeping()
    assert len(ch.delivered) == 1  # the follow-up waits: one send left is for alerts
    await put(box, "e1", "snapshot")
    await ch.delivered.wait_for(2)
    assert ch.delivered[1][1:3] == ("e1", "snapshot")
    assert ch.delivered[1][3] == ch.delivered[0][3]  # at once
    clock.advance(2.0)
    await ch.delivered.wait_for(3)
    assert ch.delivered[2][1:3] == ("e0", "gif")
