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
from spyoncino.core.clock import Clock, SystemClock
from spyoncino.core.config import build_app_model
from spyoncino.core.contracts import BoundedExecutor, ModuleConfigError, ModuleContext
from spyoncino.helpers.files import atomic_write_bytes
from spyoncino.modules.event.arming import ArmingState
from spyoncino.modules.event.clip import ClipRecorder
from spyoncino.modules.event.snapshot import SnapshotWriter
from spyoncino.modules.output.telegram import TelegramOutput
from spyoncino.modules.storage.index import EventIndex
from spyoncino.modules.storage.index.db import connect as index_connect
from spyoncino.modules.storage.index.db import upsert_event
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.control import ControlCommand, ControlState
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Frame
from spyoncino.schemas.media import MediaArtifact
from spyoncino.schemas.status import HealthReport, ModuleHealth
from spyoncino.testing.clock import FakeClock
from tests.support.alerts import start_module
from tests.support.botapi import BotApiEmulator
from tests.support.wait import until

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
        self.arming: ArmingState | None = None

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

    async def media(self, ev: EventNotice, kind: str, data: bytes, **extra: Any) -> MediaArtifact:
        """Publish a GIF or clip of ``ev`` the way the media writer does."""
        ext = "gif" if kind == "gif" else "mp4"
        path = self.root / ev.camera_id / f"{ev.event_id}.{ext}"
        digest = atomic_write_bytes(path, data)
        art = MediaArtifact(
            event_id=ev.event_id,
            camera_id=ev.camera_id,
            kind=kind,  # type: ignore[arg-type]
            path=str(path),
            relpath=f"{ev.camera_id}/{ev.event_id}.{ext}",
            size_bytes=len(data),
            sha256=digest,
            mime="image/gif" if kind == "gif" else "video/mp4",
            created_at=time.time(),
            duration_s=4.0,
            width=320,
            height=240,
            **extra,
        )
        await self.bus.publish(topics.ARTIFACT.at(artifact=kind), art)
        return art


MakeHarness = Callable[..., Coroutine[Any, Any, Harness]]


@pytest_asyncio.fixture
async def harness(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(workers=2)
    made: list[Harness] = []

    async def make(
        arming: bool = False,
        wait_bot: bool = True,
        clock: Clock | None = None,
        started: asyncio.Event | None = None,
        **section: Any,
    ) -> Harness:
        model = build_app_model({"telegram": TelegramOutput, "arming": ArmingState})
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
        clock = clock or SystemClock()
        ctx = ModuleContext(bus=bus, executor=executor, app=app, instance="telegram", clock=clock)
        if started is not None:  # the orchestrator's "every module has started"
            ctx.started = started
        module = TelegramOutput(ctx)
        module.name = "telegram"
        await module.configure(app)
        h = Harness(bus, module, tmp_path)
        bus.subscribe(topics.NOTIFY.pattern(), h.collect, module="test")
        await module.start()
        made.append(h)
        if wait_bot and module._live():  # the bot is built in the background (aiogram import)
            await asyncio.wait_for(module._bot_ready.wait(), timeout=60)
        if arming:
            actx = ModuleContext(
                bus=bus, executor=executor, app=app, instance="arming", clock=clock
            )
            actx.started = ctx.started
            h.arming = ArmingState(actx)
            h.arming.name = "arming"
            await h.arming.configure(app)
            await h.arming.start()
            await bus.drain()
        return h

    yield make
    for h in made:
        await h.module.stop()
        if h.arming is not None:
            await h.arming.stop()
    await bus.close()
    executor.shutdown()


FAST_OUTBOX = {"min_interval_s": 0.0, "backoff_initial_s": 0.1, "backoff_max_s": 0.5}


def cfg(emu: BotApiEmulator, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "token": TOKEN,
        "chat_ids": CHATS,
        "api_base_url": emu.base_url,
        "poll_timeout_s": 2,
        "command_timeout_s": 3.0,
        "outbox": dict(FAST_OUTBOX),
    }
    base.update(extra)
    return base


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
        assert caption.startswith("person \u00b7 Front door \u00b7 ")
        assert "driveway" in caption
    # each is reported sent once its outbox row says so, just after the Bot API answered
    await until(lambda: len(h.statuses("sent")) == 2, what="two sent notes")
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
    assert h.module.outbox is None  # nothing can ever be sent
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
    await settled(h)
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
    await settled(h)
    photos = botapi.calls_to("sendPhoto")
    assert len(photos) == 2
    assert "garden" in photos[0].params["caption"]
    assert "Front door" in photos[1].params["caption"]
    assert h.module.gate.suppressed == 3
    assert [n.event_id for n in h.statuses("sent")] == [ev_garden.event_id, last.event_id]


async def test_retry_after_is_honoured(harness: MakeHarness, botapi: BotApiEmulator) -> None:
    botapi.fail("429", "sendPhoto", retry_after=1)
    h = await harness(**cfg(botapi, chat_ids=[111]))
    await h.event()
    ok = await botapi.wait_for("sendPhoto", timeout=5)
    first = botapi.attempts_to("sendPhoto")[0]
    assert first.answered == "429"
    assert ok.at - first.at >= 1.0
    await until(lambda: len(h.statuses("sent")) == 1, what="a sent note")
    await h.bus.drain()
    assert len(h.statuses("sent")) == 1


async def test_a_photo_whose_answer_is_unreadable_is_not_uploaded_again(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    """The photo was delivered each time, and re-uploaded with backoff for up to 24 h."""
    botapi.fail("garbled", "sendPhoto")
    h = await harness(**cfg(botapi, chat_ids=[111]))
    await h.event()
    await until(lambda: len(h.statuses("sent")) == 1)
    await h.event("garden")  # the chat's queue goes on
    await until(lambda: len(h.statuses("sent")) == 2)
    photos = botapi.attempts_to("sendPhoto")
    assert [p.answered for p in photos][:1] == ["garbled"]
    assert len(photos) == 2  # one per alert: the first was not uploaded again
    assert h.module.metrics()["outbox_delivered_unknown"] == 1


async def test_gif_and_clip_reply_to_the_alert_photo(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi, chat_ids=[111], followup="both"))
    ev, _ = await h.event()
    gif = await h.media(ev, "gif", b"GIF89a" + b"\x00" * 2000)
    clip = await h.media(ev, "clip", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 5000)
    photo = await botapi.wait_for("sendPhoto")
    anim = await botapi.wait_for("sendAnimation")
    video = await botapi.wait_for("sendVideo")
    photo_id = photo.result["message_id"]
    assert anim.json("reply_parameters")["message_id"] == photo_id
    assert video.json("reply_parameters")["message_id"] == photo_id
    assert anim.file("animation").data == Path(gif.path).read_bytes()
    assert video.file("video").data == Path(clip.path).read_bytes()
    assert video.params["supports_streaming"] == "true"
    assert photo.at < anim.at < video.at
    # the photo carries the inline keyboard
    buttons = photo.json("reply_markup")["inline_keyboard"][0]
    assert [b["text"] for b in buttons] == ["Mute 1 h", "Snapshot", "Disarm"]
    assert buttons[0]["callback_data"] == "m:front_door:3600"


async def test_files_over_the_limits_arrive_as_text(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi, chat_ids=[111], max_photo_bytes=1024, max_file_bytes=1024))
    ev, _ = await h.event()
    await h.media(ev, "gif", b"GIF89a" + b"\x00" * 4000)
    first = await botapi.wait_for("sendMessage")
    second = await botapi.wait_for("sendMessage", count=2)
    assert botapi.calls_to("sendPhoto") == []
    assert "person \u00b7 Front door \u00b7 " in first.params["text"]
    assert "photo not sent" in first.params["text"]
    assert "over the" in first.params["text"]
    assert "GIF of Front door not sent" in second.params["text"]
    assert second.json("reply_parameters")["message_id"] == first.result["message_id"]


async def test_quiet_hours_make_alerts_silent(harness: MakeHarness, botapi: BotApiEmulator) -> None:
    now = time.localtime()
    start = f"{(now.tm_hour - 1) % 24:02d}:00"
    end = f"{(now.tm_hour + 1) % 24:02d}:59"
    h = await harness(**cfg(botapi, chat_ids=[111], quiet_hours_start=start, quiet_hours_end=end))
    await h.event()
    photo = await botapi.wait_for("sendPhoto")
    assert photo.params.get("disable_notification") == "true"


async def test_loud_outside_quiet_hours(harness: MakeHarness, botapi: BotApiEmulator) -> None:
    now = time.localtime()
    start = f"{(now.tm_hour + 2) % 24:02d}:00"
    end = f"{(now.tm_hour + 3) % 24:02d}:00"
    h = await harness(**cfg(botapi, chat_ids=[111], quiet_hours_start=start, quiet_hours_end=end))
    await h.event()
    photo = await botapi.wait_for("sendPhoto")
    assert photo.params.get("disable_notification") in (None, "false")


async def test_429_retry_after_3_means_no_request_for_3_seconds(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    botapi.fail("429", "sendPhoto", retry_after=3)
    h = await harness(**cfg(botapi, chat_ids=[111]))
    await h.event()
    await h.event("garden")
    second = await botapi.wait_for("sendPhoto", count=2, timeout=10)
    attempts = botapi.attempts_to("sendPhoto")
    refused = attempts[0]
    assert refused.answered == "429"
    later = [c for c in botapi.calls if c.method.startswith("send") and c is not refused]
    assert all(c.at - refused.at >= 3.0 for c in later)
    assert "Front door" in botapi.calls_to("sendPhoto")[0].params["caption"]
    assert "garden" in second.params["caption"]


async def test_alerts_wait_out_an_outage_and_arrive_once_in_order(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi, chat_ids=[111], commands=False))
    await botapi.stop()
    events = [(await h.event("garden" if i % 2 else "front_door"))[0] for i in range(6)]
    outbox = h.module.outbox
    assert outbox is not None
    await until(lambda: outbox.stats["retries"] >= 3, what="several failed attempts")  # stats
    await botapi.start()
    await botapi.wait_for("sendPhoto", count=6, timeout=10)
    await settled(h)
    photos = botapi.calls_to("sendPhoto")
    assert len(photos) == 6
    order = [h.module.names[e.camera_id] for e in events]
    assert [p.params["caption"].split(" \u00b7 ")[1] for p in photos] == order
    await h.bus.drain()
    assert [n.event_id for n in h.statuses("sent")] == [e.event_id for e in events]


async def test_pending_alerts_are_sent_after_a_restart(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi, chat_ids=[111], commands=False))
    await h.event()
    await botapi.wait_for("sendPhoto")
    await botapi.stop()
    for _ in range(3):
        await h.event()
    outbox = h.module.outbox
    assert outbox is not None
    # polled (the outbox's own counters): all three queued and tried against the outage
    await until(lambda: outbox.pending() == 3 and outbox.stats["retries"] >= 1, what="tried")
    await h.module.stop()  # the box goes down with three alerts pending
    await botapi.start()
    assert len(botapi.calls_to("sendPhoto")) == 1  # (a stopped module that sent would show below)
    h2 = await harness(**cfg(botapi, chat_ids=[111], commands=False))
    await botapi.wait_for("sendPhoto", count=4)
    await settled(h2)
    captions = [c.params["caption"] for c in botapi.calls_to("sendPhoto")]
    assert len(captions) == 4
    assert h2.module.outbox is not None
    assert (await h2.module.outbox.counts()) == {"sent": 4}


async def test_far_behind_alerts_fold_into_a_summary(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    outbox = dict(FAST_OUTBOX, coalesce_after=5)
    h = await harness(**cfg(botapi, chat_ids=[111], commands=False, outbox=outbox))
    await botapi.stop()
    for _ in range(12):
        await h.event()
    outbox = h.module.outbox
    assert outbox is not None
    await until(lambda: outbox.stats["retries"] >= 1, what="the outage seen")  # its counters
    # the outage lasts until all twelve are in the outbox (an alert reaches it only once its
    # snapshot is handled): ended sooner, the first ones go out with a summary of their own
    await until(lambda: outbox.stats["queued"] == 12, what="the twelve alerts queued")
    await botapi.start()
    await botapi.wait_for("sendPhoto")
    await settled(h)
    photos = botapi.calls_to("sendPhoto")
    summaries = [p for p in photos if "while offline" in p.params["caption"]]
    assert len(summaries) == 1
    text = summaries[0].params["caption"]
    folded = int(text.split(" events on")[0])
    assert len(photos) - 1 + folded == 12
    assert text.startswith(f"{folded} events on Front door while offline")


# -- commands -------------------------------------------------------------------------------------
async def settled(h: Harness) -> None:
    """Wait until what was published is handled, every update answered and the outbox has
    nothing left to send: an alert not sent by then is never sent. Polled: the outbox's queue
    empties as each row is recorded, and handled updates fire no event."""
    assert await h.bus.drain()
    await until(lambda: not getattr(h.module, "_handlers", ()), what="updates handled")
    outbox = h.module.outbox
    if outbox is not None:
        await until(lambda: outbox.pending() == 0, what="nothing left in the outbox")
    assert await h.bus.drain()


async def reply_to(botapi: BotApiEmulator, chat: int, needle: str, timeout: float = 5.0) -> str:
    call = await botapi.wait_for(
        "sendMessage",
        timeout=timeout,
        predicate=lambda c: c.chat_id == chat and needle in c.params.get("text", ""),
    )
    return call.params["text"]


class MediaResponder:
    """Answers snapshot/clip commands the way the snapshot and clip writers do."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.commands: list[ControlCommand] = []
        h.bus.subscribe(topics.CONTROL.name, self.on_command, module="responder")

    async def on_command(self, msg: Message[ControlCommand]) -> None:
        cmd = msg.payload
        self.commands.append(cmd)
        if cmd.command not in ("snapshot", "clip"):
            return
        kind = "snapshot" if cmd.command == "snapshot" else "clip"
        data = make_jpeg(160, 120) if kind == "snapshot" else b"\x00\x00\x00\x18ftypmp42" * 50
        path = self.h.root / "manual" / f"{cmd.camera_id}-{cmd.request_id}.{kind}"
        digest = atomic_write_bytes(path, data)
        art = MediaArtifact(
            event_id=f"manual-{cmd.request_id}",
            camera_id=cmd.camera_id or "front_door",
            kind=kind,  # type: ignore[arg-type]
            path=str(path),
            relpath=f"manual/{path.name}",
            size_bytes=len(data),
            sha256=digest,
            mime="image/jpeg" if kind == "snapshot" else "video/mp4",
            created_at=time.time(),
            duration_s=cmd.duration_s,
        )
        await self.h.bus.publish(topics.ARTIFACT.at(artifact=kind), art)


async def test_commands_are_registered_for_the_menu(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    await harness(**cfg(botapi))
    call = await botapi.wait_for("setMyCommands")
    names = [c["command"] for c in call.json("commands")]
    for wanted in (
        "status",
        "snapshot",
        "clip",
        "events",
        "arm",
        "disarm",
        "mute",
        "health",
        "help",
    ):
        assert wanted in names
    assert botapi.calls_to("deleteWebhook")


async def test_strangers_are_ignored_and_counted(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(arming=True, **cfg(botapi))
    assert h.arming is not None
    await botapi.wait_for("setMyCommands")
    botapi.push_message(999, 999, "/disarm")
    botapi.push_message(999, 999, "/start")
    botapi.push_callback(999, 999, "d", message_id=1)
    await until(lambda: h.module.counts["unauthorized"] == 3)
    await settled(h)
    assert h.arming.armed
    assert botapi.sent() == []
    assert botapi.calls_to("answerCallbackQuery") == []
    # and the allowlisted chat is still served
    botapi.push_message(111, 111, "/help")
    assert "/snapshot" in await reply_to(botapi, 111, "Spyoncino commands")
    assert all(c.chat_id != 999 for c in botapi.sent())


async def test_arm_disarm_and_admins(harness: MakeHarness, botapi: BotApiEmulator) -> None:
    h = await harness(arming=True, **cfg(botapi, admin_ids=[111]))
    assert h.arming is not None
    botapi.push_message(-222, 333, "/disarm")  # allowlisted group, not an admin
    assert "Only an admin" in await reply_to(botapi, -222, "admin")
    assert h.arming.armed
    botapi.push_message(111, 111, "/disarm")
    assert "Disarmed" in await reply_to(botapi, 111, "Disarmed")
    assert not h.arming.armed
    await h.event()
    await settled(h)
    assert botapi.calls_to("sendPhoto") == []
    botapi.push_message(111, 111, "/arm@another_bot")  # not for us
    botapi.push_message(111, 111, "/arm@spyoncino_test_bot")
    await reply_to(botapi, 111, "Armed")
    assert h.arming.armed
    assert h.module.counts["commands"] == 3


async def test_a_command_sent_while_the_box_starts_is_obeyed_once_it_has(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    """/disarm sent while the box (re)starts: Telegram's module starts before arming (as in
    the service), so a command read at once went out with nobody to obey it and no answer.
    The updates now stay with the Bot API until every module has started."""
    botapi.push_message(111, 111, "/disarm")
    started = asyncio.Event()
    h = await harness(arming=True, started=started, **cfg(botapi, chat_ids=[111]))
    assert h.arming is not None
    await botapi.wait_for("setMyCommands")  # the bot is up: the next call would read updates
    assert botapi.calls_to("getUpdates") == []
    started.set()
    assert "Disarmed" in await reply_to(botapi, 111, "Disarmed")
    assert not h.arming.armed


async def test_mute_silences_one_camera_for_the_duration(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    clock = FakeClock()  # the mute's end: arming and the gate read this clock
    h = await harness(arming=True, clock=clock, **cfg(botapi, chat_ids=[111]))
    botapi.push_message(111, 111, "/mute 2s front_door")
    text = await reply_to(botapi, 111, "Muted")
    assert "Muted Front door for 2 s" in text
    await h.event("front_door")
    await h.event("garden")
    await botapi.wait_for("sendPhoto")
    await settled(h)
    photos = botapi.calls_to("sendPhoto")
    assert len(photos) == 1
    assert photos[0].params["caption"].startswith("person \u00b7 garden")
    clock.advance(1.9)
    await h.event("front_door")  # still muted
    await settled(h)
    assert len(botapi.calls_to("sendPhoto")) == 1
    clock.advance(0.1)
    await h.event("front_door")  # alerts resume after the mute
    last = await botapi.wait_for("sendPhoto", count=2)
    assert last.params["caption"].startswith("person \u00b7 Front door")
    botapi.push_message(111, 111, "/mute soon")
    assert "not a duration" in await reply_to(botapi, 111, "duration")
    botapi.push_message(111, 111, "/mute 1h")
    assert "Muted all cameras for 1 h" in await reply_to(botapi, 111, "all cameras")
    botapi.push_message(111, 111, "/unmute")
    unmuted = await reply_to(botapi, 111, "Unmuted")
    assert unmuted.splitlines()[:2] == ["Unmuted all cameras.", "Armed"]
    botapi.push_message(111, 111, "/mute 1h attic")
    assert "Cameras: front_door, garden" in await reply_to(botapi, 111, "Unknown camera")


async def test_mute_durations_are_bounded_and_the_bot_keeps_answering(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    """A 400-digit /mute set mute-until to Infinity; /status then raised OverflowError."""
    h = await harness(arming=True, **cfg(botapi, chat_ids=[111]))
    assert h.arming is not None
    for n, bad in enumerate(("9" * 400, "99999999d", "8d", "1e308", "1.5e3m")):
        botapi.push_message(111, 111, f"/mute {bad}")
        await until(lambda n=n: len(botapi.sent(111)) == n + 1)  # type: ignore[misc]
        reply = botapi.sent(111)[-1].params["text"]
        assert "Muted" not in reply and "7 d" in reply, (bad, reply)
    assert h.arming.muted_until == {}
    botapi.push_message(111, 111, "/mute 7d")
    assert "Muted all cameras for 7 d" in await reply_to(botapi, 111, "Muted")
    botapi.push_message(111, 111, "/status")
    assert "Armed" in await reply_to(botapi, 111, "Armed")


async def test_forged_callbacks_are_refused(harness: MakeHarness, botapi: BotApiEmulator) -> None:
    h = await harness(arming=True, **cfg(botapi, chat_ids=[111]))
    assert h.arming is not None
    await h.event()
    photo = await botapi.wait_for("sendPhoto")
    mid = photo.result["message_id"]
    for forged in ("m:front_door:1e308", "m:front_door:inf", "m:attic:3600", "m:front_door:-5"):
        botapi.push_callback(111, 111, forged, message_id=mid)
    botapi.push_message(111, 111, "/help")
    await reply_to(botapi, 111, "Spyoncino commands")
    await until(lambda: len(botapi.calls_to("answerCallbackQuery")) == 4)
    assert h.arming.muted_until == {}
    assert all("Muted" not in c.params.get("text", "") for c in botapi.sent())


async def test_members_who_are_not_admins_cannot_mute(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(arming=True, **cfg(botapi, admin_ids=[111]))
    assert h.arming is not None
    botapi.push_message(-222, 333, "/mute 3650d")  # allowlisted group, not an admin
    assert "Only an admin" in await reply_to(botapi, -222, "admin")
    botapi.push_message(-222, 333, "/unmute")
    await reply_to(botapi, -222, "/unmute")
    assert h.arming.muted_until == {}
    botapi.push_message(-222, 333, "/status")  # reading is for everyone in chat_ids
    assert "Armed" in await reply_to(botapi, -222, "Armed")
    h2 = await harness(arming=False, **cfg(botapi, admin_ids=[111], member_commands=["mute"]))
    assert "mute" in h2.module.cfg.member_commands


async def test_inline_buttons_act_like_commands(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(arming=True, **cfg(botapi, chat_ids=[111]))
    assert h.arming is not None
    await h.event()
    photo = await botapi.wait_for("sendPhoto")
    mid = photo.result["message_id"]
    botapi.push_callback(111, 111, "m:front_door:3600", message_id=mid)
    assert "Muted Front door for 1 h" in await reply_to(botapi, 111, "Muted")
    assert h.arming.muted_until["front_door"] > time.time() + 3500
    assert botapi.calls_to("answerCallbackQuery")
    botapi.push_callback(111, 111, "d", message_id=mid)
    await reply_to(botapi, 111, "Disarmed")
    assert not h.arming.armed


async def test_snapshot_and_clip_commands_reply_with_media(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi, chat_ids=[111]))
    responder = MediaResponder(h)
    botapi.push_message(111, 111, "/snapshot garden")
    photo = await botapi.wait_for("sendPhoto")
    assert photo.chat_id == 111
    assert photo.params["caption"].startswith("garden, ")
    assert photo.file("photo").data.startswith(b"\xff\xd8")
    asked = [c for c in responder.commands if c.command == "snapshot"]
    assert [(c.camera_id, c.source) for c in asked] == [("garden", "telegram:111")]
    botapi.push_message(111, 111, "/snapshot")  # every camera
    await botapi.wait_for("sendPhoto", count=3)
    botapi.push_message(111, 111, "/clip front_door 3")
    video = await botapi.wait_for("sendVideo")
    assert video.params["caption"].startswith("Front door, ")
    clip_cmd = next(c for c in responder.commands if c.command == "clip")
    assert clip_cmd.duration_s == 3.0
    botapi.push_message(111, 111, "/snapshot attic")
    assert "front_door, garden" in await reply_to(botapi, 111, "Unknown camera")


async def test_snapshot_without_an_answer_says_so(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    await harness(**cfg(botapi, chat_ids=[111], command_timeout_s=0.5))
    botapi.push_message(111, 111, "/snapshot garden")
    assert "garden" in await reply_to(botapi, 111, "No snapshot from")


async def test_status_health_events_and_help_replies(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(arming=True, **cfg(botapi, chat_ids=[111]))
    report = HealthReport(
        overall="degraded",
        modules=(
            ModuleHealth(module="file:front_door", state="ok", metrics={"fps": 9.8}),
            ModuleHealth(module="rtsp:garden", state="degraded", detail="reconnecting"),
            ModuleHealth(module="telegram", state="ok"),
        ),
        at=time.time(),
    )
    await h.bus.publish(topics.HEALTH.name, report)
    conn = index_connect(h.root / "events.sqlite3")
    t0 = time.time() - 600
    for i, cam in enumerate(["front_door", "garden", "front_door"]):
        upsert_event(
            conn,
            EventNotice(
                event_id=f"db-{i}",
                camera_id=cam,
                kind="object",
                phase="ended",
                labels=("person",),
                top_score=0.9,
                started_at=t0 + i * 60,
                updated_at=t0 + i * 60,
            ),
        )
    conn.close()
    # the bot asks storage/index for the events (it never opens the file itself)
    index = await start_module(EventIndex, "index", h.bus, h.module.ctx.executor, h.root, {})
    await h.bus.drain()

    botapi.push_message(111, 111, "/status")
    status = await reply_to(botapi, 111, "Cameras:")
    assert "Armed" in status
    assert "- Front door: ok, 9.8 fps" in status
    assert "- garden: degraded (reconnecting)" in status
    assert "Disk free:" in status
    assert "Uptime:" in status
    assert "Last events:" in status

    botapi.push_message(111, 111, "/events 2")
    events = await reply_to(botapi, 111, "Last 2 events")
    lines = events.splitlines()[1:]
    assert len(lines) == 2
    assert "Front door: person 90%" in lines[0]
    assert "garden: person 90%" in lines[1]

    botapi.push_message(111, 111, "/health")
    health = await reply_to(botapi, 111, "Overall: degraded")
    assert "- rtsp:garden: degraded - reconnecting" in health

    botapi.push_message(111, 111, "/frobnicate")
    assert "/help" in await reply_to(botapi, 111, "Unknown command")

    await index.stop()  # no index: /events says so instead of "no events"
    botapi.push_message(111, 111, "/events")
    assert "no module answers" in await reply_to(botapi, 111, "/events: the event index")


def grey_frame(seq: int, grey: int, mono: float) -> Frame:
    """A 320x240 frame of camera 'garden', all one grey."""
    img = np.full((240, 320, 3), grey, np.uint8)
    return Frame(
        camera_id="garden",
        seq=seq,
        mono_ts=mono,
        wall_ts=time.time(),
        width=320,
        height=240,
        luma=img[:, :, 0].copy(),
        _image=img,
    )


async def test_snapshot_command_with_the_real_snapshot_writer(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi, chat_ids=[111]))
    writer = await start_module(
        SnapshotWriter, "snapshot", h.bus, h.module.ctx.executor, h.root, {}
    )
    try:
        await h.bus.publish(topics.FRAME.at(camera="garden"), grey_frame(1, 90, time.monotonic()))
        await h.bus.drain()
        botapi.push_message(111, 111, "/snapshot garden")
        photo = await botapi.wait_for("sendPhoto")
        assert photo.params["caption"].startswith("garden, ")
        decoded = cv2.imdecode(np.frombuffer(photo.file("photo").data, np.uint8), 1)
        assert decoded.shape == (240, 320, 3)
        assert abs(int(decoded.mean()) - 90) <= 2
    finally:
        await writer.stop()


async def test_clip_command_with_the_real_clip_recorder(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi, chat_ids=[111]))
    recorder = await start_module(ClipRecorder, "clip", h.bus, h.module.ctx.executor, h.root, {})
    try:
        t0 = time.monotonic() - 4.0
        for seq in range(40):  # 4 s at 10 fps, the last one now
            frame = grey_frame(seq, 60 + seq, t0 + seq / 10)
            await h.bus.publish(topics.FRAME.at(camera="garden"), frame)
            await h.bus.drain()
        botapi.push_message(111, 111, "/clip garden 2")
        video = await botapi.wait_for("sendVideo", timeout=10.0)
        assert video.chat_id == 111
        assert video.params["caption"].startswith("garden, ")
        data = video.file("video").data
        assert data[4:8] == b"ftyp"
        assert 0 <= data.find(b"moov") < data.find(b"mdat")  # plays while downloading
    finally:
        await recorder.stop()


async def test_config_updates_apply_in_place_or_are_refused(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi, chat_ids=[111]))
    model = build_app_model({"telegram": TelegramOutput, "arming": ArmingState})
    base = {"storage": {"root": str(h.root)}, "cameras": {"garden": {"source": "y.mp4"}}}
    new = model.model_validate(
        {**base, "telegram": cfg(botapi, chat_ids=[111, 333], outbox={"coalesce_after": 3})}
    )
    await h.module.configure(new)
    assert h.module.cfg.chat_ids == [111, 333]
    assert h.module.outbox is not None
    assert h.module.outbox.settings.coalesce_after == 3
    moved = model.model_validate({**base, "telegram": cfg(botapi, token="999:other-token")})
    with pytest.raises(ModuleConfigError, match="restart"):
        await h.module.configure(moved)
    assert h.module.cfg.chat_ids == [111, 333]  # the refused change left the config in force


async def test_a_flapping_camera_cannot_flood(harness: MakeHarness, botapi: BotApiEmulator) -> None:
    outbox = dict(FAST_OUTBOX, camera_budget=2, camera_window_s=1.0)
    clock = FakeClock()  # the budget's window runs on the outbox's clock
    h = await harness(clock=clock, **cfg(botapi, chat_ids=[111], commands=False, outbox=outbox))
    for _ in range(5):
        await h.event("front_door")
    await h.event("garden")  # another camera has its own budget
    await botapi.wait_for("sendPhoto", count=3)
    await settled(h)
    assert len(botapi.calls_to("sendPhoto")) == 3
    clock.advance(1.0)  # the window moves on
    await h.event("front_door")
    last = await botapi.wait_for("sendPhoto", count=4)
    assert "(+3 more on Front door not sent: alert rate limit)" in last.params["caption"]


async def test_an_event_without_a_snapshot_is_still_alerted_as_text(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi, chat_ids=[111], commands=False, snapshot_wait_s=1.0))
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
    await h.bus.publish(topics.EVENT.at(kind="object", phase="started"), ev)
    msg = await botapi.wait_for("sendMessage", timeout=5)
    assert msg.params["text"].startswith("person \u00b7 garden \u00b7 ")
    assert "no picture" in msg.params["text"]
    assert msg.json("reply_markup")["inline_keyboard"][0][2]["text"] == "Disarm"
    await h.media(ev, "gif", b"GIF89a" + b"\x00" * 100)
    anim = await botapi.wait_for("sendAnimation")
    assert anim.json("reply_parameters")["message_id"] == msg.result["message_id"]


async def test_groups_get_the_group_rate(harness: MakeHarness, botapi: BotApiEmulator) -> None:
    h = await harness(**cfg(botapi, group_per_minute=20, commands=False))
    assert h.module._rate("-222") == (0.0, 20)
    assert h.module._rate("111") == (0.0, 0)


async def test_one_photo_per_activity_whose_caption_is_edited_as_it_grows(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    """A detection (a car in the street) is not pushed; once a person makes the activity an
    alert its photo goes, once; the second person and the end edit that photo's caption
    (editMessageCaption, never a second photo) and the clip follows as a reply."""
    from spyoncino.schemas.events import TrackedObject
    from spyoncino.schemas.frames import Box

    h = await harness(**cfg(botapi, chat_ids=[111], followup="clip"))
    t0 = time.time() - 120.0
    box = Box(x1=10, y1=10, x2=50, y2=90)
    car = TrackedObject(track_id=1, label="car", score=0.8, box=box)
    p1 = TrackedObject(track_id=2, label="person", score=0.9, box=box)
    p2 = TrackedObject(track_id=3, label="person", score=0.7, box=box)
    base = EventNotice(
        event_id="act-1",
        camera_id="front_door",
        kind="object",
        phase="started",
        labels=("car",),
        top_score=0.8,
        started_at=t0,
        updated_at=t0,
        objects=(car,),
        severity="detection",
    )

    async def notice(phase: str, **kw: Any) -> EventNotice:
        ev = base.model_copy(update={"phase": phase, **kw})
        await h.bus.publish(topics.EVENT.at(kind="object", phase=phase), ev)
        return ev

    ev = await notice("started")
    data = make_jpeg()

    async def snapshot() -> None:
        path = h.root / "front_door" / "act-1.jpg"
        digest = atomic_write_bytes(path, data)
        art = MediaArtifact(
            event_id="act-1",
            camera_id="front_door",
            kind="snapshot",
            path=str(path),
            relpath="front_door/act-1.jpg",
            size_bytes=len(data),
            sha256=digest,
            mime="image/jpeg",
            created_at=time.time(),
        )
        await h.bus.publish(topics.ARTIFACT.at(artifact="snapshot"), art)

    await snapshot()
    await h.bus.drain()
    assert botapi.calls_to("sendPhoto") == []  # a detection: stored, not pushed
    # a person: an alert now, and its snapshot (the writer redoes it at that moment)
    await notice("updated", severity="alert", objects=(car, p1), updated_at=t0 + 5)
    await snapshot()
    photo = await botapi.wait_for("sendPhoto")
    assert photo.params["caption"].startswith("1 person, 1 car \u00b7 Front door \u00b7 ")
    # a second person 70 s later: the caption is edited, no second photo
    await notice("updated", severity="alert", objects=(car, p1, p2), updated_at=t0 + 75)
    edit = await botapi.wait_for("editMessageCaption")
    assert edit.params["message_id"] == str(photo.result["message_id"])
    assert edit.params["caption"].startswith("2 people, 1 car \u00b7 Front door \u00b7 ")
    assert "\u2013" in edit.params["caption"].splitlines()[0]  # a span of minutes now
    ended = await notice(
        "ended", severity="alert", objects=(car, p1, p2), updated_at=t0 + 80, ended_at=t0 + 80
    )
    await h.media(ended, "clip", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    video = await botapi.wait_for("sendVideo")
    assert video.json("reply_parameters")["message_id"] == photo.result["message_id"]
    await h.bus.drain()
    assert len(botapi.calls_to("sendPhoto")) == 1
    del ev


async def test_a_newer_caption_edit_supersedes_a_pending_one(
    harness: MakeHarness, botapi: BotApiEmulator
) -> None:
    h = await harness(**cfg(botapi, chat_ids=[111]))
    outbox = h.module.outbox
    assert outbox is not None
    botapi.fail("hang", "sendPhoto")  # the photo hangs: the edits queue up behind it
    ev, _art = await h.event()
    await botapi.wait_for("sendPhoto", answered=False)  # the photo is on its way, and hangs
    for n in (1, 2, 3):
        await outbox.enqueue(
            recipient="111",
            event_id=ev.event_id,
            camera_id=ev.camera_id,
            kind="caption",
            payload={"caption": f"edit {n}"},
            supersede=True,
        )
    assert outbox.pending("111") == 2  # the photo and the newest edit only
    assert outbox.stats["superseded"] == 2
    botapi.clear_faults()
    edit = await botapi.wait_for("editMessageCaption")
    assert edit.params["caption"] == "edit 3"
    await h.bus.drain()
    assert len(botapi.calls_to("editMessageCaption")) == 1


async def test_start_does_not_wait_for_aiogram_and_early_alerts_wait_in_the_outbox(
    harness: MakeHarness, botapi: BotApiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from spyoncino.modules.output import _aiogram

    release = threading.Event()
    real_load = _aiogram.load

    def slow_load(*names: str) -> Any:
        release.wait(30)  # a Pi importing aiogram
        return real_load(*names)

    monkeypatch.setattr(_aiogram, "load", slow_load)
    h = await harness(wait_bot=False, **cfg(botapi, chat_ids=[111], commands=False))
    # start() has returned (the cameras, started after outputs, are not held up) ...
    assert h.module.health().state == "ok"
    assert h.module.bot is None
    _ev, art = await h.event()  # ... and an alert raised meanwhile is kept
    await h.bus.drain()
    assert len(h.statuses("queued")) == 1
    assert botapi.calls_to("sendPhoto") == []
    release.set()
    call = await botapi.wait_for("sendPhoto", count=1, timeout=30)
    assert call.file("photo").data == Path(art.path).read_bytes()
