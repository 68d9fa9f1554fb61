"""The whole box (``spyoncino run`` in a subprocess) replaying the bundled sample clip with MQTT
on, against a real mosquitto on 127.0.0.1: what Home Assistant sees, what its switch does to the
Telegram alerts (Bot API emulator), and a broker that goes away mid-replay.

Everything synchronises on messages (MQTT, the emulator's calls, the box's JSON log, the event
index), each with a timeout; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest_asyncio
import yaml

from tests.support.botapi import BotApiEmulator
from tests.support.mqtt_broker import Broker, Watcher, check_discovery, require_mosquitto, retained
from tests.support.wait import until

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "spyoncino" / "data" / "sample.mp4"
CHAT = 222
BASE = "spyoncino/box"
PUBLIC = "http://box.test:8080"


@pytest_asyncio.fixture
async def watch(broker: Broker) -> AsyncIterator[Watcher]:
    # a persistent session, like Home Assistant's: QoS 1 messages wait while it is away
    w = Watcher(broker, ["spyoncino/#", "homeassistant/#"], session="ha-test")
    await w.start()
    yield w
    await w.stop()


def write_config(
    tmp: Path, broker: Broker, file: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    cfg: dict[str, Any] = {
        "cameras": {"street": {"name": "Street", "source": str(SAMPLE), "file": file}},
        "storage": {"root": str(tmp / "var")},
        # off, but its public URL is what links in events and captions point at
        "status_page": {"enabled": False, "public_url": PUBLIC},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "device_id": "box",
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 2.0,
            "labels": ["person", "car"],
        },
        "log": {"format": "json", "level": "info"},
        **(extra or {}),
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


class Box:
    """``spyoncino run`` in a subprocess, its JSON log lines collected."""

    def __init__(self, config: Path, cwd: Path, *, forever: bool) -> None:
        self.args = ["run", "--config", str(config), *(["--forever"] if forever else [])]
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPYONCINO_")}
        env["PYTHONPATH"] = str(REPO)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "spyoncino",
            *self.args,
            cwd=self.cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    async def wait_log(self, event: str, timeout: float) -> dict[str, Any]:
        def logged() -> dict[str, Any] | None:
            for line in self.lines:
                if line.get("event") == event:
                    return line
            assert self.proc is not None
            assert self.proc.returncode is None, f"box exited before logging {event}"
            return None

        # polled: the reader task appends the box's lines; it fires no event
        found: dict[str, Any] = await until(logged, timeout, f"{event!r} in the box's log")
        return found

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)
        return rc

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def events_of(watch: Watcher, start: int = 0) -> list[dict[str, Any]]:
    """Event documents in arrival order. QoS 1 is at least once: a message in flight when the
    broker went down comes again after it (the same document), so exact repeats are dropped."""
    seen: set[bytes] = set()
    out = []
    for m in watch.since(start):
        if m.topic == f"{BASE}/events" and m.payload not in seen:
            seen.add(m.payload)
            out.append(m.json())
    return out


def index_events(root: Path, column: str = "started_at") -> list[tuple[str, float]]:
    """(event id, its ``column``: started_at or updated_at) from the box's index."""
    assert column in ("started_at", "updated_at")
    db = root / "var" / "events.sqlite3"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [
            (eid, float(at))
            for eid, at in conn.execute(
                f"SELECT id, {column} FROM events ORDER BY started_at"  # noqa: S608 (fixed)
            )
        ]
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        conn.close()


def check_event_order(docs: list[dict[str, Any]]) -> None:
    """Per event: started once and first, ended last; every doc versioned."""
    phases: dict[str, list[str]] = {}
    for d in docs:
        assert d["schema_version"] == 1
        phases.setdefault(d["event_id"], []).append(d["type"])
    for eid, seq in phases.items():
        assert seq[0] == "started", (eid, seq)
        assert seq[-1] == "ended" and seq.count("started") == 1, (eid, seq)
        # the tracker may resume an event that ended (its person re-found within the
        # cooldown): 'updated' then follows 'ended', and another 'ended' closes it
        assert set(seq[1:-1]) <= {"updated", "ended"}, (eid, seq)


def check_started_in_order(docs: list[dict[str, Any]], indexed: list[str]) -> None:
    """Each indexed event started exactly once on the broker, in the order they started."""
    started = [d for d in docs if d["type"] == "started"]
    assert sorted(d["event_id"] for d in started) == sorted(indexed)
    times = [d["started_at"] for d in started]
    assert times == sorted(times)


async def test_sample_replay_as_home_assistant_sees_it(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    box = Box(write_config(tmp_path, broker, {"pace": "lockstep"}), tmp_path, forever=False)
    await box.start()
    try:
        assert await box.wait_exit(300) == 0
    finally:
        await box.stop()
    # discovery: retained, valid, one device
    held = await retained(broker, ["spyoncino/#", "homeassistant/#"], "test/settle")
    configs = {t: m.json() for t, m in held.items() if t.endswith("/config") and m.payload}
    assert len(configs) >= 10
    assert not check_discovery(configs, "homeassistant", BASE)
    assert "homeassistant/binary_sensor/box/street_person/config" in configs
    # the snapshot topic holds the latest event snapshot, a JPEG that decodes
    snap = held[f"{BASE}/street/snapshot"].payload
    img = cv2.imdecode(np.frombuffer(snap, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 100
    assert held[f"{BASE}/availability"].text == "offline"  # a clean stop says goodbye
    # the camera's state (from the health reports) and the box's own
    cam = held[f"{BASE}/street/state"].json()
    assert cam["schema_version"] == 1 and isinstance(cam["state"], str) and cam["fps"] >= 0
    dev = held[f"{BASE}/state"].json()
    assert dev["armed"] is True and dev["version"] and dev["disk_free_bytes"] > 0
    assert dev["cameras"] == ["street"] and dev["uptime_s"] > 0
    assert held[f"{BASE}/armed"].text == "ON" and held[f"{BASE}/street/detect"].text == "ON"
    # motion on then off, a person count that rises and falls back to 0
    motion = [m.text for m in watch.on(f"{BASE}/street/motion")]
    assert "ON" in motion and motion[-1] == "OFF" and motion.index("ON") < len(motion) - 1
    persons = [int(m.text) for m in watch.on(f"{BASE}/street/person")]
    assert max(persons) >= 1 and persons[-1] == 0
    # every event of the index, in order, with its link
    docs = events_of(watch)
    check_event_order(docs)
    indexed = [eid for eid, _ in index_events(tmp_path)]
    assert indexed and {d["event_id"] for d in docs} == set(indexed)
    check_started_in_order(docs, indexed)
    assert all(d["url"] == f"{PUBLIC}/events/{d['event_id']}" for d in docs)
    assert any("snapshot_url" in d for d in docs)


async def test_home_assistant_switch_disarms_and_rearms_telegram_alerts(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    async with BotApiEmulator() as emu:
        telegram = {
            "token": "123456:TEST-token",
            "chat_ids": [CHAT],
            "api_base_url": emu.base_url,
            "status_page_url": PUBLIC,
            "followup": "none",
            "poll_timeout_s": 2,
            "outbox": {"min_interval_s": 0.0, "coalesce_after": 0, "camera_budget": 0},
        }
        cfg = write_config(
            tmp_path, broker, {"pace": "realtime", "loop": True}, {"telegram": telegram}
        )
        box = Box(cfg, tmp_path, forever=True)
        await box.start()
        try:
            await watch.wait_topic(f"{BASE}/armed", "ON", 60)
            mark = len(watch.messages)
            await watch.publish(f"{BASE}/set/armed", "OFF")
            await watch.wait_topic(f"{BASE}/armed", "OFF", 20, start=mark)
            state = await watch.wait_for(
                lambda m: m.topic == f"{BASE}/state" and m.json()["armed"] is False, 20, mark
            )
            assert state.json()["schema_version"] == 1
            # the next person while disarmed: its snapshot is taken, no alert goes out
            off = len(watch.messages)
            first = await watch.wait_for(
                lambda m: m.topic == f"{BASE}/events" and m.json()["type"] == "started", 90, off
            )
            quiet_id = first.json()["event_id"]
            await watch.wait_for(
                lambda m: (
                    m.topic == f"{BASE}/events"
                    and m.json()["event_id"] == quiet_id
                    and "snapshot_url" in m.json()
                ),
                90,
                off,
            )
            # and ON again: the next person is alerted
            await watch.publish(f"{BASE}/set/armed", "ON")
            on = await watch.wait_topic(f"{BASE}/armed", "ON", 20, start=off)
            on_at = watch.messages.index(on)
            nxt = await watch.wait_for(
                lambda m: m.topic == f"{BASE}/events" and m.json()["type"] == "started",
                120,
                on_at,
            )
            alert_id = nxt.json()["event_id"]
            await emu.wait_for(
                "sendPhoto",
                timeout=60,
                predicate=lambda c: f"/events/{alert_id}" in c.params.get("caption", ""),
            )
            captions = [c.params.get("caption", "") for c in emu.calls_to("sendPhoto")]
            assert not [c for c in captions if f"/events/{quiet_id}" in c]
        finally:
            await box.stop()


async def test_broker_outage_mid_replay_loses_no_event(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    """The broker goes away after the first event and comes back once the box has indexed an
    event during the outage (a new activity, or the open one growing: on this footage it is
    one activity) (a few seconds of footage here: the mechanism, a bounded queue
    and a reconnect loop with capped backoff, does not change with the length; 30 s would
    only make the test slower). Every event then arrives after the reconnect, in order."""
    cfg = write_config(tmp_path, broker, {"pace": "realtime"})
    box = Box(cfg, tmp_path, forever=True)
    await box.start()
    try:
        await watch.wait_for(
            lambda m: m.topic == f"{BASE}/events" and m.json()["type"] == "started", 90
        )
        broker.stop()
        down_wall = time.time()
        await box.wait_log("mqtt_disconnected", 30)
        # polled: the index commits every 2 s to SQLite, which fires no event
        await until(
            lambda: [e for e, at in index_events(tmp_path, "updated_at") if at > down_wall],
            60,
            "an event indexed during the outage",
            interval=0.2,
        )
        mark = len(watch.messages)
        broker.start()
        # live messages only: the watcher's re-subscription also brings the retained copies
        online = await watch.wait_for(
            lambda m: m.topic == f"{BASE}/availability" and m.text == "online" and not m.retain,
            60,
            mark,
        )
        rediscovered = await watch.wait_for(
            lambda m: m.topic.endswith("/config") and not m.retain, 30, mark
        )
        assert rediscovered.at >= online.at

        # the clip ends; wait until every indexed event has its 'ended' on the broker
        def all_ended() -> list[tuple[str, float]]:
            indexed = index_events(tmp_path)
            ended = {d["event_id"] for d in events_of(watch) if d["type"] == "ended"}
            return indexed if indexed and {e for e, _ in indexed} <= ended else []

        # polled: the index (SQLite) against what the watcher has seen
        indexed = await until(all_ended, 120, "every indexed event ended on MQTT", interval=0.2)
        docs = events_of(watch)
        check_event_order(docs)
        check_started_in_order(docs, [e for e, _ in indexed])
        outage = {e for e, at in index_events(tmp_path, "updated_at") if at > down_wall}
        late = {d["event_id"] for d in events_of(watch, mark)}
        assert outage <= late  # the outage's events came after the broker did
    finally:
        await box.stop()


async def test_a_fleet_of_three_boxes_on_one_broker(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    """Three real runtimes (``spyoncino run`` each, the clip looping, detection off to spare
    the shared cores) with their own device ids: three devices in discovery, no shared topic,
    and a command to one box changes that box only."""
    boxes = []
    try:
        for i in range(3):
            root = tmp_path / f"box{i}"
            root.mkdir()
            extra = {
                "motion": {"enabled": False},
                "detector": {"enabled": False},
                "mqtt": {"host": broker.host, "port": broker.port, "device_id": f"box{i}"},
            }
            cfg = write_config(root, broker, {"pace": "realtime", "loop": True}, extra)
            box = Box(cfg, root, forever=True)
            await box.start()
            boxes.append(box)
        for i in range(3):
            await watch.wait_topic(f"spyoncino/box{i}/armed", "ON", 90)
            # a snapshot needs a picture: on the broker is before the camera's first frame
            await boxes[i].wait_log("camera_streaming", 90)
        held = await retained(broker, ["homeassistant/#"], "test/settle")
        configs = {t: m.json() for t, m in held.items() if t.endswith("/config") and m.payload}
        by_box: dict[str, dict[str, Any]] = {}
        for topic, doc in configs.items():
            by_box.setdefault(topic.split("/")[2], {})[topic] = doc
        assert sorted(by_box) == ["box0", "box1", "box2"]
        for name, docs in by_box.items():
            assert not check_discovery(docs, "homeassistant", f"spyoncino/{name}")
        uids = [d["unique_id"] for d in configs.values()]
        assert len(uids) == len(set(uids))
        # one box disarmed, another asked for a snapshot: the others do not move
        mark = len(watch.messages)
        await watch.publish("spyoncino/box1/set/armed", "OFF")
        await watch.wait_topic("spyoncino/box1/armed", "OFF", 30, start=mark)
        await watch.publish("spyoncino/box2/street/snapshot/take", "PRESS")
        snap = await watch.wait_topic("spyoncino/box2/street/snapshot", None, 30, start=mark)
        assert snap.payload[:3] == b"\xff\xd8\xff"
        after = watch.since(mark)
        assert not [
            m
            for m in after
            if m.topic.startswith("spyoncino/box0/") and m.topic.endswith(("armed", "snapshot"))
        ]
        assert not [m for m in after if m.topic == "spyoncino/box2/armed"]
        assert not [m for m in after if m.topic == "spyoncino/box1/street/snapshot"]
    finally:
        for box in boxes:
            await box.stop()


async def test_wrong_broker_password_leaves_the_box_running(tmp_path: Path) -> None:
    """Wrong credentials: the log names the broker and the cause, MQTT is not ready, and the
    replay runs to its end like without MQTT (detection off: only the run matters here)."""
    require_mosquitto()
    strict = Broker(tmp_path / "strict", users={"spyoncino": "right"})
    strict.start()
    try:
        extra = {
            "detector": {"enabled": False},
            "mqtt": {
                "host": strict.host,
                "port": strict.port,
                "username": "spyoncino",
                "password": "pw-Zq81x-wrong",
                "device_id": "box",
            },
        }
        cfg = write_config(tmp_path, strict, {"pace": "lockstep"}, extra)
        box = Box(cfg, tmp_path, forever=False)
        await box.start()
        try:
            assert await box.wait_exit(300) == 0
        finally:
            await box.stop()
        failed = [line for line in box.lines if line.get("event") == "mqtt_connect_failed"]
        assert failed, "no mqtt_connect_failed in the log"
        assert failed[0]["broker"] == f"127.0.0.1:{strict.port}"
        assert "Not authorized" in failed[0]["error"] and "mqtt.password" in failed[0]["error"]
        assert not [line for line in box.lines if "pw-Zq81x" in json.dumps(line)]
        assert any(line.get("event") == "module_start_failed" for line in box.lines)
    finally:
        strict.stop()
