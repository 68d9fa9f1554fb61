"""Turns per-frame motion (and, with a detector, objects) into events with a lifecycle.

An event starts when something is seen in >= ``confirm_hits`` of the last ``confirm_window``
frames, is updated while it goes on, and ends after ``end_after_s`` seconds without it.
Within ``cooldown_s`` of an end, a new sighting on the same camera continues the old event
instead of raising a new alert.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig
from spyoncino.schemas import topics
from spyoncino.schemas.detections import DetectionEvent, MotionEvent
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Box


class Config(ModuleConfig):
    type: Literal["tracker"] = "tracker"
    source: Literal["auto", "motion", "objects"] = Field(
        default="auto",
        description="What raises events: objects when a detector runs (auto), or bare motion.",
    )
    confirm_hits: int = Field(default=2, ge=1, le=30, description="N of N-of-M confirmation.")
    confirm_window: int = Field(default=3, ge=1, le=60, description="M of N-of-M confirmation.")
    end_after_s: float = Field(
        default=5.0, ge=0.5, le=600.0, description="Seconds without sightings that end an event."
    )
    cooldown_s: float = Field(
        default=30.0, ge=0.0, le=3600.0, description="A sighting this soon after an end continues it."
    )
    update_every_s: float = Field(
        default=2.0, ge=0.1, le=600.0, description="Minimum seconds between event.*.updated."
    )


def _event_id(wall_ts: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(wall_ts))
    return f"{stamp}-{secrets.token_hex(3)}"


@dataclass
class _CameraTrack:
    hits: deque[bool] = field(default_factory=lambda: deque(maxlen=3))
    event: EventNotice | None = None
    last_seen_mono: float = 0.0
    last_update_mono: float = 0.0
    ended_mono: float | None = None
    ended_event: EventNotice | None = None


class EventTracker(BaseModule):
    category: ClassVar[Any] = "event"
    Config: ClassVar[type[ModuleConfig]] = Config

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.detector_enabled = False
        self._cams: dict[str, _CameraTrack] = {}
        self.events_started = 0

    async def configure(self, app: AppConfig) -> None:
        self.cfg = app.section(self.name or "tracker", Config)
        det = getattr(app, "detector", None)
        self.detector_enabled = bool(getattr(det, "enabled", False))
        for cam in self._cams.values():
            cam.hits = deque(cam.hits, maxlen=self.cfg.confirm_window)

    @property
    def mode(self) -> str:
        if self.cfg.source == "auto":
            return "objects" if self.detector_enabled else "motion"
        return self.cfg.source

    async def start(self) -> None:
        self.subscribe(topics.MOTION.name, self._on_motion, policy="block")
        self.subscribe(topics.OBJECTS.name, self._on_objects, policy="block")
        self.spawn(self._expire_loop(), "expire")
        self.set_state("ok", f"events from {self.mode}")

    def _cam(self, camera_id: str) -> _CameraTrack:
        cam = self._cams.get(camera_id)
        if cam is None:
            cam = self._cams[camera_id] = _CameraTrack(hits=deque(maxlen=self.cfg.confirm_window))
        return cam

    async def _on_motion(self, msg: Message[MotionEvent]) -> None:
        if self.mode != "motion":
            return
        m = msg.payload
        await self._sighting(
            m.camera_id, m.mono_ts, m.wall_ts, bool(m.boxes), m.boxes, (), 0.0, m, "motion"
        )

    async def _on_objects(self, msg: Message[DetectionEvent]) -> None:
        if self.mode != "objects":
            return
        d = msg.payload
        labels = tuple(sorted({x.label for x in d.detections}))
        score = max((x.score for x in d.detections), default=0.0)
        await self._sighting(
            d.camera_id,
            d.mono_ts,
            d.wall_ts,
            bool(d.detections),
            tuple(x.box for x in d.detections),
            labels,
            score,
            d,
            "object",
        )

    async def _sighting(
        self,
        camera_id: str,
        mono: float,
        wall: float,
        seen: bool,
        boxes: tuple[Box, ...],
        labels: tuple[str, ...],
        score: float,
        src: MotionEvent | DetectionEvent,
        kind: Literal["object", "motion"],
    ) -> None:
        cam = self._cam(camera_id)
        cam.hits.append(seen)
        if not seen:
            return
        cam.last_seen_mono = mono
        if cam.event is None:
            if sum(cam.hits) < self.cfg.confirm_hits:
                return
            resumed = cam.ended_event
            if resumed is not None and cam.ended_mono is not None and (
                mono - cam.ended_mono <= self.cfg.cooldown_s
            ):
                cam.event = resumed.model_copy(
                    update={"phase": "updated", "ended_at": None, "updated_at": wall}
                )
                cam.ended_event = None
                await self._publish(cam.event, src, boxes)
                return
            cam.event = EventNotice(
                event_id=_event_id(wall),
                camera_id=camera_id,
                kind=kind,
                phase="started",
                labels=labels,
                top_score=score,
                started_at=wall,
                updated_at=wall,
                started_mono=mono,
                boxes=boxes,
                frame_seq=src.seq,
                frame_width=src.frame_width,
                frame_height=src.frame_height,
            )
            cam.last_update_mono = mono
            self.events_started += 1
            await self._publish(cam.event, src, boxes)
            return
        ev = cam.event
        merged = tuple(sorted(set(ev.labels) | set(labels)))
        cam.event = ev.model_copy(
            update={
                "phase": "updated",
                "labels": merged,
                "top_score": max(ev.top_score, score),
                "updated_at": wall,
                "boxes": boxes,
                "frame_seq": src.seq,
            }
        )
        if mono - cam.last_update_mono >= self.cfg.update_every_s:
            cam.last_update_mono = mono
            await self._publish(cam.event, src, boxes)

    async def _publish(
        self, ev: EventNotice, src: MotionEvent | DetectionEvent | None, boxes: tuple[Box, ...]
    ) -> None:
        frame = getattr(src, "frame", None) if src is not None else None
        payload = ev.model_copy(update={"frame": frame, "boxes": boxes})
        await self.bus.publish(topics.EVENT.at(kind=ev.kind, phase=ev.phase), payload)

    async def _expire_loop(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(0.25)
            await self.expire(time.monotonic())

    async def expire(self, now_mono: float) -> None:
        for cam in self._cams.values():
            ev = cam.event
            if ev is None or now_mono - cam.last_seen_mono < self.cfg.end_after_s:
                continue
            ended = ev.model_copy(update={"phase": "ended", "ended_at": time.time()})
            cam.event = None
            cam.ended_event = ended
            cam.ended_mono = now_mono
            cam.hits.clear()
            await self._publish(ended, None, ended.boxes)

    async def stop(self) -> None:
        await super().stop()
        # A replay that ends mid-event still closes it, so the index has an end time.
        for cam in self._cams.values():
            if cam.event is not None:
                ended = cam.event.model_copy(update={"phase": "ended", "ended_at": time.time()})
                cam.event = None
                await self._publish(ended, None, ended.boxes)

    def metrics(self) -> dict[str, float | int | str]:
        return {
            "events_started": self.events_started,
            "open_events": sum(1 for c in self._cams.values() if c.event is not None),
            "mode": self.mode,
        }
