"""MQTT module cost and latency against a real mosquitto on 127.0.0.1.

* **CPU per event**: a burst of event notices published on the bus; process CPU time (all
  threads: the bus hand-off, the JSON document, paho and the socket) until the module has
  published them all with QoS 1, divided by their number.
* **CPU per state update**: the same for camera state changes (``status.health`` with a new
  fps each time), one retained state topic each.
* **Latency**: an event ``started`` published on the bus (what the tracker does once a
  detection is confirmed) to its document arriving at a subscribing client through the
  broker; one at a time, 300 per round. Target p95 <= 100 ms.

Three rounds; the machine is shared (other builds may run), so the figures are the median of
the rounds' values and every round is kept. Skips (writes ``"skipped"``) without mosquitto.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import write_result

from spyoncino.modules.output.mqtt import MqttOutput
from spyoncino.schemas import topics
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.status import HealthReport, ModuleHealth
from spyoncino.testing import BusHarness

ROUNDS = 3
BURST = 2000
STATES = 2000
LATENCY_N = 300
TARGET_P95_MS = 100.0


def notice(eid: str, phase: str = "started") -> EventNotice:
    now = time.time()
    return EventNotice(
        event_id=eid,
        camera_id="front",
        kind="object",
        phase=phase,  # type: ignore[arg-type]
        labels=("person",),
        top_score=0.9,
        started_at=now,
        updated_at=now,
    )


def health(fps: float) -> HealthReport:
    mod = ModuleHealth(
        module="rtsp:front",
        state="ok",
        metrics={"camera": "front", "fps": fps, "camera_state": "streaming"},
    )
    return HealthReport(overall="ok", modules=(mod,), at=time.time())


async def wait_published(mod: MqttOutput, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while int(mod.metrics()["published"]) < n or mod.pending():
        if time.monotonic() > deadline:
            raise TimeoutError(f"published {mod.metrics()['published']} of {n}")
        await asyncio.sleep(0.002)


async def one_round(broker: Any, root: Path) -> dict[str, float]:
    import aiomqtt

    async with BusHarness(storage_root=root) as h:
        mod = h.build(
            MqttOutput,
            {
                "cameras": {"front": {"source": "rtsp://cam/front"}},
                "mqtt": {
                    "host": broker.host,
                    "port": broker.port,
                    "device_id": "bench",
                    "state_interval_s": 3600,
                    "max_queued_events": 100_000,
                },
            },
            name="mqtt",
        )
        assert isinstance(mod, MqttOutput)
        await mod.configure(mod.ctx.app)
        await mod.start()
        await wait_published(mod, 1)
        # events
        base = int(mod.metrics()["published"])
        t0 = time.process_time()
        phases = ("started", "updated", "updated", "ended")  # a few events open at a time
        for i in range(BURST):
            phase = phases[i % 4]
            ev = notice(f"b{i // 4}", phase)
            await h.bus.publish(topics.EVENT.at(kind="object", phase=phase), ev)
        await wait_published(mod, base + BURST)
        cpu_event_us = (time.process_time() - t0) / BURST * 1e6
        # state updates
        base = int(mod.metrics()["published"])
        t0 = time.process_time()
        for i in range(STATES):
            await h.bus.publish(topics.HEALTH.name, health(5.0 + (i % 50) / 10))
            await asyncio.sleep(0)  # 'latest' policy: let the module see each one
        await h.bus.drain(timeout=30)
        await wait_published(mod, base)
        published_states = int(mod.metrics()["published"]) - base
        cpu_state_us = (time.process_time() - t0) / STATES * 1e6
        # latency through the broker to a subscriber
        lat: list[float] = []
        async with aiomqtt.Client(broker.host, broker.port) as sub:
            await sub.subscribe("spyoncino/bench/events", qos=1)
            messages = sub.messages
            for i in range(LATENCY_N):
                eid = f"lat{i}"
                t = time.perf_counter()
                await h.bus.publish(topics.EVENT.at(kind="object", phase="started"), notice(eid))
                while True:
                    m = await asyncio.wait_for(messages.__anext__(), 10)
                    raw = m.payload if isinstance(m.payload, bytes) else b""
                    if json.loads(raw).get("event_id") == eid:
                        break
                lat.append((time.perf_counter() - t) * 1000.0)
        lat.sort()
        return {
            "cpu_per_event_us": round(cpu_event_us, 1),
            "cpu_per_state_update_us": round(cpu_state_us, 1),
            "state_updates": STATES,
            "state_messages_published": published_states,
            "latency_p50_ms": round(statistics.median(lat), 2),
            "latency_p95_ms": round(lat[int(len(lat) * 0.95) - 1], 2),
            "latency_max_ms": round(lat[-1], 2),
        }


async def main() -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        write_result("mqtt", {"skipped": "mosquitto is not installed"})
        return
    from tests.support.mqtt_broker import Broker

    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "broker")
        broker.start()
        try:
            rounds = [await one_round(broker, Path(tmp) / f"r{i}") for i in range(ROUNDS)]
        finally:
            broker.stop()
    keys = [k for k in rounds[0] if k not in ("state_updates", "state_messages_published")]
    summary = {k: statistics.median(r[k] for r in rounds) for k in keys}
    write_result(
        "mqtt",
        {
            "what": "MQTT module: CPU per event / state update, bus -> subscriber latency",
            "events_per_round": BURST,
            "latency_samples_per_round": LATENCY_N,
            "target_latency_p95_ms": TARGET_P95_MS,
            "met": summary["latency_p95_ms"] <= TARGET_P95_MS,
            "median_of_rounds": summary,
            "rounds": rounds,
            "note": "2 shared cores with other builds running; CPU is the whole process's "
            "(bus, JSON, paho, socket) and the subscriber is in-process for latency only",
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
