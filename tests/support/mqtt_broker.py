"""A real Debian ``mosquitto`` on 127.0.0.1 for the MQTT tests, plus a small recording client.

The broker gets a random free port and a generated config (anonymous, or a password file made
with ``mosquitto_passwd``); ``stop``/``start`` take it away and bring it back on the same port
(persistence on, so retained messages and persistent sessions survive like on a real broker).
Tests that need it skip with a reason when mosquitto is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def require_mosquitto() -> str:
    pytest.importorskip("aiomqtt", reason="the 'mqtt' extra (aiomqtt) is not installed")
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    return MOSQUITTO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        self.binary = require_mosquitto()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            # as root, mosquitto would switch to its own user, who cannot read the tmp dir
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.dir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
        ]
        if users:
            if MOSQUITTO_PASSWD is None:
                pytest.skip("mosquitto_passwd is not installed (apt-get install mosquitto)")
            pwfile = self.dir / "passwd"
            pwfile.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", str(pwfile), user, password], check=True, timeout=30
                )
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")


class Watcher:
    """An MQTT client that records everything under some filters; ``wait_for`` is the sync.

    With ``session`` set, the broker keeps its subscriptions and queues QoS 1 messages while it
    is away (a persistent session), so nothing published around a broker restart is missed.
    """

    def __init__(
        self, broker: Broker, filters: list[str], *, session: str | None = None, **kw: Any
    ) -> None:
        self.broker = broker
        self.filters = filters
        self.session = session
        self.kw = kw
        self.messages: list[Received] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.client: Any = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), 10)

    async def _run(self) -> None:
        import aiomqtt

        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier=self.session,
                    clean_session=self.session is None,
                    **self.kw,
                ) as client:
                    self.client = client
                    await client.subscribe([(f, 1) for f in self.filters])
                    self._connected.set()
                    async for m in client.messages:
                        raw = m.payload if isinstance(m.payload, bytes) else b""
                        self.messages.append(Received(str(m.topic), raw, bool(m.retain)))
                        self._changed.set()
            except aiomqtt.MqttError:
                self.client = None
                self._connected.clear()
                # real time on purpose: a client's pause between connects while the broker
                # is away (a broken connection to a running broker must not spin)
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def connected(self, timeout: float = 10) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def publish(
        self, topic: str, payload: bytes | str, *, retain: bool = False, qos: int = 1
    ) -> None:
        await self.connected()
        await self.client.publish(topic, payload, qos=qos, retain=retain)

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def since(self, index: int) -> list[Received]:
        return self.messages[index:]

    async def wait_for(
        self, predicate: Callable[[Received], bool], timeout: float = 10.0, start: int = 0
    ) -> Received:
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            for m in self.messages[seen:]:
                if predicate(m):
                    return m
            seen = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                topics = sorted({m.topic for m in self.messages})
                raise TimeoutError(f"no matching MQTT message within {timeout}s; topics: {topics}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_topic(
        self, topic: str, payload: str | None = None, timeout: float = 10.0, start: int = 0
    ) -> Received:
        return await self.wait_for(
            lambda m: m.topic == topic and (payload is None or m.text == payload), timeout, start
        )


async def retained(broker: Broker, filters: list[str], settle: str) -> dict[str, Received]:
    """Everything the broker holds retained under ``filters``, read by a fresh client. The
    broker sends retained messages right after SUBACK; ``settle`` is a topic we publish to
    ourselves afterwards, so its arrival marks the end of the retained burst."""
    w = Watcher(broker, [*filters, settle])
    await w.start()
    try:
        await w.publish(settle, b"x")
        await w.wait_topic(settle)
        return {m.topic: m for m in w.messages if m.retain}
    finally:
        await w.stop()


# --- Home Assistant's MQTT discovery rules, from its documentation ------------------------------
# https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery and each platform's page:
# topic <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids [a-zA-Z0-9_-];
# a device block needs identifiers or connections and works only with unique_id; availability
# entries need a topic; each platform has its own required keys.
DISCOVERY_TOPIC = re.compile(
    r"^(?P<prefix>[^/]+)/(?P<component>[a-z_]+)/(?P<node>[a-zA-Z0-9_-]+)/"
    r"(?P<object>[a-zA-Z0-9_-]+)/config$"
)
REQUIRED = {
    "camera": ("topic",),
    "binary_sensor": ("state_topic",),
    "sensor": ("state_topic",),
    "switch": ("command_topic",),
    "button": ("command_topic",),
    "update": ("state_topic",),
}


def check_discovery(configs: dict[str, Any], prefix: str, state_prefix: str) -> list[str]:
    """Problems Home Assistant would have with these discovery messages (topic -> payload)."""
    problems: list[str] = []
    uids: dict[str, str] = {}
    devices: set[str] = set()
    for topic, doc in configs.items():
        m = DISCOVERY_TOPIC.match(topic)
        if m is None or m["prefix"] != prefix:
            problems.append(f"{topic}: not <prefix>/<component>/<node>/<object>/config")
            continue
        comp = m["component"]
        if comp not in REQUIRED:
            problems.append(f"{topic}: unexpected component {comp}")
            continue
        for key in (*REQUIRED[comp], "unique_id", "name", "device", "availability"):
            if key not in doc:
                problems.append(f"{topic}: missing {key}")
        uid = doc.get("unique_id")
        if uid in uids:
            problems.append(f"{topic}: unique_id {uid} also used by {uids[uid]}")
        uids[str(uid)] = topic
        dev = doc.get("device", {})
        if not (dev.get("identifiers") or dev.get("connections")):
            problems.append(f"{topic}: device without identifiers or connections")
        devices.update(dev.get("identifiers", []))
        for av in doc.get("availability", []):
            if not str(av.get("topic", "")).startswith(state_prefix + "/"):
                problems.append(f"{topic}: availability topic {av} outside {state_prefix}")
        for key, value in doc.items():
            if key.endswith("topic") and isinstance(value, str):
                if not value.startswith(state_prefix + "/"):
                    problems.append(f"{topic}: {key} {value} outside {state_prefix}")
                if "+" in value or "#" in value:
                    problems.append(f"{topic}: {key} {value} has a wildcard")
        if comp in ("switch", "binary_sensor") and {
            doc.get("payload_on"),
            doc.get("payload_off"),
        } != {
            "ON",
            "OFF",
        }:
            problems.append(f"{topic}: payload_on/off are not ON/OFF")
    if len(devices) != 1:
        problems.append(f"expected one device, got {sorted(devices)}")
    return problems
