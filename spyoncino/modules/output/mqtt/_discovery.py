"""Home Assistant MQTT discovery: one device per box, its entities, their config payloads.

Pure functions over a :class:`Layout` (the box's topic tree), so the tests and the benchmark
build the same documents the module publishes. Topics follow Home Assistant's
``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` with node and object ids made
of ``[a-zA-Z0-9_-]`` only; every entity has ``unique_id`` (``spyoncino_<device>_<what>``),
``availability`` and the same ``device`` block, so Home Assistant groups them under one
device per box.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_UNSAFE = re.compile(r"[^a-z0-9_-]+")

ON, OFF = "ON", "OFF"
ONLINE, OFFLINE = "online", "offline"


def safe_id(text: str, fallback: str = "x") -> str:
    """``text`` lower-cased with every run of characters outside ``[a-z0-9_-]`` as one ``_``:
    valid in a discovery topic, a unique id and one MQTT topic level."""
    out = _UNSAFE.sub("_", text.strip().lower()).strip("_")
    return out[:64] or fallback


@dataclass(frozen=True)
class Layout:
    """Where everything of one box lives: ``prefix`` is ``spyoncino/<device_id>`` by default."""

    device_id: str
    prefix: str
    discovery_prefix: str

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def state(self) -> str:
        return f"{self.prefix}/state"

    @property
    def armed(self) -> str:
        return f"{self.prefix}/armed"

    @property
    def muted(self) -> str:
        return f"{self.prefix}/muted"

    @property
    def set_armed(self) -> str:
        return f"{self.prefix}/set/armed"

    @property
    def set_mute(self) -> str:
        return f"{self.prefix}/set/mute"

    def camera(self, camera: str, leaf: str) -> str:
        return f"{self.prefix}/{camera}/{leaf}"

    def label_topic(self, camera: str, label: str) -> str:
        return f"{self.prefix}/{camera}/{safe_id(label)}"

    def unique(self, what: str) -> str:
        return f"spyoncino_{self.device_id}_{what}"

    def config_topic(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.device_id}/{object_id}/config"

    def command_filters(self) -> list[str]:
        """What the module subscribes to for commands (besides Home Assistant's status)."""
        return [f"{self.prefix}/set/+", f"{self.prefix}/+/set/+", f"{self.prefix}/+/snapshot/take"]


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    model: str
    sw_version: str
    configuration_url: str | None = None


def _device(layout: Layout, info: DeviceInfo) -> dict[str, Any]:
    dev: dict[str, Any] = {
        "identifiers": [f"spyoncino_{layout.device_id}"],
        "name": info.name,
        "manufacturer": "Spyoncino",
        "model": info.model,
        "sw_version": info.sw_version,
    }
    if info.configuration_url:
        dev["configuration_url"] = info.configuration_url
    return dev


def discovery_configs(
    layout: Layout,
    info: DeviceInfo,
    cameras: dict[str, str],
    labels: dict[str, tuple[str, ...]],
) -> dict[str, dict[str, Any]]:
    """Config topic -> discovery payload, for the box and each camera (id -> display name)."""
    device = _device(layout, info)
    base = {
        "availability": [
            {
                "topic": layout.availability,
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            }
        ],
        "device": device,
        "origin": {"name": "spyoncino", "sw_version": info.sw_version},
        "qos": 1,
    }
    out: dict[str, dict[str, Any]] = {}

    def add(component: str, object_id: str, name: str, **fields: Any) -> None:
        out[layout.config_topic(component, object_id)] = {
            **base,
            "name": name,
            "unique_id": layout.unique(object_id),
            **fields,
        }

    add(
        "switch",
        "armed",
        "Armed",
        command_topic=layout.set_armed,
        state_topic=layout.armed,
        payload_on=ON,
        payload_off=OFF,
        icon="mdi:shield-home",
    )
    add(
        "binary_sensor",
        "muted",
        "Muted",
        state_topic=layout.muted,
        payload_on=ON,
        payload_off=OFF,
        icon="mdi:bell-off",
    )
    add(
        "sensor",
        "cpu_temperature",
        "CPU temperature",
        state_topic=layout.state,
        value_template="{{ value_json.cpu_temp_c }}",
        device_class="temperature",
        state_class="measurement",
        unit_of_measurement="°C",
        entity_category="diagnostic",
    )
    add(
        "sensor",
        "disk_free",
        "Disk free",
        state_topic=layout.state,
        value_template="{{ (value_json.disk_free_bytes / 1e9) | round(2) }}",
        device_class="data_size",
        state_class="measurement",
        unit_of_measurement="GB",
        entity_category="diagnostic",
    )
    add(
        "sensor",
        "uptime",
        "Uptime",
        state_topic=layout.state,
        value_template="{{ value_json.uptime_s | round(0) }}",
        device_class="duration",
        state_class="measurement",
        unit_of_measurement="s",
        entity_category="diagnostic",
    )
    add(  # the over-the-air updater's last check (docs/updates.md); installing is /update's
        "update",
        "update",
        "Spyoncino",
        state_topic=layout.state,
        value_template="{{ {'installed_version': value_json.version, "
        "'latest_version': value_json.latest_version} | to_json }}",
        device_class="firmware",
        entity_category="diagnostic",
    )
    for cid, name in cameras.items():
        add("camera", f"{cid}_snapshot", f"{name} snapshot", topic=layout.camera(cid, "snapshot"))
        add(
            "binary_sensor",
            f"{cid}_motion",
            f"{name} motion",
            state_topic=layout.camera(cid, "motion"),
            payload_on=ON,
            payload_off=OFF,
            device_class="motion",
        )
        for label in labels.get(cid, ()):
            lid = safe_id(label)
            topic = layout.label_topic(cid, label)
            add(
                "binary_sensor",
                f"{cid}_{lid}",
                f"{name} {label}",
                state_topic=topic,
                value_template="{{ 'ON' if value | int(0) > 0 else 'OFF' }}",
                payload_on=ON,
                payload_off=OFF,
                device_class="occupancy",
            )
            add(
                "sensor",
                f"{cid}_{lid}_count",
                f"{name} {label} count",
                state_topic=topic,
                state_class="measurement",
                icon="mdi:counter",
            )
        add(  # camera health: stream lost, black, frozen or moved (docs/modules/health.md)
            "binary_sensor",
            f"{cid}_problem",
            f"{name} problem",
            state_topic=layout.camera(cid, "problem"),
            value_template="{{ 'ON' if value_json.problem else 'OFF' }}",
            json_attributes_topic=layout.camera(cid, "problem"),
            payload_on=ON,
            payload_off=OFF,
            device_class="problem",
            entity_category="diagnostic",
        )
        add(
            "sensor",
            f"{cid}_fps",
            f"{name} fps",
            state_topic=layout.camera(cid, "state"),
            value_template="{{ value_json.fps }}",
            state_class="measurement",
            unit_of_measurement="fps",
            entity_category="diagnostic",
        )
        add(
            "switch",
            f"{cid}_detect",
            f"{name} detection",
            command_topic=layout.camera(cid, "set/detect"),
            state_topic=layout.camera(cid, "detect"),
            payload_on=ON,
            payload_off=OFF,
            icon="mdi:motion-sensor",
        )
        add(
            "button",
            f"{cid}_take_snapshot",
            f"{name} take snapshot",
            command_topic=layout.camera(cid, "snapshot/take"),
            payload_press="PRESS",
            icon="mdi:camera",
        )
    return out
