"""Webhook channel against a local receiver that checks the HMAC like a real one would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from spyoncino.core.bus import Bus, Message
from spyoncino.core.contracts import BoundedExecutor
from spyoncino.modules.output.webhook import WebhookOutput, recipient_of
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.control import ControlState
from tests.support.alerts import publish_event, start_module
from tests.support.receivers import WebhookReceiver
from tests.support.wait import until

SECRET = "s3cret-hmac-key"
FAST = {"min_interval_s": 0.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(2)
    receiver = WebhookReceiver(SECRET)
    await receiver.start()
    notes: list[AlertNotification] = []

    async def collect(msg: Message[AlertNotification]) -> None:
        notes.append(msg.payload)

    bus.subscribe(topics.NOTIFY.pattern(channel="webhook"), collect, module="test")
    modules: list[Any] = []

    async def make(**section: Any) -> WebhookOutput:
        m = await start_module(WebhookOutput, "webhook", bus, executor, tmp_path, section)
        modules.append(m)
        assert isinstance(m, WebhookOutput)
        return m

    yield {"bus": bus, "rx": receiver, "make": make, "root": tmp_path, "notes": notes}
    for m in modules:
        await m.stop()
    await receiver.stop()
    await bus.close()
    executor.shutdown()


async def notes_with(env: dict[str, Any], status: str) -> list[Any]:
    """The outbox's notes of ``status``, once there is one (not just after the HTTP answer)."""
    await until(lambda: any(n.status == status for n in env["notes"]), what=f"a {status} note")
    return [n for n in env["notes"] if n.status == status]


async def test_alerts_are_posted_signed_with_event_and_artifact(env: dict[str, Any]) -> None:
    rx = env["rx"]
    await env["make"](
        url=rx.url,
        secret=SECRET,
        media_base_url="http://box.local:8080/media",
        outbox=FAST,
    )
    _ev, art = await publish_event(env["bus"], env["root"], "ev-1")
    (doc,) = await rx.received.wait_for(1)
    assert rx.rejected == 0
    assert doc["type"] == "spyoncino.alert"
    assert doc["event"]["id"] == "ev-1"
    assert doc["event"]["camera_name"] == "Front door"
    assert doc["event"]["labels"] == ["person"]
    assert doc["artifact"]["path"] == art.path
    assert doc["artifact"]["sha256"] == art.sha256
    assert doc["artifact"]["url"] == "http://box.local:8080/media/front_door/ev-1.jpg"
    # "sent" is reported once the outbox row says so, just after the receiver answered
    sent = await notes_with(env, "sent")
    assert [(n.event_id, n.recipient) for n in sent] == [("ev-1", recipient_of(rx.url))]


async def test_a_wrong_secret_is_refused_by_the_receiver(env: dict[str, Any]) -> None:
    rx = env["rx"]
    await env["make"](url=rx.url, secret="not-the-key", outbox=FAST)
    await publish_event(env["bus"], env["root"], "ev-1")
    await until(lambda: rx.rejected == 1)
    await notes_with(env, "failed")
    await env["bus"].drain()
    failed = [n for n in env["notes"] if n.status == "failed"]  # only one, even after the drain
    assert [n.error for n in failed] == ["HTTP 401"]  # 4xx: not retried


async def test_5xx_and_429_are_retried_in_order(env: dict[str, Any]) -> None:
    rx = env["rx"]
    rx.answers = [(500, {}), (429, {"Retry-After": "1"})]
    await env["make"](url=rx.url, secret=SECRET, outbox=FAST)
    await publish_event(env["bus"], env["root"], "ev-1")
    await publish_event(env["bus"], env["root"], "ev-2", camera="garden")
    await rx.received.wait_for(2)
    assert [d["event"]["id"] for d in rx.received] == ["ev-1", "ev-2"]
    assert rx.times[2] - rx.times[1] >= 1.0  # Retry-After honoured
    # two refusals, two deliveries, whichever alert met which refusal
    assert sum(d["attempt"] for d in rx.received) == 4


async def test_disarmed_means_no_post_unless_configured(env: dict[str, Any]) -> None:
    rx = env["rx"]
    m = await env["make"](url=rx.url, secret=SECRET, outbox=FAST)
    await env["bus"].publish(topics.CONTROL_STATE.name, ControlState(armed=False))
    await env["bus"].drain()
    await publish_event(env["bus"], env["root"], "ev-1")
    await env["bus"].drain()
    assert m.outbox is not None and m.outbox.pending() == 0  # nothing queued: nothing goes
    assert rx.received == [] and rx.times == []


async def test_without_url_it_is_inert(env: dict[str, Any]) -> None:
    m = await env["make"]()
    assert "no url" in m.health().detail
    await publish_event(env["bus"], env["root"], "ev-1")
    await env["bus"].drain()
    assert env["rx"].times == []


async def test_an_event_without_a_snapshot_is_posted_without_artifact(
    env: dict[str, Any],
) -> None:
    from spyoncino.schemas.events import EventNotice

    rx = env["rx"]
    await env["make"](url=rx.url, secret=SECRET, snapshot_wait_s=1.0, outbox=FAST)
    now = time.time()
    ev = EventNotice(
        event_id="no-pic",
        camera_id="garden",
        kind="object",
        phase="started",
        labels=("person",),
        top_score=0.7,
        started_at=now,
        updated_at=now,
    )
    await env["bus"].publish(topics.EVENT.at(kind="object", phase="started"), ev)
    await rx.received.wait_for(1)
    assert rx.received[0]["type"] == "spyoncino.alert"
    assert rx.received[0]["artifact"] is None
    assert rx.received[0]["event"]["id"] == "no-pic"
