from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import structlog

from spyoncino.core.bus import Bus, Message, Topic, match, validate_pattern
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Frame
from spyoncino.schemas.status import BusStatus
from spyoncino.testing.clock import FakeClock
from tests.support.wait import Log, until


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("camera.*.frame", "camera.front.frame", True),
        ("camera.*.frame", "camera.front.back.frame", False),
        ("camera.*.frame", "camera.front.luma", False),
        ("event.#", "event.object.started", True),
        ("event.#", "event", True),
        ("event.*.started", "event.motion.started", True),
        ("event.*.started", "event.motion.ended", False),
        ("status.bus", "status.bus", True),
        ("status.bus", "status.health", False),
        ("*.*", "a.b", True),
        ("*.*", "a", False),
    ],
)
def test_pattern_matching(pattern: str, topic: str, expected: bool) -> None:
    assert match(pattern, topic) is expected


def test_hash_must_be_last_segment() -> None:
    with pytest.raises(ValueError, match="last segment"):
        validate_pattern("event.#.started")
    with pytest.raises(ValueError, match="empty segment"):
        validate_pattern("event..started")


def test_topic_templates() -> None:
    t = Topic("camera.{camera}.frame", Frame)
    assert t.at(camera="front") == "camera.front.frame"
    assert t.pattern() == "camera.*.frame"
    assert t.pattern(camera="back") == "camera.back.frame"
    with pytest.raises(ValueError, match="placeholders"):
        _ = t.name


def test_a_topic_is_its_name_and_knows_its_payload() -> None:
    import pickle

    front = topics.FRAME.at(camera="front")
    assert front == "camera.front.frame" and hash(front) == hash("camera.front.frame")
    assert front.payload is Frame and front.template == "camera.{camera}.frame"
    assert f"{front}" == "camera.front.frame"
    assert pickle.loads(pickle.dumps(front)).payload is Frame  # noqa: S301 (our own bytes)
    with pytest.raises(AttributeError):
        front.payload = int  # type: ignore[misc]


async def test_a_wrong_payload_raises_naming_the_topic() -> None:
    bus = Bus(status_interval=0, check_payloads=True)
    with pytest.raises(TypeError, match=re.escape("'process.motion.detected' must be MotionEvent")):
        await bus.publish(topics.MOTION, "not an event")  # type: ignore[arg-type]
    # a plain string of one of our families is checked against that family's payload
    with pytest.raises(TypeError, match=re.escape("'camera.front.frame' must be Frame, got int")):
        await bus.publish("camera.front.frame", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=re.escape("status.bus")):
        bus.publish_nowait(topics.BUS_STATUS, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="placeholders"):
        await bus.publish(topics.FRAME, 3)  # type: ignore[arg-type]
    await bus.publish("third.party.topic", 3)  # type: ignore[arg-type]  # not ours: unchecked
    await bus.close()


async def test_payload_checks_are_off_in_service_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SPYONCINO_CHECK_PAYLOADS", raising=False)
    bus = Bus(status_interval=0)
    await bus.publish(topics.MOTION, "unchecked")  # type: ignore[arg-type]
    await bus.close()
    monkeypatch.setenv("SPYONCINO_CHECK_PAYLOADS", "1")
    assert Bus(status_interval=0).check_payloads


async def test_subscribing_to_a_family_means_its_pattern() -> None:
    bus = Bus(status_interval=0, check_payloads=False)
    got: list[str] = []

    async def handler(msg: Message[Frame]) -> None:
        got.append(msg.topic)

    bus.subscribe(topics.NOTIFY, handler)
    await bus.publish("notify.telegram.sent", None)  # type: ignore[arg-type]
    await bus.drain(timeout=1)
    await bus.close()
    assert got == ["notify.telegram.sent"]


async def test_order_is_kept_per_subscription() -> None:
    bus = Bus(status_interval=0)
    got: list[int] = []

    async def handler(msg: Message[int]) -> None:
        got.append(msg.payload)

    bus.subscribe("n.*", handler, policy="block", maxsize=4)
    for i in range(100):
        await bus.publish(f"n.{i % 3}", i)
    assert await bus.drain(timeout=2)
    assert got == list(range(100))
    await bus.close()


async def test_latest_policy_keeps_newest_under_slow_subscriber() -> None:
    bus = Bus(status_interval=0)
    seen: Log[int] = Log()
    release = asyncio.Event()

    async def slow(msg: Message[int]) -> None:
        seen.append(msg.payload)
        await release.wait()

    bus.subscribe("frames", slow, policy="latest", maxsize=1, module="slow")
    await bus.publish("frames", 0)
    await seen.wait_for(1)  # the handler is now busy with 0
    for i in range(1, 50):
        await bus.publish("frames", i)  # never blocks the publisher
    release.set()
    assert await bus.drain(timeout=2)
    assert seen == [0, 49]
    stats = bus.status().subscriptions[0]
    assert stats.dropped == 48
    assert stats.delivered == 2
    await bus.close()


async def test_block_policy_slows_publisher_and_loses_nothing() -> None:
    bus = Bus(status_interval=0)
    seen: list[int] = []
    release = asyncio.Event()
    published: list[int] = []

    async def slow(msg: Message[int]) -> None:
        await release.wait()
        seen.append(msg.payload)

    async def publisher() -> None:
        for i in range(20):
            await bus.publish("events", i)
            published.append(i)

    bus.subscribe("events", slow, policy="block", maxsize=2)
    task = asyncio.create_task(publisher())
    # polled: a full queue fires no event; the handler holds 0, the queue 1 and 2
    await until(lambda: bus.status().subscriptions[0].depth == 2, what="queue full")
    assert published == [0, 1, 2]  # the publisher waits for room for 3: it is slowed...
    assert not task.done()
    release.set()
    await task
    assert await bus.drain(timeout=5)
    assert seen == list(range(20))  # ...and nothing is lost
    assert bus.status().subscriptions[0].dropped == 0
    await bus.close()


async def test_drop_oldest_keeps_a_bounded_history() -> None:
    bus = Bus(status_interval=0)
    seen: list[int] = []
    gate = asyncio.Event()
    busy = asyncio.Event()

    async def handler(msg: Message[int]) -> None:
        busy.set()
        await gate.wait()
        seen.append(msg.payload)

    bus.subscribe("t", handler, policy="drop_oldest", maxsize=3)
    await bus.publish("t", 0)
    await busy.wait()  # the handler holds 0
    for i in range(1, 10):
        await bus.publish("t", i)
    gate.set()
    assert await bus.drain(timeout=2)
    assert seen == [0, 7, 8, 9]
    assert bus.status().subscriptions[0].dropped == 6
    await bus.close()


async def test_raising_handler_does_not_affect_publisher_or_others() -> None:
    bus = Bus(status_interval=0)
    good: list[int] = []

    async def bad(msg: Message[int]) -> None:
        raise RuntimeError("boom")

    async def ok(msg: Message[int]) -> None:
        good.append(msg.payload)

    bus.subscribe("x", bad, module="broken")
    bus.subscribe("x", ok, module="fine")
    with structlog.testing.capture_logs() as logs:
        for i in range(5):
            await bus.publish("x", i)  # must not raise
        assert await bus.drain(timeout=2)
    assert good == [0, 1, 2, 3, 4]
    errors = [e for e in logs if e["event"] == "bus_handler_error"]
    assert len(errors) == 5
    assert errors[0]["subscriber"] == "broken" and errors[0]["topic"] == "x"
    status = bus.status()
    broken = next(s for s in status.subscriptions if s.module == "broken")
    assert broken.errors == 5
    assert status.topics[0].handler_errors == 5
    await bus.close()


async def test_telemetry_matches_what_happened() -> None:
    bus = Bus(status_interval=0.05, default_maxsize=8, high_watermark=0.5)
    reports: Log[BusStatus] = Log()
    gate = asyncio.Event()

    async def collect(msg: Message[BusStatus]) -> None:
        reports.append(msg.payload)

    async def stuck(msg: Message[int]) -> None:
        await gate.wait()

    bus.subscribe("status.bus", collect, module="collector")
    bus.subscribe("work.item", stuck, policy="block", maxsize=8, module="worker")
    with structlog.testing.capture_logs() as logs:
        for i in range(6):
            await bus.publish("work.item", i)
    bus.start_telemetry()
    last = (await reports.wait_for(1))[-1]
    topic = next(t for t in last.topics if t.topic == "work.item")
    assert topic.published == 6
    worker = next(s for s in last.subscriptions if s.module == "worker")
    assert worker.depth == 5  # one is being handled
    assert worker.above_high_watermark
    assert any("worker" in w for w in last.warnings)
    assert any(e["event"] == "bus_high_watermark" for e in logs)
    gate.set()
    await bus.drain(timeout=2, exclude=("status.#",))
    assert bus.status().subscriptions[1].delivered == 6
    await bus.close()


async def test_lag_is_measured() -> None:
    clock = FakeClock()
    bus = Bus(status_interval=0, clock=clock)
    gate = asyncio.Event()
    busy = asyncio.Event()

    async def handler(msg: Message[int]) -> None:
        busy.set()
        await gate.wait()

    bus.subscribe("t", handler)
    await bus.publish("t", 1)
    await bus.publish("t", 2)
    await busy.wait()  # 1 is delivered at once; 2 waits in the queue
    clock.advance(0.05)
    gate.set()
    await bus.drain(timeout=2)
    stats = bus.status().subscriptions[0]
    assert stats.lag_ms_max == pytest.approx(50.0)
    assert stats.lag_ms == pytest.approx(50.0)
    await bus.close()


async def test_unsubscribe_stops_delivery() -> None:
    bus = Bus(status_interval=0)
    got: list[int] = []

    async def h(msg: Message[int]) -> None:
        got.append(msg.payload)

    unsub = bus.subscribe("t", h)
    await bus.publish("t", 1)
    await bus.drain(timeout=1)
    unsub()
    unsub()  # idempotent
    await bus.publish("t", 2)
    await bus.drain(timeout=1)
    assert got == [1]
    assert not bus.has_subscribers("t")
    await bus.close()


async def test_publish_nowait_counts_refusals() -> None:
    bus = Bus(status_interval=0)
    gate = asyncio.Event()

    busy = asyncio.Event()

    async def h(msg: Message[int]) -> None:
        busy.set()
        await gate.wait()

    bus.subscribe("t", h, policy="block", maxsize=1)
    assert bus.publish_nowait("t", 1) == 0
    await busy.wait()  # the handler holds 1: the queue is empty again
    assert bus.publish_nowait("t", 2) == 0
    assert bus.publish_nowait("t", 3) == 1
    gate.set()
    await bus.close()


async def test_a_full_block_queue_delays_only_its_own_subscriber() -> None:
    """One stuck subscriber must not hold a message back from the others (head of line)."""
    bus = Bus(status_interval=0)
    release = asyncio.Event()
    fast_got: list[int] = []
    fast_saw_3 = asyncio.Event()
    slow_busy = asyncio.Event()

    async def slow(msg: Message[int]) -> None:
        slow_busy.set()
        await release.wait()

    async def fast(msg: Message[int]) -> None:
        fast_got.append(msg.payload)
        if msg.payload == 3:
            fast_saw_3.set()

    bus.subscribe("t", slow, policy="block", maxsize=1, module="slow")  # routed first
    bus.subscribe("t", fast, policy="block", maxsize=8, module="fast")
    await bus.publish("t", 1)  # slow takes it into its handler and sticks there
    await slow_busy.wait()
    await bus.publish("t", 2)  # fills slow's queue
    publisher = asyncio.create_task(bus.publish("t", 3))  # must wait for slow...
    await asyncio.wait_for(fast_saw_3.wait(), 2)  # ...but fast has it already
    assert not publisher.done()  # the publisher is still held back by slow: nothing lost
    assert fast_got == [1, 2, 3]
    release.set()
    await asyncio.wait_for(publisher, 2)
    await bus.close()


async def test_after_unsubscribe_returns_the_handler_is_never_called_again() -> None:
    bus = Bus(status_interval=0)
    entered, release = asyncio.Event(), asyncio.Event()
    got: list[int] = []

    async def handler(msg: Message[int]) -> None:
        got.append(msg.payload)
        entered.set()
        await release.wait()

    unsubscribe = bus.subscribe("t", handler, policy="block", maxsize=16, module="m")
    for i in range(5):
        await bus.publish("t", i)
    await asyncio.wait_for(entered.wait(), 2)  # message 0 is being handled, 1-4 queued
    unsubscribe()
    release.set()
    await bus.drain(timeout=1)
    await bus.close()
    assert got == [0]


def test_the_payload_package_is_a_leaf() -> None:
    """schemas imports nothing of ours: a client can use the payloads without the runtime."""
    import subprocess
    import sys

    code = (
        "import sys, spyoncino.schemas.topics\n"
        "print(sorted(m for m in sys.modules if m.startswith('spyoncino.')"
        " and not m.startswith('spyoncino.schemas')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_one_subscription_on_two_families_keeps_publish_order() -> None:
    """The alert gate needs an event notice before the media made for it: one queue."""
    bus = Bus(status_interval=0, check_payloads=False)
    got: list[str] = []
    release = asyncio.Event()

    async def handler(msg: Message[object]) -> None:
        await release.wait()
        got.append(msg.topic)

    bus.subscribe([topics.EVENT, topics.ARTIFACT], handler, maxsize=16)
    sent = ["event.object.started", "media.snapshot.ready", "event.object.ended"]
    for name in sent:
        await bus.publish(name, None)  # type: ignore[arg-type]
    await bus.publish("camera.x.frame", None)  # type: ignore[arg-type]  # neither family
    release.set()
    assert await bus.drain(timeout=2)
    await bus.close()
    assert got == sent


def test_event_and_media_namespaces_do_not_overlap() -> None:
    """No wildcard subscription to one family catches the other (no isinstance dispatch)."""
    fams = topics.ALL
    for a in fams:
        for b in fams:
            if a is not b:
                assert not match(a.pattern(), b.at(**dict.fromkeys(_holes(b), "x"))), (a, b)


def _holes(t: topics.Topic[Any]) -> list[str]:
    return [s[1:-1] for s in t.template.split(".") if s.startswith("{")]


async def test_an_idle_subscription_does_not_keep_its_last_message_alive() -> None:
    """Each idle frame subscription pinned its last frame (and its decoded picture)."""
    import gc
    import weakref

    class Payload:
        pass

    bus = Bus(status_interval=0)

    async def handler(msg: Message[Any]) -> None:
        pass

    bus.subscribe("frames", handler, policy="latest", maxsize=1, module="m")
    payload = Payload()
    gone = weakref.ref(payload)
    await bus.publish("frames", payload)
    assert await bus.drain(timeout=2)
    del payload
    gc.collect()
    assert gone() is None
    await bus.close()
