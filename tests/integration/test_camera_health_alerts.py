"""Camera-health alerts end to end: the health module, the four channels and real peers on
loopback (Bot API emulator, mosquitto, an HTTP receiver, an SMTP server), and a real RTSP
server that is stopped for 60 s.

The RTSP test runs the health module on a clock 15 times faster than the wall (an outage of
4 s is 60 s to it, the 30 s threshold 2 s): the camera input, its reconnection and the
channels run in real time, the thresholds are the defaults.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from email import message_from_bytes
from pathlib import Path

import pytest_asyncio

from spyoncino.modules.input.rtsp import RtspInput
from spyoncino.modules.output.email import EmailOutput
from spyoncino.modules.output.mqtt import MqttOutput
from spyoncino.modules.output.telegram import TelegramOutput
from spyoncino.modules.output.webhook import WebhookOutput
from spyoncino.modules.process.camera_health import CameraHealth
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Frame
from spyoncino.schemas.health import CameraHealthNotice
from spyoncino.schemas.status import HealthReport
from spyoncino.testing import BusHarness
from tests.modules.input.conftest import RtspServer, clip, gst_rtsp  # noqa: F401
from tests.support.botapi import BotApiEmulator, botapi  # noqa: F401
from tests.support.health_replays import lumas, replay
from tests.support.mqtt_broker import Broker, Watcher
from tests.support.receivers import SmtpInbox, WebhookReceiver, smtp  # noqa: F401 - fixture
from tests.support.wait import until

TOKEN = "123456:TEST-token_abc"
CHAT = 111
FAST_OUTBOX = {"min_interval_s": 0.0, "backoff_initial_s": 0.1, "backoff_max_s": 0.5}


class ManualClock:
    """The health module's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver()
    await r.start()
    yield r
    await r.stop()


async def test_a_covered_lens_reaches_telegram_mqtt_webhook_and_email(
    tmp_path: Path,
    botapi: BotApiEmulator,  # noqa: F811
    broker: Broker,
    receiver: WebhookReceiver,
    smtp: tuple[SmtpInbox, int],  # noqa: F811 - the fixture
) -> None:
    inbox, smtp_port = smtp
    watch = Watcher(broker, ["spyoncino/#", "homeassistant/#"])
    await watch.start()
    data = {
        "storage": {"root": str(tmp_path)},
        "cameras": {"cam": {"source": "cam.mp4", "name": "Front door"}},
        "telegram": {
            "token": TOKEN,
            "chat_ids": [CHAT],
            "api_base_url": botapi.base_url,
            "commands": False,
            "outbox": FAST_OUTBOX,
        },
        "mqtt": {"host": broker.host, "port": broker.port, "device_id": "box1"},
        "webhook": {"url": receiver.url, "outbox": FAST_OUTBOX},
        "email": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "recipients": ["owner@example.org"],
            "outbox": FAST_OUTBOX,
        },
    }
    registry = {
        "health": CameraHealth,
        "telegram": TelegramOutput,
        "mqtt": MqttOutput,
        "webhook": WebhookOutput,
        "email": EmailOutput,
    }
    try:
        async with BusHarness() as h:
            mods = [
                h.build(cls, data, name=name, others=registry) for name, cls in registry.items()
            ]
            for m in mods:
                await m.configure(m.ctx.app)
            for m in reversed(mods):  # consumers first, as the orchestrator starts them
                await m.start()
            frame_topic = topics.FRAME.at(camera="cam")
            t0 = time.time() - 100
            for i, (t, luma) in enumerate(lumas(replay("black"))):
                hgt, w = luma.shape
                f = Frame("cam", i, 10.0 + t, t0 + t, w, hgt, luma)
                await h.bus.publish(frame_topic, f)
                await h.bus.wait_idle(frame_topic)

            # Telegram: one alert and one recovery, plain text
            await botapi.wait_for("sendMessage", count=2, timeout=20)
            texts = [c.params["text"] for c in botapi.calls_to("sendMessage")]
            assert len(texts) == 2, texts
            assert texts[0].startswith("Camera alert: Front door: the picture is black")
            assert texts[1].startswith("Camera recovered: Front door: the picture is normal")
            # MQTT: two notices on <camera>/health and the retained problem state
            health_topic = "spyoncino/box1/cam/health"
            await watch.wait_for(lambda m: m.topic == health_topic and "recovered" in m.text)
            docs = [m.json() for m in watch.on(health_topic)]
            assert [(d["condition"], d["phase"]) for d in docs] == [
                ("black", "alert"),
                ("black", "recovered"),
            ]
            problem = [m.json() for m in watch.on("spyoncino/box1/cam/problem")]
            assert problem[-1]["problem"] is False
            assert any(p["problem"] and p["conditions"] == ["black"] for p in problem)
            # Home Assistant sees it as the camera's "problem" binary sensor
            disc = watch.on("homeassistant/binary_sensor/box1/cam_problem/config")
            assert disc and disc[-1].json()["device_class"] == "problem"
            # webhook: one document each
            await receiver.received.wait_for(2, timeout=10.0)
            assert [b["type"] for b in receiver.received] == [
                "spyoncino.camera_health",
                "spyoncino.camera_recovered",
            ]
            assert receiver.received[0]["health"]["camera_id"] == "cam"
            # email: two messages, no "no picture" line
            await inbox.messages.wait_for(2, timeout=10.0)
            mails = [message_from_bytes(mail.content) for mail in inbox.messages]
            assert "camera problem" in mails[0]["Subject"]
            assert "camera recovered" in mails[1]["Subject"]
            body = mails[0].get_payload(decode=True).decode()
            assert "black" in body and "no picture" not in body
            # nothing more follows: every notice made is out of its channel's outbox
            assert await h.bus.drain()
            for m in mods:
                box = getattr(m, "outbox", None)
                if box is not None:  # polled: the queue empties as each row is recorded
                    await until(lambda box=box: box.pending() == 0, what=f"{m.name} sent all")
            assert len(botapi.calls_to("sendMessage")) == 2
            assert len(receiver.received) == 2 and len(inbox.messages) == 2
    finally:
        await watch.stop()


async def test_rtsp_server_stopped_for_60_s_gives_one_alert_and_one_recovery(
    tmp_path: Path,
    botapi: BotApiEmulator,  # noqa: F811
    gst_rtsp: None,  # noqa: F811
) -> None:
    server = RtspServer(clip=clip())
    server.start()
    clock = ManualClock()

    data = {
        "storage": {"root": str(tmp_path)},
        "cameras": {
            "cam": {
                "source": server.url(),
                "name": "Gate",
                "rtsp": {"open_timeout_s": 5.0, "read_timeout_s": 2.0, "stall_timeout_s": 2.0},
            }
        },
        "telegram": {
            "token": TOKEN,
            "chat_ids": [CHAT],
            "api_base_url": botapi.base_url,
            "commands": False,
            "outbox": FAST_OUTBOX,
        },
    }
    registry = {"health": CameraHealth, "telegram": TelegramOutput, "rtsp": RtspInput}
    try:
        async with BusHarness() as h:
            rec = h.record(topics.CAMERA_HEALTH.pattern())
            health = h.build(CameraHealth, data, name="health", others=registry)
            tg = h.build(TelegramOutput, data, name="telegram", others=registry)
            cam = h.build(RtspInput, data, name="rtsp", camera_id="cam", others=registry)
            assert isinstance(health, CameraHealth)
            health.clock = clock
            health.tick_s = 0.02
            for m in (health, tg, cam):
                await m.configure(m.ctx.app)
            await tg.start()
            await health.start()
            await cam.start()

            async def step(seconds: float = 0.5) -> None:
                """``seconds`` pass on the module's clock: the camera's health is reported (what
                the orchestrator does every few s), then a whole round of the stream watch
                runs on the new time and what it announced is delivered."""
                clock.t += seconds
                report = HealthReport(overall="ok", modules=(cam.health(),), at=time.time())
                await h.bus.publish(topics.HEALTH.name, report)
                await h.bus.wait_idle(topics.HEALTH.name)
                first = health.stream_rounds
                # polled: the round counter fires no event
                await until(lambda: health.stream_rounds >= first + 2, what="a watch round")
                await h.bus.wait_idle(topics.CAMERA_HEALTH.pattern())

            await until(lambda: health.watches["cam"].last_frame is not None, timeout=30)
            for _ in range(15):  # 7.5 s of streaming on the module's clock: nothing to say
                await step()
            assert rec.messages == []

            server.kill()
            killed = clock()
            while clock() - killed < 60:  # 60 s on the module's clock
                await step()
            server.start()  # same port
            # the input reconnects in real time (its backoff); the module's clock goes on
            while not [m for m in rec.messages if m.payload.phase == "recovered"]:
                assert clock() - killed < 60 + 600, "no recovery"
                await step()
            back = next(m for m in rec.messages if m.payload.phase == "recovered").payload
            notices = [p for p in rec.payloads if isinstance(p, CameraHealthNotice)]
            assert [(n.condition, n.phase) for n in notices] == [
                ("stream_lost", "alert"),
                ("stream_lost", "recovered"),
            ]
            alert = notices[0]
            # raised 30 s (module clock) after the last frame, which came just before the kill
            assert 29.0 <= alert.duration_s <= 33.0, alert
            assert "Gate: no picture (stream lost) for 30 s" in alert.message
            assert back.duration_s >= 60 - 2, back  # the outage, as the module's clock saw it
            assert clock() - killed >= 60
            await botapi.wait_for("sendMessage", count=2, timeout=10)
            texts = [c.params["text"] for c in botapi.calls_to("sendMessage")]
            assert texts[0].startswith("Camera alert: Gate: no picture")
            assert texts[1].startswith("Camera recovered: Gate: the picture is back")
    finally:
        server.kill()


async def test_health_alerts_follow_mutes_but_not_disarming(
    tmp_path: Path,
    botapi: BotApiEmulator,  # noqa: F811
) -> None:
    from spyoncino.schemas.control import ControlState

    data = {
        "storage": {"root": str(tmp_path)},
        "cameras": {"cam": {"source": "cam.mp4", "name": "Front door"}},
        "telegram": {
            "token": TOKEN,
            "chat_ids": [CHAT],
            "api_base_url": botapi.base_url,
            "commands": False,
            "outbox": FAST_OUTBOX,
        },
    }
    async with BusHarness() as h:
        tg = h.build(TelegramOutput, data, name="telegram")
        await tg.configure(tg.ctx.app)
        await tg.start()

        async def notice(n: int) -> None:
            now = time.time()
            await h.bus.publish(
                topics.CAMERA_HEALTH.at(camera="cam", phase="alert"),
                CameraHealthNotice(
                    notice_id=f"health-cam-black-{n}",
                    camera_id="cam",
                    camera_name="Front door",
                    condition="black",
                    phase="alert",
                    since=now - 30,
                    at=now,
                    duration_s=30,
                    message=f"Front door: the picture is black or uniform for 30 s ({n}).",
                ),
            )
            await h.bus.drain()

        await h.bus.publish(topics.CONTROL_STATE.name, ControlState(armed=False))
        await notice(1)  # disarmed: still sent
        await botapi.wait_for("sendMessage", count=1, timeout=10)
        muted = ControlState(armed=True, muted_until={"cam": time.time() + 3600})
        await h.bus.publish(topics.CONTROL_STATE.name, muted)
        await notice(2)  # that camera muted: not sent
        await h.bus.publish(topics.CONTROL_STATE.name, ControlState(armed=True))
        await notice(3)
        await botapi.wait_for("sendMessage", count=2, timeout=10)
        texts = [c.params["text"] for c in botapi.calls_to("sendMessage")]
        assert ["(1)" in texts[0], "(3)" in texts[1]] == [True, True], texts
        assert len(texts) == 2
