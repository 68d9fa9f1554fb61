"""MQTT and Home Assistant: the box as one device on the house's broker.

Events, per-camera motion, object counts, the latest snapshot and the box's own state go out
under ``spyoncino/<device id>/...`` (JSON with ``schema_version``, or ON/OFF and numbers where
Home Assistant reads them directly); commands come in under the same prefix and travel on the
bus as ``control.command`` (arm, disarm, mute, snapshot) or ``config.update`` (per-camera
detection), carried out by the modules that own them. Home Assistant discovery configs are
published retained at every connect and whenever Home Assistant says ``online`` on its birth
topic. Inert without ``mqtt.host``.

This module *is* the bridge: the bus stays in-process and nothing else speaks MQTT (the unused
``BusAdapter`` protocol was removed, see docs/modules/mqtt.md).

Delivery: one connection, QoS 1 for events, commands and states. A broker that is down at
start makes the module not ready (the orchestrator retries); once up, the module reconnects on
its own with capped, jittered backoff while a bounded queue holds events in order and states
latest-wins (``_queue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import socket
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

from spyoncino import __version__
from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import (
    BaseModule,
    ModuleConfig,
    ModuleConfigError,
    ModuleContext,
    ModuleNotReady,
)
from spyoncino.helpers import updates
from spyoncino.helpers.files import disk_free
from spyoncino.schemas import topics
from spyoncino.schemas.control import ConfigSnapshot, ConfigUpdate, ControlState
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.health import CameraHealthNotice
from spyoncino.schemas.media import MediaArtifact
from spyoncino.schemas.status import HealthReport

from ._commands import Rejected, parse
from ._config import Config, setting_problems
from ._discovery import OFF, OFFLINE, ON, ONLINE, DeviceInfo, Layout, discovery_configs, safe_id
from ._queue import PublishQueue
from ._system import cpu_temperature, device_model

SCHEMA_VERSION = 1
DEFAULT_LABELS = ("person", "car", "cat", "dog")
_STARTED = time.monotonic()


class MqttOutput(BaseModule[Config]):
    category: ClassVar[Any] = "output"
    Config: ClassVar[type[ModuleConfig]] = Config
    follows_cameras: ClassVar[bool] = True  # subscriptions are per box; discovery follows

    @classmethod
    def preflight(cls, app: AppConfig, camera_id: str | None) -> list[str]:
        section = cls.name or "mqtt"
        return setting_problems(app.section(section, Config), section)

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.app_cfg: AppConfig | None = None
        self.layout = Layout("box", "spyoncino/box", "homeassistant")
        self.cameras: dict[str, str] = {}
        self.labels: dict[str, tuple[str, ...]] = {}
        self.detect: dict[str, bool] = {}
        self.queue: PublishQueue | None = None
        self.connected = False
        self.info = DeviceInfo("Spyoncino", "generic", __version__)
        self._aiomqtt: Any = None
        self._client: Any = None
        #: open events per camera (event id -> its latest notice), for motion and counts
        self._active: dict[str, dict[str, EventNotice]] = {}
        self._published_states: dict[str, bytes] = {}
        #: camera-health conditions raised now, per camera
        self._health_active: dict[str, set[str]] = {}
        #: the off-box copy backlog (s3 module) from the latest health report, for the state
        self._offbox: dict[str, Any] | None = None
        self._snap_relpath: dict[str, str] = {}
        self._armed: bool | None = None
        self._muted_until: dict[str, float] = {}
        self._cam_state: dict[str, tuple[str, float]] = {}
        self._rejections_logged: list[float] = []
        self.broker = ""
        self._failed_starts = 0
        self.stats = {
            "published": 0,
            "events": 0,
            "commands": 0,
            "commands_rejected": 0,
            "commands_held": 0,
            "reconnects": 0,
            "connect_failures": 0,
            "discovery_published": 0,
            "health_notices": 0,
        }

    # -- config --------------------------------------------------------------------------------
    async def check(self, app: AppConfig) -> None:
        cfg = self.config_of(app)
        old = self.cfg
        if self.queue is not None and cfg.model_dump(
            exclude={"state_interval_s", "max_command_bytes", "snapshot_max_bytes"}
        ) != old.model_dump(
            exclude={"state_interval_s", "max_command_bytes", "snapshot_max_bytes"}
        ):
            raise ModuleConfigError("mqtt: connection and topic settings take effect on restart")

    async def configure(self, app: AppConfig) -> None:
        await self.check(app)
        before = self._announcement()
        self.cfg = self.config_of(app)
        self.app_cfg = app
        self.cameras = app.camera_names(enabled_only=True)
        self.labels, self.detect = {}, {}
        for cid in self.cameras:
            det = getattr(app.cameras[cid], "detector", None)
            cam_labels = getattr(det, "labels", None) if det is not None else None
            chosen = self.cfg.labels or cam_labels or DEFAULT_LABELS
            self.labels[cid] = tuple(dict.fromkeys(str(x) for x in chosen))
            self.detect[cid] = bool(getattr(det, "enabled", True)) if det is not None else True
        device_id = self.cfg.device_id or safe_id(socket.gethostname(), "spyoncino")
        self.layout = Layout(
            device_id=device_id,
            prefix=(self.cfg.topic_prefix or f"spyoncino/{device_id}").rstrip("/"),
            discovery_prefix=self.cfg.discovery_prefix.rstrip("/"),
        )
        self.broker = f"{self.cfg.host}:{self.cfg.port}" if self.cfg.host else ""
        if self.queue is not None:
            self._follow_cameras(before)

    def _announcement(self) -> dict[str, dict[str, Any]]:
        return discovery_configs(self.layout, self.info, self.cameras, self.labels)

    def _follow_cameras(self, before: dict[str, dict[str, Any]]) -> None:
        """A camera added, removed or renamed while running (the status page can): announce
        the new entities, withdraw the gone ones, give the new cameras their first states."""
        assert self.queue is not None
        after = self._announcement()
        if after == before or not self.cfg.discovery:
            return
        for topic in before.keys() - after.keys():
            self.queue.state(topic, b"")  # an empty retained config removes the entity
        for topic, doc in after.items():
            if before.get(topic) != doc:
                self.queue.state(topic, json.dumps(doc).encode())
        for cid in self.cameras:
            if self.layout.camera(cid, "motion") not in self._published_states:
                self._initial_states(cid)
        self.log.info("mqtt_discovery_updated", cameras=sorted(self.cameras))

    def _initial_states(self, cid: str) -> None:
        self._put_state(self.layout.camera(cid, "motion"), OFF)
        for label in self.labels[cid]:
            self._put_state(self.layout.label_topic(cid, label), "0")
        self._put_health_state(cid)
        self._put_state(self.layout.camera(cid, "detect"), ON if self.detect[cid] else OFF)

    def _public_url(self) -> str | None:
        page = getattr(self.app_cfg, "status_page", None)
        url = getattr(page, "public_url", None) if page is not None else None
        return str(url).rstrip("/") if url else None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.cfg.host is None:
            self.log.info("mqtt_disabled", reason="no mqtt.host configured")
            self.set_state("ok", "disabled: no host")
            return
        problems = await self.ctx.executor.run(setting_problems, self.cfg, self.name or "mqtt")
        if problems:
            raise ModuleConfigError("; ".join(problems))
        try:
            import aiomqtt
        except ImportError as e:
            raise ModuleConfigError(
                "mqtt: the aiomqtt library is missing (pip install 'spyoncino[mqtt]')"
            ) from e
        self._aiomqtt = aiomqtt
        hw = self.app_cfg.runtime.hardware_profile if self.app_cfg is not None else "auto"
        model = await self.ctx.executor.run(device_model, hw)
        self.info = DeviceInfo(
            name=self.cfg.device_name or f"Spyoncino {self.layout.device_id}",
            model=model,
            sw_version=__version__,
            configuration_url=self._public_url(),
        )
        client: Any = None
        try:
            client = await self._connect()
        except ModuleNotReady:
            # Not ready, retried by the orchestrator; but a broker that stays away longer
            # than its retries (a power cut that also restarted the house server) must not
            # quarantine the module for good: the last allowed attempt starts anyway and the
            # connection loop keeps trying, with events queued meanwhile.
            self._failed_starts += 1
            limit = self.app_cfg.runtime.max_start_attempts if self.app_cfg is not None else 5
            if self._failed_starts < limit:
                raise
            self.log.warning("mqtt_started_without_broker", broker=self.broker)
        self.queue = PublishQueue(self.cfg.max_queued_events, self.layout.events)
        for cid in self.cameras:
            self._initial_states(cid)
        if client is not None:
            try:
                await self._open_session(client)
            except aiomqtt.MqttError as e:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.__aexit__(None, None, None), 2.0)
                self.queue = None
                raise ModuleNotReady(f"MQTT broker {self.broker}: {e}") from e
            self._failed_starts = 0
        self.subscribe([topics.EVENT, topics.ARTIFACT], self._on_event, policy="block", maxsize=256)
        self.subscribe(topics.CONTROL_STATE.name, self._on_control_state, policy="block")
        self.subscribe(topics.CONFIG_SNAPSHOT.name, self._on_config, policy="block")
        self.subscribe(topics.HEALTH.name, self._on_health, policy="latest")
        self._client, self.connected = client, client is not None
        self.spawn(self._run(client), "connection")
        self.spawn(self._device_loop(), "device-state")
        self.subscribe(topics.CAMERA_HEALTH.pattern(), self._on_camera_health, policy="block")
        if client is not None:
            self.set_state("ok", f"connected to {self.broker}")
        else:
            self.set_state("degraded", f"reconnecting to {self.broker}")

    async def stop(self) -> None:
        client = self._client
        if client is not None and self.connected:
            # a clean goodbye: the last will covers only the unexpected ones
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    client.publish(self.layout.availability, OFFLINE, qos=1, retain=True), 2.0
                )
        await super().stop()
        self.connected = False
        self.queue = None

    async def _connect(self) -> Any:
        aiomqtt = self._aiomqtt
        cfg = self.cfg
        assert cfg.host is not None
        tls = None
        if cfg.tls is not None:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            )
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            identifier=cfg.client_id or f"spyoncino-{self.layout.device_id}",
            will=aiomqtt.Will(self.layout.availability, OFFLINE, qos=1, retain=True),
            keepalive=cfg.keepalive_s,
            timeout=cfg.connect_timeout_s,
            tls_params=tls,
            tls_insecure=cfg.tls.insecure if cfg.tls is not None else None,
            max_queued_incoming_messages=1000,
        )
        try:
            await asyncio.wait_for(client.__aenter__(), cfg.connect_timeout_s + 1.0)
        except (aiomqtt.MqttError, OSError, TimeoutError) as e:
            self.stats["connect_failures"] += 1
            reason = str(e) or type(e).__name__
            if "authori" in reason.lower() or "password" in reason.lower():
                reason += " (check mqtt.username and mqtt.password)"
            self.log.error("mqtt_connect_failed", broker=self.broker, error=reason)
            raise ModuleNotReady(f"MQTT broker {self.broker}: {reason}") from e
        self.log.info("mqtt_connected", broker=self.broker, prefix=self.layout.prefix)
        return client

    def _backoff(self, failures: int) -> float:
        delay = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2 ** max(0, failures - 1))
        return float(delay * (0.5 + random.random()))

    async def _run(self, client: Any) -> None:
        """Serve a connection until it breaks, then reconnect with capped, jittered backoff."""
        failures = 0
        while True:
            try:
                if client is None:
                    await asyncio.sleep(self._backoff(failures))
                    try:
                        client = await self._connect()
                    except ModuleNotReady as e:
                        failures += 1
                        self.set_state("degraded", f"reconnecting to {self.broker}", str(e))
                        continue
                    self.stats["reconnects"] += 1
                    await self._open_session(client)
                failures = 1
                self._client, self.connected = client, True
                self.set_state("ok", f"connected to {self.broker}")
                await self._serve(client)
            except self._aiomqtt.MqttError as e:
                self.log.warning("mqtt_disconnected", broker=self.broker, error=str(e))
            finally:
                self.connected, self._client = False, None
                if client is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.__aexit__(None, None, None), 2.0)
            client = None
            self.set_state("degraded", f"reconnecting to {self.broker}")

    async def _open_session(self, client: Any) -> None:
        """A new connection: commands subscribed, availability, discovery, every state again."""
        await client.subscribe(
            [(t, 1) for t in self.layout.command_filters()]
            + [(f"{self.layout.discovery_prefix}/status", 1)]
        )
        await client.publish(self.layout.availability, ONLINE, qos=1, retain=True)
        await self._publish_discovery(client)
        if self.queue is None:
            return
        for topic, payload in self._published_states.items():
            if topic not in self.queue.states:
                self.queue.state(topic, payload)

    async def _serve(self, client: Any) -> None:
        """Commands in, the queue out, until the connection breaks (MqttError)."""
        reader = asyncio.ensure_future(self._reader(client))
        writer = asyncio.ensure_future(self._writer(client))
        try:
            done, _ = await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # raises the MqttError that ended the session
        finally:
            for t in (reader, writer):
                t.cancel()
            await asyncio.wait((reader, writer), timeout=2.0)

    async def _publish_discovery(self, client: Any) -> None:
        configs = discovery_configs(self.layout, self.info, self.cameras, self.labels)
        for topic, doc in configs.items():
            payload = json.dumps(doc).encode() if self.cfg.discovery else b""
            await client.publish(topic, payload, qos=1, retain=True)
        self.stats["discovery_published"] += 1
        self.log.info(
            "mqtt_discovery_published" if self.cfg.discovery else "mqtt_discovery_removed",
            entities=len(configs),
        )

    async def _writer(self, client: Any) -> None:
        queue = self.queue
        assert queue is not None
        while True:
            item = queue.pop()
            if item is None:
                await queue.ready.wait()
                continue
            try:
                await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
            except BaseException:
                queue.put_back(item)
                raise
            self.stats["published"] += 1
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Python 3.11's wait_for (inside aiomqtt) can swallow a cancel that lands as
                # the PUBACK does; honour it here instead of waiting on the queue forever
                raise asyncio.CancelledError

    async def _reader(self, client: Any) -> None:
        birth = f"{self.layout.discovery_prefix}/status"
        async for message in client.messages:
            topic = str(message.topic)
            raw = message.payload if isinstance(message.payload, bytes) else b""
            if topic == birth:
                if raw.strip().lower() == b"online":
                    self.log.info("mqtt_home_assistant_online")
                    await self._publish_discovery(client)
                continue
            if not self.ctx.started.is_set():
                # on the broker before the modules that obey have started: hold it
                self.stats["commands_held"] += 1
                self.log.info("mqtt_command_held_until_started", topic=topic[:200])
                await self.ctx.started.wait()
            await self._on_command(topic, raw)

    async def _on_command(self, topic: str, raw: bytes) -> None:
        try:
            cmd = parse(
                self.layout.prefix,
                topic,
                raw,
                set(self.cameras),
                self.cfg.max_command_bytes,
                uuid.uuid4().hex,
            )
        except Rejected as e:
            self.stats["commands_rejected"] += 1
            now = time.monotonic()
            self._rejections_logged = [t for t in self._rejections_logged if now - t < 60.0]
            if len(self._rejections_logged) < 10:  # a flood is counted, not logged line by line
                self._rejections_logged.append(now)
                self.log.warning(
                    "mqtt_command_rejected", topic=topic[:200], reason=str(e), size=len(raw)
                )
            return
        self.stats["commands"] += 1
        if isinstance(cmd, ConfigUpdate):
            await self.bus.publish(topics.CONFIG_UPDATE.name, cmd)
        else:
            await self.bus.publish(topics.CONTROL.name, cmd)
        self.log.info("mqtt_command", topic=topic[:200])

    # -- state out -----------------------------------------------------------------------------
    def _put_state(self, topic: str, value: str | bytes) -> None:
        """Publish a retained state unless it is what was published last."""
        payload = value.encode() if isinstance(value, str) else value
        if self._published_states.get(topic) == payload:
            return
        self._published_states[topic] = payload
        if self.queue is not None:
            self.queue.state(topic, payload)

    def event_document(self, ev: EventNotice) -> dict[str, Any]:
        """The JSON of ``<prefix>/events``: one per notice of an activity."""
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "type": ev.phase,
            "event_id": ev.event_id,
            "camera": ev.camera_id,
            "camera_name": self.cameras.get(ev.camera_id, ev.camera_id),
            "kind": ev.kind,
            "labels": list(ev.labels),
            "score": round(ev.top_score, 3),
            "zones": list(ev.zones),
            "objects": len(ev.objects),
            # an event is an activity: its severity and how many objects of each label
            "severity": ev.severity,
            "counts": _counts(ev),
            "started_at": ev.started_at,
            "updated_at": ev.updated_at,
            "ended_at": ev.ended_at,
        }
        url = self._public_url()
        if url:
            doc["url"] = f"{url}/events/{ev.event_id}"
            rel = self._snap_relpath.get(ev.event_id)
            if rel:
                doc["snapshot_url"] = f"{url}/media/{rel}"
        return doc

    async def _on_event(self, msg: Message[Any]) -> None:
        payload = msg.payload
        if isinstance(payload, MediaArtifact):
            if payload.kind == "snapshot":
                await self._on_snapshot(payload)
            return
        if not isinstance(payload, EventNotice) or self.queue is None:
            return
        ev = payload
        self.queue.event(self.layout.events, json.dumps(self.event_document(ev)).encode())
        self.stats["events"] += 1
        if ev.phase == "ended":
            self._active.get(ev.camera_id, {}).pop(ev.event_id, None)
        else:
            self._active.setdefault(ev.camera_id, {})[ev.event_id] = ev
        self._camera_counts(ev.camera_id)

    def _camera_counts(self, cid: str) -> None:
        if cid not in self.cameras:
            return
        active = self._active.get(cid, {}).values()
        for label in self.labels[cid]:
            n = 0
            for e in active:
                # in view now: an activity also lists the objects that have left
                seen = sum(1 for o in e.objects if o.label == label and o.present)
                n += seen if seen or e.objects else int(label in e.labels)
            self._put_state(self.layout.label_topic(cid, label), str(n))
        # motion last: whoever sees it change sees the counts that go with it
        self._put_state(self.layout.camera(cid, "motion"), ON if active else OFF)

    async def _on_snapshot(self, art: MediaArtifact) -> None:
        if art.camera_id not in self.cameras or art.size_bytes > self.cfg.snapshot_max_bytes:
            return
        try:
            data = await self.ctx.executor.run(Path(art.path).read_bytes)
        except OSError as e:
            self.log.warning("mqtt_snapshot_unreadable", path=art.path, error=repr(e))
            return
        # kept past 'ended': the tracker may resume an event whose object comes back
        self._snap_relpath[art.event_id] = art.relpath
        while len(self._snap_relpath) > 256:
            del self._snap_relpath[next(iter(self._snap_relpath))]
        self._put_state(self.layout.camera(art.camera_id, "snapshot"), data)

    async def _on_control_state(self, msg: Message[ControlState]) -> None:
        st = msg.payload
        self._armed = st.armed
        self._muted_until = dict(st.muted_until)
        self._put_state(self.layout.armed, ON if st.armed else OFF)
        self._put_state(self.layout.muted, ON if st.muted_until else OFF)
        await self._publish_device_state()

    async def _on_config(self, msg: Message[ConfigSnapshot]) -> None:
        cams = msg.payload.config.get("cameras", {})
        for cid in self.cameras:
            det = cams.get(cid, {}).get("detector") if isinstance(cams.get(cid), dict) else None
            enabled = det.get("enabled", True) if isinstance(det, dict) else True
            self.detect[cid] = bool(enabled)
            self._put_state(self.layout.camera(cid, "detect"), ON if enabled else OFF)

    async def _on_health(self, msg: Message[HealthReport]) -> None:
        offbox = next(
            (
                {
                    "backlog": m.metrics.get("offbox_backlog"),
                    "backlog_bytes": m.metrics.get("offbox_backlog_bytes"),
                    "oldest_age_s": m.metrics.get("offbox_oldest_age_s"),
                    "ready": bool(m.metrics.get("offbox_ready")),
                }
                for m in msg.payload.modules
                if "offbox_backlog" in m.metrics
            ),
            None,
        )
        moved = (self._offbox or {}).get("backlog") != (offbox or {}).get("backlog") or (
            self._offbox or {}
        ).get("ready") != (offbox or {}).get("ready")
        self._offbox = offbox
        if moved and self.queue is not None:  # the backlog grew, shrank or stalled: say so
            await self._publish_device_state()
        for mod in msg.payload.modules:
            cid = mod.metrics.get("camera")
            if not isinstance(cid, str) or cid not in self.cameras:
                continue
            state = str(mod.metrics.get("camera_state", mod.state))
            fps = mod.metrics.get("fps", 0.0)
            fps = round(float(fps), 1) if isinstance(fps, int | float) else 0.0
            doc = {"schema_version": SCHEMA_VERSION, "state": state, "fps": fps}
            self._put_state(self.layout.camera(cid, "state"), json.dumps(doc))

    async def _on_camera_health(self, msg: Message[CameraHealthNotice]) -> None:
        """A camera-health alert or recovery: one message on ``<camera>/health`` (QoS 1, not
        retained) and the camera's conditions now, retained, on ``<camera>/problem``."""
        n = msg.payload
        if self.queue is None:
            return
        doc = {"schema_version": SCHEMA_VERSION, **n.model_dump(mode="json")}
        self.queue.event(self.layout.camera(n.camera_id, "health"), json.dumps(doc).encode())
        active = self._health_active.setdefault(n.camera_id, set())
        if n.phase == "alert":
            active.add(n.condition)
        else:
            active.discard(n.condition)
        self._put_health_state(n.camera_id)
        self.stats["health_notices"] += 1

    def _put_health_state(self, cid: str) -> None:
        active = self._health_active.get(cid, set())
        state = {
            "schema_version": SCHEMA_VERSION,
            "problem": bool(active),
            "conditions": sorted(active),
        }
        self._put_state(self.layout.camera(cid, "problem"), json.dumps(state))

    async def _device_loop(self) -> None:
        while True:
            await self._publish_device_state()
            await asyncio.sleep(self.cfg.state_interval_s)

    async def _publish_device_state(self) -> None:
        root = self.app_cfg.storage.root if self.app_cfg is not None else Path(".")
        temp, (free, total) = await self.ctx.executor.run(self._facts, root)
        latest = await self.ctx.executor.run(_latest_version, self.cfg.update_dir)
        now = time.time()
        doc = {
            "schema_version": SCHEMA_VERSION,
            "armed": self._armed,
            "muted": any(v > now for v in self._muted_until.values()),
            "muted_until": {k: v for k, v in self._muted_until.items() if v > now},
            "version": __version__,
            "latest_version": latest,
            "cpu_temp_c": temp,
            "disk_free_bytes": free,
            "disk_total_bytes": total,
            "uptime_s": round(time.monotonic() - _STARTED, 1),
            "cameras": sorted(self.cameras),
        }
        if self._offbox is not None:  # copies to S3-compatible storage (the s3 module)
            doc["offbox"] = self._offbox
        self._put_state(self.layout.state, json.dumps(doc))

    @staticmethod
    def _facts(root: Path) -> tuple[float | None, tuple[int, int]]:
        try:
            space = disk_free(root)
        except OSError:
            space = (0, 0)
        temp = cpu_temperature()
        return (round(temp, 1) if temp is not None and math.isfinite(temp) else None), space

    # -- telemetry -----------------------------------------------------------------------------
    def metrics(self) -> dict[str, float | int | str]:
        q = self.queue
        return {
            "broker": self.broker,
            "connected": int(self.connected),
            "queued": len(q) if q is not None else 0,
            "dropped_events": q.dropped_total if q is not None else 0,
            **self.stats,
        }

    def pending(self) -> int:
        # a replay waits for what the broker can take; a broker that is away holds nothing up
        return len(self.queue) if self.queue is not None and self.connected else 0


__all__ = ["Config", "MqttOutput"]


def _latest_version(folder: Path) -> str:
    """Blocking: the newer version the updater's last check found, else the running one."""
    files = updates.read_files(folder)
    newer = files.newer() if files is not None else None
    return newer or __version__


def _counts(ev: EventNotice) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in ev.objects:
        out[o.label] = out.get(o.label, 0) + 1
    return out
