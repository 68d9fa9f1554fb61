"""The shared base of camera inputs: pacing, fps cap, frame publishing, health, reconnect.

A concrete input implements ``open`` / ``read`` / ``close`` (blocking calls, run in the
executor) and, optionally, ``luma_of``. The base runs the loop: it reads, caps the rate,
publishes ``camera.<id>.frame`` (latest-wins for consumers), measures fps and reconnects with
exponential backoff and jitter when the source fails or stalls.
"""

from __future__ import annotations

import asyncio
import random
import time
from abc import abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import cv2
import numpy as np

from spyoncino.core.config import AppConfig, CameraBase, redact_text
from spyoncino.core.contracts import BaseModule, CameraOptions
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Frame, Image

CameraState = Literal["connecting", "streaming", "stalled", "reconnecting", "failed", "ended"]


class SourceEnded(Exception):
    """A finite source (a file) delivered its last frame."""


class SourceError(Exception):
    """The source failed; the loop reconnects with backoff. The message must be log-safe."""


@dataclass(frozen=True, slots=True)
class RawFrame:
    """What ``read`` returns: a BGR image or a lazy decoder, plus the luma plane if cheap."""

    width: int
    height: int
    image: Image | None = None
    decode: Any = None  # Callable[[], Image]
    luma: Image | None = None
    pts_s: float | None = None  # media timestamp, for pacing files


def make_luma(image: Image, width: int) -> Image:
    """Downscale a BGR (or grey) image to a ``width``-wide grey plane."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape[:2]
    if w <= width:
        return np.ascontiguousarray(grey)
    height = max(1, round(h * width / w))
    return cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)


def shrink_luma(plane: Image, width: int) -> Image:
    """Downscale an already-grey plane (the Y of YUV) to ``width``."""
    h, w = plane.shape[:2]
    if w <= width:
        return np.ascontiguousarray(plane)
    height = max(1, round(h * width / w))
    return cv2.resize(plane, (width, height), interpolation=cv2.INTER_AREA)


class CameraInput(BaseModule):
    """Base of every ``camera.<id>.frame`` producer."""

    category: ClassVar[Any] = "input"
    per_camera: ClassVar[bool] = True
    #: whether reaching the end of the source is normal (files) rather than a failure
    finite: ClassVar[bool] = False
    backoff_base: ClassVar[float] = 1.0
    backoff_cap: ClassVar[float] = 30.0

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        if ctx.camera_id is None:
            raise ValueError("camera inputs need a camera id")
        self.camera_id: str = ctx.camera_id
        self.cam: CameraBase = ctx.app.cameras[self.camera_id]
        self.cam_state: CameraState = "connecting"
        self.seq = 0
        self.frames_read = 0
        self.frames_published = 0
        self.frames_capped = 0
        self.reconnects = 0
        self.last_frame_mono: float | None = None
        self._stamps: deque[float] = deque(maxlen=50)
        self._finished = False
        self._next_allowed = 0.0
        self.topic = topics.FRAME.at(camera=self.camera_id)
        self.stall_timeout = 10.0

    # -- what a concrete input implements (blocking; run in the executor) ---------------------
    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> RawFrame:
        """Next frame; raise SourceEnded at the end of a finite source, SourceError on failure."""

    @abstractmethod
    def close(self) -> None: ...

    def pace(self, raw: RawFrame) -> float:
        """Seconds to wait before publishing ``raw`` (files replay at native speed)."""
        return 0.0

    def options(self, model: type[CameraOptions]) -> Any:
        return self.cam.options(self.name, model)

    # -- lifecycle ---------------------------------------------------------------------------
    async def configure(self, app: AppConfig) -> None:
        self.cam = app.cameras[self.camera_id]

    async def start(self) -> None:
        self._finished = False
        self.cam_state = "connecting"
        self.set_state("starting", "connecting")
        self.spawn(self._loop(), "frames")

    async def stop(self) -> None:
        await super().stop()
        await self.ctx.executor.run(self._safe_close)

    def _safe_close(self) -> None:
        try:
            self.close()
        except Exception as exc:
            self.log.debug("close_failed", error=self.redact(repr(exc)))

    def is_finished(self) -> bool:
        return self._finished

    def redact(self, text: str) -> str:
        return redact_text(text)

    # -- the loop ----------------------------------------------------------------------------
    async def _loop(self) -> None:
        attempt = 0
        while True:
            try:
                await self.ctx.executor.run(self.open)
                attempt = 0
                self._set_cam("streaming" if self.frames_read else "connecting")
                await self._read_until_failure()
            except SourceEnded:
                self._finished = True
                self._set_cam("ended")
                self.log.info("source_ended", camera=self.camera_id, frames=self.frames_read)
                return
            except SourceError as exc:
                await self.ctx.executor.run(self._safe_close)
                attempt += 1
                self.reconnects += 1
                delay = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                msg = self.redact(str(exc))
                self._set_cam("reconnecting", error=msg)
                self.log.warning(
                    "camera_reconnecting",
                    camera=self.camera_id,
                    attempt=attempt,
                    retry_in_s=round(delay, 2),
                    error=msg,
                )
                await asyncio.sleep(delay)

    async def _read_until_failure(self) -> None:
        executor = self.ctx.executor
        while True:
            try:
                raw = await asyncio.wait_for(executor.run(self.read), timeout=self.stall_timeout)
            except TimeoutError as exc:
                self._set_cam("stalled", error=f"no frame for {self.stall_timeout:.0f}s")
                raise SourceError(f"stalled: no frame for {self.stall_timeout:.0f}s") from exc
            self.frames_read += 1
            wait = self.pace(raw)
            if wait > 0:
                await asyncio.sleep(wait)
            now = time.monotonic()
            cap = self.cam.max_fps
            if cap and now < self._next_allowed:
                self.frames_capped += 1
                continue
            if cap:
                self._next_allowed = max(self._next_allowed + 1.0 / cap, now + 0.5 / cap)
            await self._publish(raw, now)

    async def _publish(self, raw: RawFrame, now: float) -> None:
        luma = raw.luma
        width = self.cam.luma_width
        if luma is None:
            if raw.image is None:
                raise SourceError("input produced neither an image nor a luma plane")
            luma = make_luma(raw.image, width)
        elif luma.shape[1] > width:
            luma = shrink_luma(luma, width)
        frame = Frame(
            camera_id=self.camera_id,
            seq=self.seq,
            mono_ts=now,
            wall_ts=time.time(),
            width=raw.width,
            height=raw.height,
            luma=luma,
            _image=raw.image,
            _decode=raw.decode,
        )
        self.seq += 1
        self.last_frame_mono = now
        self._stamps.append(now)
        if self.cam_state != "streaming":
            self._set_cam("streaming")
        await self.bus.publish(self.topic, frame)
        self.frames_published += 1

    def _set_cam(self, state: CameraState, error: str | None = None) -> None:
        self.cam_state = state
        module_state = {
            "streaming": "ok",
            "ended": "ok",
            "connecting": "starting",
            "failed": "failed",
        }.get(state, "degraded")
        self.set_state(module_state, state, error)  # type: ignore[arg-type]

    @property
    def fps(self) -> float:
        stamps = self._stamps
        if len(stamps) < 2:
            return 0.0
        span = stamps[-1] - stamps[0]
        if self.last_frame_mono is not None and time.monotonic() - self.last_frame_mono > 5:
            return 0.0
        return (len(stamps) - 1) / span if span > 0 else 0.0

    def metrics(self) -> dict[str, float | int | str]:
        age = -1.0 if self.last_frame_mono is None else time.monotonic() - self.last_frame_mono
        return {
            "camera": self.camera_id,
            "camera_state": self.cam_state,
            "fps": round(self.fps, 2),
            "last_frame_age_s": round(age, 3),
            "frames": self.frames_published,
            "frames_capped": self.frames_capped,
            "reconnects": self.reconnects,
        }
