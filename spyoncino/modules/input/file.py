"""Replay a video file as a camera: for the demo, for tests, and for trying settings on footage."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import CameraOptions, ModuleConfig, ModuleConfigError, ModuleContext
from spyoncino.helpers.camera import (
    CameraInput,
    RawFrame,
    SourceEnded,
    SourceError,
    SourceFatal,
    av_frame_to_raw,
)
from spyoncino.helpers.packets import PacketRing
from spyoncino.helpers.sources import BUILTIN_PREFIX as BUILTIN_PREFIX
from spyoncino.helpers.sources import resolve as resolve
from spyoncino.schemas import topics

VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".m4v", ".webm", ".ts", ".h264", ".mjpeg"}


class Config(ModuleConfig):
    type: Literal["file"] = "file"


class FileCamera(CameraOptions):
    pace: Literal["realtime", "fast", "lockstep"] = Field(
        default="realtime",
        description=(
            "realtime: native fps; fast: as fast as decoding goes (slow consumers see the newest "
            "frame); lockstep: as fast as every frame consumer keeps up (reproducible tests)."
        ),
    )
    loop: bool = Field(default=False, description="Start over at the end instead of ending.")
    speed: float = Field(default=1.0, gt=0.0, le=100.0, description="Realtime speed factor.")


class FileInput(CameraInput[Config]):
    """Reads a file with PyAV: luma straight from the Y plane, colour decoded only on demand."""

    Config: ClassVar[type[ModuleConfig]] = Config
    Camera: ClassVar[type[CameraOptions] | None] = FileCamera
    finite: ClassVar[bool] = True

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.opts = FileCamera()
        self._container: Any = None
        self._frames: Any = None
        self._t0_mono: float | None = None
        self._t0_pts: float = 0.0
        self._offset = 0.0
        self._last_pts = 0.0
        self._clock0: tuple[float, float, float] | None = None
        self._declared_s: float | None = None
        self._pass_offset = 0.0

    @classmethod
    def accepts(cls, source: str) -> bool:
        if source.startswith((BUILTIN_PREFIX, "file://")):
            return True
        if "://" in source or source.startswith("/dev/"):
            return False
        return Path(source).suffix.lower() in VIDEO_SUFFIXES

    @classmethod
    def preflight(cls, app: AppConfig, camera_id: str | None) -> list[str]:
        cam = app.cameras.get(camera_id or "")
        if cam is None or resolve(cam.source).is_file():
            return []
        return [f"cameras.{camera_id}.source: file {str(resolve(cam.source))!r} does not exist"]

    async def check(self, app: AppConfig) -> None:
        path = resolve(app.cameras[self.camera_id].source)
        if not path.is_file():
            raise ModuleConfigError(
                f"cameras.{self.camera_id}.source: file {str(path)!r} does not exist"
            )

    async def configure(self, app: AppConfig) -> None:
        await self.check(app)  # a refused source is never adopted, so never opened
        await super().configure(app)
        self.opts = self.cam.options(self.name or "file", FileCamera)

    def open(self) -> None:
        import av

        path = resolve(self.cam.source)
        try:
            self._container = av.open(str(path))
            stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError) as e:
            raise SourceError(f"cannot open {path.name}: {e}") from e
        # decode as an RTSP camera does (rtsp.auto_threads): one thread up to 1280x720. FFmpeg's
        # default (a frame thread per core, plus one) costs each camera ~9 MB more at 720p
        # (every frame thread keeps its own pictures) and more CPU per frame
        ctx = stream.codec_context
        ctx.thread_count = 1 if 0 < ctx.width * ctx.height <= 1280 * 720 else 2
        stream.thread_type = "AUTO"
        self._time_base = float(stream.time_base) if stream.time_base else 0.1
        rate = stream.average_rate
        self._frame_period = 1.0 / float(rate) if rate else 0.1
        # what the file says it holds: a decode that stops well before is a truncated file
        if stream.duration:
            self._declared_s = float(stream.duration * stream.time_base)
        elif self._container.duration:
            self._declared_s = self._container.duration / 1_000_000
        else:
            self._declared_s = None
        self._pass_offset = self._offset
        ring = self.budgeted_ring(self.packets)
        self.packets = ring if ring.reset(stream, shift_s=self._offset) else None
        self._frames = self._decode(self._container, stream, self.packets)
        self._t0_mono = None

    @staticmethod
    def _decode(container: Any, stream: Any, ring: PacketRing | None) -> Iterator[Any]:
        """Frames of ``stream``; an H.264 file's packets also go to ``ring`` (for clips)."""
        if ring is None:
            yield from container.decode(stream)
            return
        for packet in container.demux(stream):
            ring.append(packet)
            yield from packet.decode()

    def _cut_short(self, why: str) -> None:
        """At the end of a pass: SourceFatal when the file stopped well before its length."""
        reached = self._last_pts - self._pass_offset + self._frame_period
        declared = self._declared_s
        if declared is None or reached >= declared - max(1.0, 3 * self._frame_period):
            if why:  # an error at the very end: the last frames were damaged, say so
                self.log.warning("source_damaged_end", camera=self.camera_id, error=why)
            return
        msg = (
            f"{Path(self.cam.source).name} is truncated or damaged: it stops at {reached:.1f} s "
            f"of its {declared:.1f} s" + (f" ({why})" if why else "")
        )
        if self.opts.loop:
            self.log.warning("source_truncated", camera=self.camera_id, error=msg)
            return
        raise SourceFatal(msg)

    def read(self) -> RawFrame:
        import av

        if self._frames is None:
            raise SourceError("file is not open")
        try:
            frame = next(self._frames)
        except (StopIteration, av.FFmpegError) as e:
            # a decode error cannot be read past (reading again would replay from the start)
            self._cut_short("" if isinstance(e, StopIteration) else f"decode error: {e}")
            if self.opts.loop:
                self._offset = self._last_pts + self._frame_period
                self.close()
                self.open()
                return self.read()
            raise SourceEnded from None
        pts = (
            frame.pts * self._time_base
            if frame.pts is not None
            else self._last_pts + self._frame_period
        ) + self._offset
        self._last_pts = pts
        return av_frame_to_raw(frame, self.cam.luma_width, pts_s=pts)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames = None

    def pace(self, raw: RawFrame) -> float:
        if self.opts.pace != "realtime" or raw.pts_s is None:
            return 0.0
        now = self.ctx.clock.monotonic()
        if self._t0_mono is None:
            self._t0_mono = now
            self._t0_pts = raw.pts_s
            return 0.0
        due = self._t0_mono + (raw.pts_s - self._t0_pts) / self.opts.speed
        return max(0.0, due - now)

    def stamp(self, raw: RawFrame, now: float) -> tuple[float, float]:
        """Faster-than-real-time replays keep the video's own clock.

        Event timing (confirmation windows, end-after, cooldown, pre-roll) then behaves as it
        would on a live camera however fast the file is read.
        """
        if self.opts.pace == "realtime" or raw.pts_s is None:
            return super().stamp(raw, now)
        if self._clock0 is None:
            self._clock0 = (now, self.ctx.clock.time(), raw.pts_s)
        mono0, wall0, pts0 = self._clock0
        return mono0 + raw.pts_s - pts0, wall0 + raw.pts_s - pts0

    async def _publish(self, raw: RawFrame, now: float) -> None:
        if self.opts.pace == "lockstep":
            # every stage has finished the previous frame, including work that runs outside
            # bus handlers (the detector's inference queue)
            stages = (self.topic, topics.MOTION.name, topics.OBJECTS.name)
            await self.bus.wait_idle(*stages)
            while self.ctx.pipeline_pending():
                await asyncio.sleep(0.001)
                await self.bus.wait_idle(*stages)
        await super()._publish(raw, now)
