"""The MQTT module against a real mosquitto on 127.0.0.1: what Home Assistant and a user's
scripts see on the broker, and what their commands do on the bus.

The bus side is the in-process harness (events published as the tracker and the snapshot
writer publish them); the broker side is a real broker and real clients. Every wait is on a
message with a timeout, never a sleep. The full box replaying footage is in
tests/integration/test_mqtt_replay.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import pytest_asyncio

from spyoncino.core.contracts import ModuleConfigError, ModuleNotReady
from spyoncino.modules.output.mqtt import MqttOutput
from spyoncino.modules.output.mqtt._queue import PublishQueue
from spyoncino.schemas import topics
from spyoncino.schemas.control import ConfigSnapshot, ConfigUpdate, ControlCommand, ControlState
from spyoncino.schemas.events import EventNotice, TrackedObject
from spyoncino.schemas.frames import Box
from spyoncino.testing import BusHarness
from tests.support.alerts import publish_event
from tests.support.mqtt_broker import (
    Broker,
    Received,
    Watcher,
    check_discovery,
    require_mosquitto,
    retained,
)
from tests.support.wait import until

CAMERAS = {
    "front": {"source": "rtsp://cam/front", "name": "Front door"},
    "yard": {"source": "rtsp://cam/yard"},
}


# --- fixtures ------------------------------------------------------------------------------------
@pytest_asyncio.fixture
async def watch(broker: Broker) -> AsyncIterator[Watcher]:
    w = Watcher(broker, ["spyoncino/#", "homeassistant/#"])
    await w.start()
    yield w
    await w.stop()


def mqtt_cfg(broker: Broker, **extra: Any) -> dict[str, Any]:
    return {
        "host": broker.host,
        "port": broker.port,
        "device_id": "box1",
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 1.0,
        "state_interval_s": 600,
        **extra,
    }


async def start_mqtt(
    h: BusHarness, broker: Broker, cameras: dict[str, Any] | None = None, **extra: Any
) -> MqttOutput:
    mod = h.build(
        MqttOutput,
        {"cameras": cameras or CAMERAS, "mqtt": mqtt_cfg(broker, **extra)},
        name="mqtt",
    )
    assert isinstance(mod, MqttOutput)
    await mod.configure(mod.ctx.app)
    await mod.start()
    return mod


def notice(
    event_id: str, phase: str, camera: str = "front", persons: int = 1, kind: str = "object"
) -> EventNotice:
    now = time.time()
    objs = tuple(
        TrackedObject(track_id=i, label="person", score=0.9, box=Box(x1=0, y1=0, x2=10, y2=10))
        for i in range(persons if phase != "ended" else 0)
    )
    return EventNotice(
        event_id=event_id,
        camera_id=camera,
        kind=kind,  # type: ignore[arg-type]
        phase=phase,  # type: ignore[arg-type]
        labels=("person",),
        top_score=0.9,
        started_at=now,
        updated_at=now,
        ended_at=now if phase == "ended" else None,
        objects=objs,
    )


async def pub(h: BusHarness, ev: EventNotice) -> None:
    await h.bus.publish(topics.EVENT.at(kind=ev.kind, phase=ev.phase), ev)


def configs_of(messages: dict[str, Received] | list[Received]) -> dict[str, Any]:
    items = messages.values() if isinstance(messages, dict) else messages
    return {
        m.topic: m.json()
        for m in items
        if m.topic.startswith("homeassistant/") and m.topic.endswith("/config") and m.payload
    }


# --- tests ---------------------------------------------------------------------------------------
async def test_discovery_is_retained_and_valid_for_home_assistant(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        mod = await start_mqtt(h, broker)
        await watch.wait_topic("spyoncino/box1/yard/detect", "ON")  # the last initial state
        held = await retained(broker, ["spyoncino/#", "homeassistant/#"], "test/settle")
        configs = configs_of(held)
        assert not check_discovery(configs, "homeassistant", "spyoncino/box1")
        comps = {t.split("/")[1] for t in configs}
        assert comps == {"camera", "binary_sensor", "sensor", "switch", "button", "update"}
        # per camera: snapshot camera, motion, per-label occupancy and count, fps, detect, button
        for cam in CAMERAS:
            assert f"homeassistant/camera/box1/{cam}_snapshot/config" in configs
            assert f"homeassistant/binary_sensor/box1/{cam}_motion/config" in configs
            assert f"homeassistant/binary_sensor/box1/{cam}_person/config" in configs
            assert f"homeassistant/switch/box1/{cam}_detect/config" in configs
            assert f"homeassistant/button/box1/{cam}_take_snapshot/config" in configs
        assert configs["homeassistant/switch/box1/armed/config"]["command_topic"] == (
            "spyoncino/box1/set/armed"
        )
        dev = configs["homeassistant/switch/box1/armed/config"]["device"]
        assert dev["sw_version"] and dev["model"] and dev["name"] == "Spyoncino box1"
        assert held["spyoncino/box1/availability"].text == "online"
        assert held["spyoncino/box1/front/motion"].text == "OFF"
        assert held["spyoncino/box1/front/person"].text == "0"
        assert mod.health().state == "ok"


async def test_events_in_order_motion_and_counts_follow_the_events(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        await start_mqtt(h, broker)
        base = "spyoncino/box1"
        await watch.wait_topic(f"{base}/front/motion", "OFF")
        await watch.wait_topic(f"{base}/yard/detect", "ON")  # the last of the initial states
        mark = len(watch.messages)
        await pub(h, notice("e1", "started"))
        await pub(h, notice("e2", "started", persons=1))
        await pub(h, notice("e1", "updated", persons=2))
        await watch.wait_topic(f"{base}/front/person", "3", start=mark)
        await pub(h, notice("e1", "ended"))
        await pub(h, notice("e2", "ended"))
        await watch.wait_topic(f"{base}/front/motion", "OFF", start=mark)
        events = [m.json() for m in watch.since(mark) if m.topic == f"{base}/events"]
        assert [(e["event_id"], e["type"]) for e in events] == [
            ("e1", "started"),
            ("e2", "started"),
            ("e1", "updated"),
            ("e1", "ended"),
            ("e2", "ended"),
        ]
        assert all(e["schema_version"] == 1 and e["camera"] == "front" for e in events)
        assert events[0]["camera_name"] == "Front door"
        motion = [m.text for m in watch.since(mark) if m.topic == f"{base}/front/motion"]
        assert motion == ["ON", "OFF"]
        counts = [m.text for m in watch.since(mark) if m.topic == f"{base}/front/person"]
        # states are latest-wins: a value may be skipped, never invented
        assert "3" in counts and counts[-1] == "0" and set(counts) <= {"1", "2", "3", "0"}
        # the other camera never moved
        assert not [m for m in watch.since(mark) if m.topic.startswith(f"{base}/yard/")]


async def test_event_snapshot_is_published_retained_as_jpeg(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        await start_mqtt(h, broker)
        await publish_event(h.bus, tmp_path, "e1", camera="front")
        # on the broker once the file is read (in the executor): not when the counters move
        topic = "spyoncino/box1/front/snapshot"
        await watch.wait_for(lambda m: m.topic == topic and bool(m.payload), 10)
        held = await retained(broker, [topic], "test/settle")
        img = cv2.imdecode(
            np.frombuffer(held[topic].payload, np.uint8),
            cv2.IMREAD_COLOR,
        )
        assert img is not None and img.shape[:2] == (240, 320)


async def test_commands_travel_on_the_bus_and_state_comes_back(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        control = h.record(topics.CONTROL.name)
        updates = h.record(topics.CONFIG_UPDATE.name)
        await start_mqtt(h, broker)
        base = "spyoncino/box1"
        await watch.wait_topic(f"{base}/availability", "online")
        await watch.publish(f"{base}/set/armed", "OFF")
        msg = await control.wait_for()
        assert isinstance(msg.payload, ControlCommand)
        assert (msg.payload.command, msg.payload.source) == ("disarm", "mqtt")
        # the arming module answers; the new state goes out
        await h.bus.publish(topics.CONTROL_STATE.name, ControlState(armed=False))
        await watch.wait_topic(f"{base}/armed", "OFF")
        await watch.publish(f"{base}/front/set/mute", "120")
        mute = (await control.wait_for(lambda m: m.payload.command == "mute")).payload
        assert (mute.camera_id, mute.duration_s) == ("front", 120.0)
        await watch.publish(f"{base}/yard/snapshot/take", "PRESS")
        snap = (await control.wait_for(lambda m: m.payload.command == "snapshot")).payload
        assert snap.camera_id == "yard"
        await watch.publish(f"{base}/yard/set/detect", "OFF")
        upd = (await updates.wait_for()).payload
        assert isinstance(upd, ConfigUpdate)
        assert upd.changes == {"cameras": {"yard": {"detector": {"enabled": False}}}}
        await h.bus.publish(
            topics.CONFIG_SNAPSHOT.name,
            ConfigSnapshot(
                version=2, config={"cameras": {"yard": {"detector": {"enabled": False}}}}
            ),
        )
        await watch.wait_topic(f"{base}/yard/detect", "OFF")


async def test_a_command_sent_while_the_box_starts_is_obeyed_once_it_has(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    """The box is on the broker before the modules that obey commands (arming, snapshot) have
    started; a command retained on the broker, or sent by an automation as the box comes
    online, reaches the module at once. It was handed to a bus nobody listened on yet, and
    lost; now it waits until every module has started."""
    base = "spyoncino/box1"
    await watch.publish(f"{base}/set/armed", "OFF", retain=True)
    async with BusHarness(storage_root=tmp_path) as h:
        mod = h.build(MqttOutput, {"cameras": CAMERAS, "mqtt": mqtt_cfg(broker)}, name="mqtt")
        assert isinstance(mod, MqttOutput)
        mod.ctx.started.clear()  # the orchestrator is still starting the other modules
        await mod.configure(mod.ctx.app)
        await mod.start()
        await until(lambda: mod.metrics()["commands_held"] == 1, what="the command held")
        control = h.record(topics.CONTROL.name)  # arming subscribes as it starts
        mod.ctx.started.set()
        msg = await control.wait_for()
        assert isinstance(msg.payload, ControlCommand)
        assert (msg.payload.command, msg.payload.source) == ("disarm", "mqtt")
        assert mod.metrics()["commands"] == 1


GARBAGE = [
    b"",
    b"\xff\xfe\x00garbage",
    b"ON\x00",
    b"maybe",
    b"-5",
    b"nan",
    b"inf",
    b"1e309",
    b"99999999999",
    b'{"json": "object"}',
    b"A" * 300,
    b"X" * 1_000_000,
]


async def test_garbage_on_every_command_topic_is_counted_and_harmless(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    """Bounded fuzz: every garbage payload on every command topic (and unknown cameras and
    verbs); the module counts each, stays connected and still obeys a good command after."""
    async with BusHarness(storage_root=tmp_path) as h:
        control = h.record(topics.CONTROL.name)
        mod = await start_mqtt(h, broker)
        base = "spyoncino/box1"
        await watch.wait_topic(f"{base}/availability", "online")
        command_topics = [
            f"{base}/set/armed",
            f"{base}/set/mute",
            f"{base}/front/set/detect",
            f"{base}/front/set/mute",
            f"{base}/front/set/armed",
        ]
        sent = 0
        for topic in command_topics:
            for payload in GARBAGE:
                if payload == b"" and topic.endswith("/mute"):
                    continue  # an empty mute is 'the default length', a valid command
                await watch.publish(topic, payload)
                sent += 1
        for topic in (f"{base}/nocam/set/detect", f"{base}/front/set/reboot", f"{base}/set/x"):
            await watch.publish(topic, b"ON")
            sent += 1
        await watch.publish(f"{base}/set/armed", "ON")
        arm = await control.wait_for(lambda m: m.payload.command == "arm", timeout=20)
        assert arm.payload.source == "mqtt"
        assert mod.metrics()["commands_rejected"] == sent
        assert mod.metrics()["commands"] == 1
        assert mod.health().state == "ok" and mod.connected


async def test_broker_down_at_start_is_not_ready_naming_the_broker(tmp_path: Path) -> None:
    require_mosquitto()
    b = Broker(tmp_path / "broker")  # configured, never started: the port refuses
    async with BusHarness(storage_root=tmp_path) as h:
        mod = h.build(MqttOutput, {"mqtt": mqtt_cfg(b, connect_timeout_s=2)}, name="mqtt")
        await mod.configure(mod.ctx.app)
        with pytest.raises(ModuleNotReady, match=f"127.0.0.1:{b.port}"):
            await mod.start()


async def test_a_broker_away_past_the_retries_is_waited_for_not_given_up(
    tmp_path: Path, watch: Watcher, broker: Broker
) -> None:
    """The orchestrator quarantines a module after runtime.max_start_attempts; for a broker
    that is merely away (the house server rebooting too) the last attempt starts anyway and
    the module connects, with what happened meanwhile, once the broker is back."""
    broker.stop()
    async with BusHarness(storage_root=tmp_path) as h:
        data = {"cameras": CAMERAS, "mqtt": mqtt_cfg(broker), "runtime": {"max_start_attempts": 2}}
        mod = h.build(MqttOutput, data, name="mqtt")
        assert isinstance(mod, MqttOutput)
        await mod.configure(mod.ctx.app)
        with pytest.raises(ModuleNotReady):
            await mod.start()
        await mod.stop()
        await mod.start()  # the last attempt: up, degraded, trying
        assert not mod.connected and mod.health().state == "degraded"
        await pub(h, notice("while-away", "started"))
        broker.start()
        await watch.connected(30)
        await watch.wait_topic("spyoncino/box1/availability", "online", 30)
        got = await watch.wait_topic("spyoncino/box1/events", None, 30)
        assert got.json()["event_id"] == "while-away"
        assert mod.connected and mod.health().state == "ok"


async def test_wrong_credentials_say_so_and_name_the_broker(tmp_path: Path) -> None:
    require_mosquitto()
    b = Broker(tmp_path / "broker", users={"box": "right-password"})
    b.start()
    try:
        async with BusHarness(storage_root=tmp_path) as h:
            cfg = {"mqtt": mqtt_cfg(b, username="box", password="wrong")}
            mod = h.build(MqttOutput, cfg, name="mqtt")
            await mod.configure(mod.ctx.app)
            with pytest.raises(ModuleNotReady) as err:
                await mod.start()
            text = str(err.value)
            assert f"127.0.0.1:{b.port}" in text
            assert "mqtt.username" in text and "wrong" not in text
            good = h.build(
                MqttOutput,
                {"mqtt": mqtt_cfg(b, username="box", password="right-password")},
                name="mqtt",
            )
            await good.configure(good.ctx.app)
            await good.start()
            assert good.connected
    finally:
        b.stop()


async def test_broker_outage_reconnects_and_delivers_the_outage_events_in_order(
    tmp_path: Path, broker: Broker
) -> None:
    """The broker is away for as long as it takes to publish 20 events on the bus (a few
    seconds here; the length does not change the mechanism: a bounded queue and a reconnect
    loop with capped backoff). The watcher holds a persistent session, like Home Assistant,
    so it sees what the box publishes right after the restart."""
    watch = Watcher(broker, ["spyoncino/#", "homeassistant/#"], session="ha-like")
    await watch.start()
    try:
        async with BusHarness(storage_root=tmp_path) as h:
            mod = await start_mqtt(h, broker)
            base = "spyoncino/box1"
            await watch.wait_topic(f"{base}/availability", "online")
            broker.stop()
            await until(lambda: not mod.connected, 15, "the module noticed the outage")
            assert mod.health().state == "degraded"
            ids = [f"out{i:02d}" for i in range(20)]
            for eid in ids:
                await pub(h, notice(eid, "started"))
            mark = len(watch.messages)
            broker.start()
            # live messages only: the watcher's re-subscription brings retained copies too
            online = await watch.wait_for(
                lambda m: m.topic == f"{base}/availability" and m.text == "online" and not m.retain,
                30,
                start=mark,
            )
            last = await watch.wait_for(
                lambda m: m.topic == f"{base}/events" and m.json()["event_id"] == ids[-1],
                30,
                start=mark,
            )
            after = watch.since(mark)
            got = [m.json()["event_id"] for m in after if m.topic == f"{base}/events"]
            assert got == ids
            configs = [m for m in after if m.topic.endswith("/config") and not m.retain]
            assert configs and configs[0].at >= online.at and configs[0].at <= last.at
            assert mod.metrics()["reconnects"] >= 1 and mod.connected
    finally:
        await watch.stop()


async def test_a_full_outage_buffer_keeps_the_newest_and_summarises_the_rest() -> None:
    q = PublishQueue(max_events=3, summary_topic="p/events")
    for i in range(5):
        q.event("p/events", f"e{i}".encode())
    q.state("p/armed", b"ON")
    q.state("p/armed", b"OFF")
    out = []
    while (item := q.pop()) is not None:
        out.append((item.topic, item.payload))
    summary = json.loads(out[0][1])
    assert summary["type"] == "summary" and summary["dropped_events"] == 2
    assert [p for _, p in out[1:4]] == [b"e2", b"e3", b"e4"]
    assert out[4:] == [("p/armed", b"OFF")]


async def test_home_assistant_restart_gets_discovery_again(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        mod = await start_mqtt(h, broker)
        await watch.wait_topic("homeassistant/switch/box1/armed/config")
        mark = len(watch.messages)
        await watch.publish("homeassistant/status", "online")
        again = await watch.wait_topic("homeassistant/switch/box1/armed/config", start=mark)
        assert again.json()["unique_id"] == "spyoncino_box1_armed"
        assert not again.retain  # a live re-publish, not the broker's retained copy
        await watch.wait_topic("homeassistant/button/box1/yard_take_snapshot/config", start=mark)
        assert mod.health().state == "ok"


async def test_discovery_off_removes_the_configs(tmp_path: Path, broker: Broker) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        mod = await start_mqtt(h, broker)
        await mod.stop()
    assert configs_of(await retained(broker, ["homeassistant/#"], "test/settle"))
    async with BusHarness(storage_root=tmp_path) as h:
        await start_mqtt(h, broker, discovery=False)
        held = await retained(broker, ["homeassistant/#"], "test/settle")
        assert not configs_of(held)


async def test_a_fleet_of_three_boxes_shares_one_broker_without_collisions(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    """Three runtimes (bus, executor, module) with their own device ids on one broker: three
    Home Assistant devices, disjoint topics and unique ids, and a command reaches one box."""
    harnesses = [BusHarness(storage_root=tmp_path / f"b{i}") for i in range(3)]
    records = []
    try:
        for i, h in enumerate(harnesses):
            records.append(h.record(topics.CONTROL.name))
            await start_mqtt(h, broker, device_id=f"box{i}")
        for i in range(3):
            await watch.wait_topic(f"spyoncino/box{i}/availability", "online")
            await watch.wait_topic(f"homeassistant/button/box{i}/yard_take_snapshot/config")
        held = await retained(broker, ["homeassistant/#"], "test/settle")
        configs = configs_of(held)
        by_box: dict[str, dict[str, Any]] = {}
        for topic, doc in configs.items():
            by_box.setdefault(topic.split("/")[2], {})[topic] = doc
        assert sorted(by_box) == ["box0", "box1", "box2"]
        for box, docs in by_box.items():
            assert not check_discovery(docs, "homeassistant", f"spyoncino/{box}")
        uids = [d["unique_id"] for d in configs.values()]
        assert len(uids) == len(set(uids))
        devices = {d["device"]["identifiers"][0] for d in configs.values()}
        assert len(devices) == 3
        await watch.publish("spyoncino/box1/set/armed", "OFF")
        msg = await records[1].wait_for()
        assert msg.payload.command == "disarm"
        await watch.publish("spyoncino/box2/front/snapshot/take", "PRESS")
        await records[2].wait_for()
        # box 0 heard nothing, box 1 only its own command
        assert not records[0].messages
        assert [m.payload.command for m in records[1].messages] == ["disarm"]
    finally:
        for h in harnesses:
            await h.__aexit__(None, None, None)


async def test_inert_without_a_host(tmp_path: Path) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        mod = h.build(MqttOutput, {}, name="mqtt")
        await mod.configure(mod.ctx.app)
        await mod.start()
        assert mod.health().state == "ok" and "disabled" in mod.health().detail


async def test_settings_no_retry_can_fix_are_refused_at_once(tmp_path: Path) -> None:
    cfg = {
        "host": "127.0.0.1",
        "username": None,
        "password": "pw",
        "tls": {"ca_file": str(tmp_path / "missing-ca.pem")},
    }
    async with BusHarness(storage_root=tmp_path) as h:
        mod = h.build(MqttOutput, {"mqtt": cfg}, name="mqtt")
        problems = MqttOutput.preflight(mod.ctx.app, None)
        assert problems == [
            "mqtt.password: set without mqtt.username",
            f"mqtt.tls.ca_file: file {str(tmp_path / 'missing-ca.pem')!r} does not exist",
        ]
        await mod.configure(mod.ctx.app)
        with pytest.raises(ModuleConfigError, match=r"missing-ca\.pem"):
            await mod.start()


async def test_a_camera_added_and_one_removed_while_running(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    """The status page can add a camera live: the new one is announced with its first states,
    the one that went is withdrawn (an empty retained config), without a restart."""
    async with BusHarness(storage_root=tmp_path) as h:
        mod = await start_mqtt(h, broker)
        await watch.wait_topic("spyoncino/box1/yard/detect", "ON")
        cameras = {"front": CAMERAS["front"], "gate": {"source": "rtsp://cam/gate"}}
        new = h.app_config({"mqtt": MqttOutput}, {"cameras": cameras, "mqtt": mqtt_cfg(broker)})
        await mod.check(new)
        await mod.configure(new)
        await watch.wait_topic("spyoncino/box1/gate/detect", "ON")
        held = await retained(broker, ["homeassistant/#", "spyoncino/#"], "test/settle")
        configs = configs_of(held)
        assert "homeassistant/camera/box1/gate_snapshot/config" in configs
        assert not [t for t in configs if "/yard_" in t]
        assert not check_discovery(configs, "homeassistant", "spyoncino/box1")
        assert held["spyoncino/box1/gate/motion"].text == "OFF"


async def test_an_activity_counts_only_its_objects_still_in_view(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        await start_mqtt(h, broker)
        base = "spyoncino/box1"
        await watch.wait_topic(f"{base}/yard/detect", "ON")
        mark = len(watch.messages)
        box = Box(x1=0, y1=0, x2=10, y2=10)
        gone = TrackedObject(track_id=1, label="person", score=0.9, box=box, present=False)
        here = TrackedObject(track_id=2, label="person", score=0.8, box=box)
        car = TrackedObject(track_id=3, label="car", score=0.7, box=box)
        ev = notice("a1", "updated").model_copy(
            update={"objects": (gone, here, car), "severity": "detection"}
        )
        await pub(h, ev)
        await watch.wait_topic(f"{base}/front/person", "1", start=mark)
        doc = next(m.json() for m in watch.since(mark) if m.topic == f"{base}/events")
        assert doc["severity"] == "detection"
        assert doc["counts"] == {"person": 2, "car": 1}
        assert doc["objects"] == 3
