"""Telegram alerts against the local Bot API emulator, on the real bus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import pytest_asyncio

from spyoncino.core.bus import Bus, Message
from spyoncino.core.config import build_app_model
from spyoncino.core.contracts import BoundedExecutor, ModuleConfigError, ModuleContext
from spyoncino.core.files import atomic_write_bytes
from spyoncino.modules.output.telegram import TelegramOutput
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.control import ControlState
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact
from tests.support.botapi import BotApiEmulator

TOKEN = "123456:TEST-token_abc"
CHATS = [111, -222]


def make_jpeg(width: int = 320, height: int = 240) -> bytes:
    img = np.zeros((height, width, 3), np.uint8)
    cv2.rectangle(img, (40, 40), (120, 200), (0, 0, 255), 3)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return bytes(buf.tobytes())


class Harness:
    """A TelegramOutput on a real bus with the notifications it publishes collected."""

    def __init__(self, bus: Bus, module: TelegramOutput, root: Path) -> None:
        self.bus = bus
        self.module = module
        self.root = root
        self.notes: list[AlertNotification] = []
        self.n = 0

    async def collect(self, msg: Message[AlertNotification]) -> None:
        self.notes.append(msg.payload)

    def statuses(self, status: str) -> list[AlertNotification]:
        return [n for n in self.notes if n.status == status]

    async def event(
        self,
        camera: str = "front_door",
        labels: tuple[str, ...] = ("person",),
        kind: str = "object",
    ) -> tuple[EventNotice, MediaArtifact]:
        """Publish an event start and its snapshot the way tracker + snapshot writer do."""
        self.n += 1
        now = time.time()
        ev = EventNotice(
            event_id=f"ev-{self.n}",
            camera_id=camera,
            kind=kind,  # type: ignore[arg-type]
            phase="started",
            labels=labels,
            top_score=0.87,
            started_at=now,
            updated_at=now,
            zones=("driveway",),
        )
        await self.bus.publish(topics.EVENT.at(kind=kind, phase="started"), ev)
        data = make_jpeg()
        path = self.root / camera / f"{ev.event_id}.jpg"
        digest = atomic_write_bytes(path, data)
        art = MediaArtifact(
            event_id=ev.event_id,
            camera_id=camera,
            kind="snapshot",
            path=str(path),
            relpath=f"{camera}/{ev.event_id}.jpg",
            size_bytes=len(data),
            sha256=digest,
            mime="image/jpeg",
            created_at=now,
            width=320,
            height=240,
        )
        await self.bus.publish(topics.ARTIFACT.at(artifact="snapshot"), art)
        return ev, art


MakeHarness = Callable[..., Coroutine[Any, Any, Harness]]


@pytest_asyncio.fixture
async def harness(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(workers=2)
    made: list[Harness] = []

    async def make(**section: Any) -> Harness:
        model = build_app_model({"telegram": TelegramOutput})
        app = model.model_validate(
            {
                "storage": {"root": str(tmp_path)},
                "cameras": {
                    "front_door": {"source": "x.mp4", "name": "Front door"},
                    "garden": {"source": "y.mp4"},
                },
                "telegram": section,
            }
        )
        ctx = ModuleContext(bus=bus, executor=executor, app=app, instance="telegram")
        module = TelegramOutput(ctx)
        module.name = "telegram"
        await module.configure(app)
        h = Harness(bus, module, tmp_path)
        bus.subscribe(topics.NOTIFY.pattern(), h.collect, module="test")
        await module.start()
        made.append(h)
        return h

    yield make
    for h in made:
        await h.module.stop()
    await bus.close()
    executor.shutdown()


def cfg(emu: BotApiEmulator, **extra: Any) -> dict[str, Any]:
    return {"token": TOKEN, "chat_ids": CHATS, "api_base_url": emu.base_url, **extra}


async def test_snapshot_photo_goes_to_every_chat_with_a_caption(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi))
    _ev, art = await h.event()
    await botapi.wait_for("sendPhoto", count=2)
    calls = botapi.calls_to("sendPhoto")
    assert sorted(c.chat_id for c in calls if c.chat_id is not None) == sorted(CHATS)
    sent_bytes = Path(art.path).read_bytes()
    for call in calls:
        assert call.token == TOKEN
        assert call.file("photo").data == sent_bytes
        caption = call.params["caption"]
        assert "Front door" in caption
        assert "person (87%)" in caption
        assert "driveway" in caption
    await h.bus.drain()
    assert len(h.statuses("queued")) == 2
    assert len(h.statuses("sent")) == 2
    assert {n.recipient for n in h.statuses("sent")} == {str(c) for c in CHATS}
    assert all(n.event_id == art.event_id and n.channel == "telegram" for n in h.notes)


async def test_without_token_the_module_is_inert(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(chat_ids=CHATS, api_base_url=botapi.base_url)
    assert "no token" in h.module.health().detail
    await h.event()
    await h.bus.drain()
    await asyncio.sleep(0.1)
    assert botapi.calls == []
    assert h.notes == []


async def test_a_malformed_token_is_refused_without_echoing_it(tmp_path: Path) -> None:
    model = build_app_model({"telegram": TelegramOutput})
    app = model.model_validate({"telegram": {"token": "not-a-token-SECRET"}})
    bus = Bus(status_interval=0)
    module = TelegramOutput(
        ModuleContext(bus=bus, executor=BoundedExecutor(1), app=app, instance="telegram")
    )
    module.name = "telegram"
    with pytest.raises(ModuleConfigError) as err:
        await module.configure(app)
    assert "SECRET" not in str(err.value)


async def test_snapshot_of_an_unknown_event_is_not_an_alert(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi))
    art = (await h.event())[1]
    await botapi.wait_for("sendPhoto", count=2)
    # the same artifact again (a replay) and one for an event never started: no new alert
    await h.bus.publish(topics.ARTIFACT.at(artifact="snapshot"), art)
    await h.bus.publish(
        topics.ARTIFACT.at(artifact="snapshot"), art.model_copy(update={"event_id": "unknown"})
    )
    await h.bus.drain()
    await asyncio.sleep(0.2)
    assert len(botapi.calls_to("sendPhoto")) == 2


async def test_no_alerts_while_disarmed_or_muted(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi, chat_ids=[111]))
    state = topics.CONTROL_STATE.name
    await h.bus.publish(state, ControlState(armed=False))
    await h.bus.drain()
    await h.event()
    await h.bus.publish(
        state, ControlState(armed=True, muted_until={"front_door": time.time() + 60})
    )
    await h.bus.drain()
    await h.event("front_door")
    ev_garden, _ = await h.event("garden")  # another camera still alerts
    await botapi.wait_for("sendPhoto")
    await h.bus.publish(state, ControlState(armed=True, muted_until={"*": time.time() + 60}))
    await h.bus.drain()
    await h.event("garden")
    await h.bus.publish(state, ControlState(armed=True, muted_until={"*": time.time() - 1}))
    await h.bus.drain()
    _ev, last = await h.event("front_door")  # the mute ran out
    await botapi.wait_for("sendPhoto", count=2)
    await h.bus.drain()
    await asyncio.sleep(0.1)
    photos = botapi.calls_to("sendPhoto")
    assert len(photos) == 2
    assert "garden" in photos[0].params["caption"]
    assert "Front door" in photos[1].params["caption"]
    assert h.module.counts["suppressed"] == 3
    assert [n.event_id for n in h.statuses("sent")] == [ev_garden.event_id, last.event_id]


async def test_retry_after_is_honoured(harness: MakeHarness, botapi: BotApiEmulator) -> None:
    botapi.fail("429", "sendPhoto", retry_after=1)
    h = await harness(**cfg(botapi, chat_ids=[111]))
    await h.event()
    ok = await botapi.wait_for("sendPhoto", timeout=5)
    first = botapi.attempts_to("sendPhoto")[0]
    assert first.answered == "429"
    assert ok.at - first.at >= 1.0
    await h.bus.drain()
    assert len(h.statuses("sent")) == 1
