"""Helpers for channel tests: publish events and media the way the tracker and writers do."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from spyoncino.core.bus import Bus
from spyoncino.core.config import build_app_model
from spyoncino.core.contracts import BaseModule, BoundedExecutor, ModuleContext
from spyoncino.helpers.files import atomic_write_bytes
from spyoncino.schemas import topics
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact


def make_jpeg(width: int = 320, height: int = 240) -> bytes:
    img = np.zeros((height, width, 3), np.uint8)
    cv2.rectangle(img, (40, 40), (120, 200), (0, 0, 255), 3)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return bytes(buf.tobytes())


async def publish_started(
    bus: Bus,
    event_id: str,
    camera: str = "front_door",
    labels: tuple[str, ...] = ("person",),
    kind: str = "object",
) -> EventNotice:
    """An event start alone, as the tracker publishes it (its snapshot may never come)."""
    now = time.time()
    ev = EventNotice(
        event_id=event_id,
        camera_id=camera,
        kind=kind,  # type: ignore[arg-type]
        phase="started",
        labels=labels,
        top_score=0.87,
        started_at=now,
        updated_at=now,
        zones=("driveway",),
    )
    await bus.publish(topics.EVENT.at(kind=kind, phase="started"), ev)
    return ev


async def publish_event(
    bus: Bus,
    root: Path,
    event_id: str,
    camera: str = "front_door",
    labels: tuple[str, ...] = ("person",),
    kind: str = "object",
) -> tuple[EventNotice, MediaArtifact]:
    """An event start and its snapshot, in the order tracker + snapshot writer publish them."""
    ev = await publish_started(bus, event_id, camera, labels, kind)
    now = ev.started_at
    data = make_jpeg()
    path = root / camera / f"{event_id}.jpg"
    digest = atomic_write_bytes(path, data)
    art = MediaArtifact(
        event_id=event_id,
        camera_id=camera,
        kind="snapshot",
        path=str(path),
        relpath=f"{camera}/{event_id}.jpg",
        size_bytes=len(data),
        sha256=digest,
        mime="image/jpeg",
        created_at=now,
        width=320,
        height=240,
    )
    await bus.publish(topics.ARTIFACT.at(artifact="snapshot"), art)
    return ev, art


async def start_module(
    cls: type[BaseModule],
    name: str,
    bus: Bus,
    executor: BoundedExecutor,
    root: Path,
    section: dict[str, Any],
) -> BaseModule:
    """Configure and start one module the way the orchestrator does."""
    app = build_app_model({name: cls}).model_validate(
        {
            "storage": {"root": str(root)},
            "cameras": {
                "front_door": {"source": "x.mp4", "name": "Front door"},
                "garden": {"source": "y.mp4"},
            },
            name: section,
        }
    )
    module = cls(ModuleContext(bus=bus, executor=executor, app=app, instance=name))
    module.name = name
    await module.configure(app)
    await module.start()
    return module
