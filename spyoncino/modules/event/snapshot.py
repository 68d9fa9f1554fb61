"""Snapshot JPEGs: the event's best frame with boxes drawn, a clean copy and a thumbnail.

* ``event.<kind>.started`` -> ``<event-id>.jpg`` (boxes and labels drawn, kind ``snapshot``),
  ``<event-id>.clean.jpg`` (``snapshot_clean``) and ``<event-id>.thumb.jpg`` (``thumbnail``,
  about ``thumb_width`` px wide), published on ``media.snapshot.ready``,
  ``media.snapshot_clean.ready`` and ``media.thumbnail.ready``.
* ``event.<kind>.ended`` (and ``updated`` when ``replace_on_update``): the tracker sends the
  best frame so far; when it is another frame than the one written, the three files are
  replaced in place (same names, new artifacts). Consumers that alert on
  ``media.snapshot.ready`` should alert on the first one per event and treat later ones as
  a better picture of the same event.
* An activity's snapshot boxes every object on its best frame, each labelled with its label
  and score (``frame_objects``). When a ``detection`` becomes an ``alert`` the files are
  replaced at once with the frame that made it one, so the alert's photo shows why. When it
  ends, its thumbnail becomes the row of its objects' best crops (``crops``: each object's
  best sighting, up to 8, best score first, ``crop_height`` px high, label and score below).
* ``control.command`` ``snapshot``: writes the newest frame of the camera (every camera when
  none is named) as ``manual-<request id or time>.jpg`` and publishes it on
  ``media.snapshot.ready``. The newest frame per camera is kept by reference only (a
  latest-wins subscription), so this costs nothing until a snapshot is asked for.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import cv2
import numpy as np
from pydantic import Field

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig, ModuleContext
from spyoncino.helpers.files import atomic_write_bytes, media_relpath
from spyoncino.schemas import topics
from spyoncino.schemas.control import ControlCommand, manual_event_ids
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Box, Frame, Image
from spyoncino.schemas.media import ArtifactKind, MediaArtifact


class Config(ModuleConfig):
    type: Literal["snapshot"] = "snapshot"
    draw_boxes: bool = Field(default=True, description="Draw the boxes that triggered the event.")
    quality: int = Field(default=85, ge=30, le=100, description="JPEG quality.")
    max_width: int = Field(
        default=1920, ge=160, le=4096, description="Downscale wider frames to this width."
    )
    clean_copy: bool = Field(default=True, description="Also keep a copy without boxes.")
    thumb_width: int = Field(default=320, ge=64, le=960, description="Thumbnail width in pixels.")
    crop_height: int = Field(
        default=120,
        ge=32,
        le=480,
        description="Height in pixels of each object's crop in an activity's final thumbnail.",
    )
    replace_on_update: bool = Field(
        default=False,
        description="Replace the snapshot on updates too (more writes); always on the event's end.",
    )


def _scaled(image: Image, width: int) -> tuple[Image, float]:
    if image.shape[1] <= width:
        return image, 1.0
    scale = width / image.shape[1]
    size = (width, max(1, round(image.shape[0] * scale)))
    return cast("Image", cv2.resize(image, size, interpolation=cv2.INTER_AREA)), scale


def _encode(img: Image, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return np.asarray(buf).tobytes()


def draw(image: Image, boxes: tuple[Box, ...], labels: tuple[str, ...], scale: float) -> Image:
    """A copy of ``image`` with ``boxes`` (full-frame pixels, scaled by ``scale``) drawn."""
    img = image.copy()  # never draw on a frame other modules may still read
    thick = max(2, img.shape[1] // 400)
    for i, b in enumerate(boxes):
        p1 = (round(b.x1 * scale), round(b.y1 * scale))
        p2 = (round(b.x2 * scale) - 1, round(b.y2 * scale) - 1)
        cv2.rectangle(img, p1, p2, (0, 0, 255), thick)
        if i < len(labels) and labels[i]:
            cv2.putText(
                img,
                labels[i],
                (p1[0], max(12, p1[1] - 4)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (0, 0, 255),
                1,
                cv2.LINE_AA,
            )
    return img


def render_jpeg(
    image: Image, boxes: tuple[Box, ...], labels: tuple[str, ...], cfg: Config
) -> tuple[bytes, int, int]:
    """Encode ``image`` (BGR) as JPEG with ``boxes`` drawn; returns bytes, width, height."""
    img, scale = _scaled(image, cfg.max_width)
    if cfg.draw_boxes and boxes:
        img = draw(img, boxes, labels, scale)
    return _encode(img, cfg.quality), img.shape[1], img.shape[0]


def render_set(
    image: Image, boxes: tuple[Box, ...], labels: tuple[str, ...], cfg: Config
) -> dict[ArtifactKind, tuple[bytes, int, int]]:
    """The annotated snapshot, the clean copy and the thumbnail of one frame."""
    base, scale = _scaled(image, cfg.max_width)
    annotated = draw(base, boxes, labels, scale) if cfg.draw_boxes and boxes else base
    out: dict[ArtifactKind, tuple[bytes, int, int]] = {
        "snapshot": (_encode(annotated, cfg.quality), annotated.shape[1], annotated.shape[0])
    }
    if cfg.clean_copy:
        out["snapshot_clean"] = (_encode(base, cfg.quality), base.shape[1], base.shape[0])
    thumb, _ = _scaled(annotated, cfg.thumb_width)
    out["thumbnail"] = (_encode(thumb, min(cfg.quality, 80)), thumb.shape[1], thumb.shape[0])
    return out


def render_crops(
    crops: list[tuple[Image, Box, str]], height: int, quality: int
) -> tuple[bytes, int, int]:
    """Each object's crop (its box and a little around it) scaled to ``height``, side by side,
    its label and score written under it; returns JPEG bytes, width, height."""
    tiles = []
    for image, box, label in crops:
        ih, iw = image.shape[:2]
        mx, my = round(box.width * 0.15), round(box.height * 0.1)
        x1, y1 = max(0, box.x1 - mx), max(0, box.y1 - my)
        x2, y2 = min(iw, box.x2 + mx), min(ih, box.y2 + my)
        if x2 <= x1 or y2 <= y1:
            continue
        part = image[y1:y2, x1:x2]
        w = max(1, round(part.shape[1] * height / part.shape[0]))
        tile = cv2.resize(part, (min(w, 2 * height), height), interpolation=cv2.INTER_AREA)
        text_w = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] if label else 0
        right = max(4, text_w + 6 - tile.shape[1])  # the label fits under its own crop
        tile = cv2.copyMakeBorder(tile, 0, 18, 0, right, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        if label:
            cv2.putText(
                tile,
                label,
                (2, height + 13),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
        tiles.append(tile)
    if not tiles:
        raise ValueError("no crop inside its frame")
    strip = cast("Image", np.hstack(tiles))
    return _encode(strip, quality), strip.shape[1], strip.shape[0]


_EXT: dict[str, str] = {"snapshot": "jpg", "snapshot_clean": "clean.jpg", "thumbnail": "thumb.jpg"}


class SnapshotWriter(BaseModule[Config]):
    category: ClassVar[Any] = "event"
    Config: ClassVar[type[ModuleConfig]] = Config

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.root = Path(".")
        self.tz: str | None = None
        self.written = 0
        self.replaced = 0
        self.bytes_written = 0
        self._pending = 0
        self._written_seq: dict[str, int] = {}
        #: event id -> its snapshot was written while it was a detection (not yet an alert)
        self._detections: dict[str, bool] = {}
        self._latest: dict[str, Frame] = {}

    async def configure(self, app: AppConfig) -> None:
        self.cfg = self.config_of(app)
        self.root = app.storage.root
        self.tz = app.runtime.timezone

    async def start(self) -> None:
        self.subscribe(topics.EVENT.pattern(phase="started"), self._on_event, policy="block")
        self.subscribe(topics.EVENT.pattern(phase="updated"), self._on_event, policy="block")
        self.subscribe(topics.EVENT.pattern(phase="ended"), self._on_event, policy="block")
        self.subscribe(topics.CONTROL.name, self._on_command, policy="block")
        # reference only: keeping the newest frame per camera costs no decoding
        self.subscribe(topics.FRAME.pattern(), self._on_frame, policy="latest", maxsize=8)
        self.set_state("ok")

    async def _on_frame(self, msg: Message[Frame]) -> None:
        self._latest[msg.payload.camera_id] = msg.payload

    async def _on_event(self, msg: Message[EventNotice]) -> None:
        ev = msg.payload
        done = self._written_seq.get(ev.event_id)
        escalated = ev.severity == "alert" and self._detections.get(ev.event_id, False)
        if ev.phase == "ended":
            self._written_seq.pop(ev.event_id, None)
            self._detections.pop(ev.event_id, None)
        if ev.phase != "started":
            # the moment an activity becomes an alert its picture shows why (the photo sent)
            replace = ev.phase == "ended" or self.cfg.replace_on_update or escalated
            if done is None or done == ev.frame_seq or not replace:
                await self._crops(ev)
                return
        frame = ev.frame
        if frame is None or not frame.has_image:
            if ev.phase == "started":
                self.log.warning(
                    "snapshot_without_frame", event_id=ev.event_id, camera=ev.camera_id
                )
            return
        if ev.phase != "ended":
            self._written_seq[ev.event_id] = ev.frame_seq
            self._detections[ev.event_id] = ev.severity != "alert"
        self._pending += 1
        try:
            artifacts = await self.ctx.executor.run(self._write, ev, frame)
        finally:
            self._pending -= 1
        if done is not None:
            self.replaced += 1
        for a in artifacts:
            await self.bus.publish(topics.ARTIFACT.at(artifact=a.kind), a)
        await self._crops(ev)

    async def _crops(self, ev: EventNotice) -> None:
        """At the end of an activity its thumbnail becomes the row of its objects' best crops."""
        if ev.phase != "ended" or not ev.crops:
            return
        self._pending += 1
        try:
            art = await self.ctx.executor.run(self._write_crops, ev)
        finally:
            self._pending -= 1
        if art is not None:
            await self.bus.publish(topics.ARTIFACT.at(artifact=art.kind), art)

    def _write_crops(self, ev: EventNotice) -> MediaArtifact | None:
        objects = {o.track_id: o for o in ev.objects}
        crops = []
        for track_id, frame, box in ev.crops:
            o = objects.get(track_id)
            if o is None or frame is None or not frame.has_image:
                continue
            label = f"{o.label} {o.score:.0%}" if o.label != "motion" else ""
            crops.append((o.score, frame.image, box, label))
        if not crops:
            return None
        crops.sort(key=lambda c: -c[0])
        try:
            data, w, h = render_crops(
                [(img, box, label) for _s, img, box, label in crops[:8]],
                self.cfg.crop_height,
                min(self.cfg.quality, 80),
            )
        except ValueError:  # every box outside its frame: the thumbnail stays as it is
            return None
        rel = media_relpath(ev.camera_id, ev.started_at, ev.event_id, _EXT["thumbnail"], self.tz)
        return self._store(ev.event_id, ev.camera_id, "thumbnail", rel, data, w, h)

    def _write(self, ev: EventNotice, frame: Frame) -> list[MediaArtifact]:
        if ev.frame_objects:  # every object of the activity on that frame, with its score
            boxes = tuple(o.box for o in ev.frame_objects)
            labels: tuple[str, ...] = tuple(
                f"{o.label} {o.score:.0%}" if o.label != "motion" else "" for o in ev.frame_objects
            )
        else:
            boxes = ev.boxes
            labels = tuple(ev.labels[:1]) * len(ev.boxes) if ev.kind == "object" else ()
        out = []
        for kind, (data, w, h) in render_set(frame.image, boxes, labels, self.cfg).items():
            rel = media_relpath(ev.camera_id, ev.started_at, ev.event_id, _EXT[kind], self.tz)
            out.append(self._store(ev.event_id, ev.camera_id, kind, rel, data, w, h))
        return out

    def _store(
        self,
        event_id: str,
        camera_id: str,
        kind: ArtifactKind,
        rel: str,
        data: bytes,
        w: int,
        h: int,
    ) -> MediaArtifact:
        path = self.root / rel
        digest = atomic_write_bytes(path, data)
        self.written += 1
        self.bytes_written += len(data)
        return MediaArtifact(
            event_id=event_id,
            camera_id=camera_id,
            kind=kind,
            path=str(path.resolve()),
            relpath=rel,
            size_bytes=len(data),
            sha256=digest,
            mime="image/jpeg",
            created_at=time.time(),
            width=w,
            height=h,
        )

    async def _on_command(self, msg: Message[ControlCommand]) -> None:
        cmd = msg.payload
        if cmd.command != "snapshot":
            return
        cams = [cmd.camera_id] if cmd.camera_id else sorted(self._latest)
        for cid, event_id in manual_event_ids(cmd.request_id, cams):
            frame = self._latest.get(cid)
            if frame is None or not frame.has_image:
                self.log.warning("manual_snapshot_no_frame", camera=cid, source=cmd.source)
                continue
            self._pending += 1
            try:
                artifact = await self.ctx.executor.run(self._write_manual, event_id, frame)
            finally:
                self._pending -= 1
            await self.bus.publish(topics.ARTIFACT.at(artifact="snapshot"), artifact)

    def _write_manual(self, event_id: str, frame: Frame) -> MediaArtifact:
        img, _ = _scaled(frame.image, self.cfg.max_width)
        data = _encode(img, self.cfg.quality)
        rel = media_relpath(frame.camera_id, time.time(), event_id, "jpg", self.tz)
        return self._store(
            event_id, frame.camera_id, "snapshot", rel, data, img.shape[1], img.shape[0]
        )

    def metrics(self) -> dict[str, float | int | str]:
        return {
            "pending": self._pending,
            "written": self.written,
            "replaced": self.replaced,
            "bytes_written": self.bytes_written,
        }
