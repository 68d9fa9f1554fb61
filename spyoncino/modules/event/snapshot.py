"""Snapshot JPEGs: when an event starts, the frame that started it, with its boxes drawn."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig
from spyoncino.core.files import atomic_write_bytes, media_relpath
from spyoncino.schemas import topics
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Box, Image
from spyoncino.schemas.media import MediaArtifact


class Config(ModuleConfig):
    type: Literal["snapshot"] = "snapshot"
    draw_boxes: bool = Field(default=True, description="Draw the boxes that triggered the event.")
    quality: int = Field(default=85, ge=30, le=100, description="JPEG quality.")
    max_width: int = Field(
        default=1920, ge=160, le=4096, description="Downscale wider frames to this width."
    )


def render_jpeg(
    image: Image, boxes: tuple[Box, ...], labels: tuple[str, ...], cfg: Config
) -> tuple[bytes, int, int]:
    """Encode ``image`` (BGR) as JPEG with ``boxes`` drawn; returns bytes, width, height."""
    img = image
    scale = 1.0
    if img.shape[1] > cfg.max_width:
        scale = cfg.max_width / img.shape[1]
        img = cv2.resize(img, (cfg.max_width, round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    elif cfg.draw_boxes and boxes:
        img = img.copy()  # never draw on a frame other modules may still read
    if cfg.draw_boxes:
        thick = max(2, img.shape[1] // 400)
        for i, b in enumerate(boxes):
            p1 = (round(b.x1 * scale), round(b.y1 * scale))
            p2 = (round(b.x2 * scale) - 1, round(b.y2 * scale) - 1)
            cv2.rectangle(img, p1, p2, (0, 0, 255), thick)
            if i < len(labels) and labels[i]:
                cv2.putText(
                    img, labels[i], (p1[0], max(12, p1[1] - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1, cv2.LINE_AA,
                )
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, cfg.quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return np.asarray(buf).tobytes(), img.shape[1], img.shape[0]


class SnapshotWriter(BaseModule):
    category: ClassVar[Any] = "event"
    Config: ClassVar[type[ModuleConfig]] = Config

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.root = Path(".")
        self.tz: str | None = None
        self.written = 0
        self.bytes_written = 0
        self._pending = 0

    async def configure(self, app: AppConfig) -> None:
        self.cfg = app.section(self.name or "snapshot", Config)
        self.root = app.storage.root
        self.tz = app.runtime.timezone

    async def start(self) -> None:
        self.subscribe(topics.EVENT.pattern(phase="started"), self._on_started, policy="block")
        self.set_state("ok")

    async def _on_started(self, msg: Message[EventNotice]) -> None:
        ev = msg.payload
        frame = ev.frame
        if frame is None or not frame.has_image:
            self.log.warning("snapshot_without_frame", event_id=ev.event_id, camera=ev.camera_id)
            return
        self._pending += 1
        try:
            artifact = await self.ctx.executor.run(self._write, ev, frame)
        finally:
            self._pending -= 1
        await self.bus.publish(topics.ARTIFACT.at(artifact="snapshot"), artifact)

    def _write(self, ev: EventNotice, frame: Any) -> MediaArtifact:
        labels = tuple(ev.labels[:1]) * len(ev.boxes) if ev.kind == "object" else ()
        data, w, h = render_jpeg(frame.image, ev.boxes, labels, self.cfg)
        rel = media_relpath(ev.camera_id, ev.started_at, ev.event_id, "jpg", self.tz)
        path = self.root / rel
        digest = atomic_write_bytes(path, data)
        self.written += 1
        self.bytes_written += len(data)
        return MediaArtifact(
            event_id=ev.event_id,
            camera_id=ev.camera_id,
            kind="snapshot",
            path=str(path.resolve()),
            relpath=rel,
            size_bytes=len(data),
            sha256=digest,
            mime="image/jpeg",
            created_at=time.time(),
            width=w,
            height=h,
        )

    def metrics(self) -> dict[str, float | int | str]:
        return {"pending": self._pending, "written": self.written, "bytes_written": self.bytes_written}
