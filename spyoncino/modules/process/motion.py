"""Cheap motion detection on the small luma plane every input provides.

Per camera: blur, running-average background, absolute difference, threshold, mask, dilate,
contours -> boxes in full-frame pixels plus the share of the frame that changed. Every frame is
examined. A change over most of the frame (a light switched on, a cloud, auto-exposure) is not
motion: the background is re-learnt from that frame instead.

Publishes ``process.motion.detected`` for every frame it examines (boxes empty when nothing
moved), so downstream stages can count hits and misses; the detector infers only on frames
with boxes.

Fair under load: each camera has its own latest-wins slot (one subscription per camera), so
when the stage falls behind every camera still gets its newest frame examined in turn; with
one shared slot the camera that published last won and another went blind. Frames a camera
published but the stage never examined are counted per camera from the frame numbers
(``cam.<id>.skipped``, beside ``cam.<id>.frames`` and ``cam.<id>.fps``, the examined rate),
and the module is ``degraded`` naming the camera while more than ``SKIPPED_DEGRADED`` of its
recent frames were skipped.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, CameraOptions, ModuleConfig, ModuleContext
from spyoncino.schemas import topics
from spyoncino.schemas.detections import MotionEvent
from spyoncino.schemas.frames import Box, Frame

if TYPE_CHECKING:
    from spyoncino.platform.profiles import Profile

Polygon = list[tuple[float, float]]

#: share of a camera's recent frames skipped above which the stage reports it degraded
SKIPPED_DEGRADED = 0.5
#: examined frames the skipped share is measured over
SKIP_WINDOW = 50
#: grey planes up to this many pixels (the default 320 wide plane is 57,600) are examined on
#: the event loop (about 0.1 ms on x86, 0.4 ms on a Pi 4); larger ones in the worker pool
INLINE_MAX_PIXELS = 320 * 240


class Config(ModuleConfig):
    type: Literal["motion"] = "motion"

    @classmethod
    def profile_defaults(cls, profile: Profile) -> dict[str, Any]:
        return {"width": profile.motion.downscale_width}  # the board's grey-plane width

    width: int = Field(
        default=320, ge=64, le=1280, description="Processing width; wider luma is downscaled."
    )
    threshold: int = Field(
        default=25, ge=1, le=255, description="Grey-level difference that counts as change."
    )
    min_area: float = Field(
        default=0.002,
        ge=0.0,
        le=0.5,
        description="Smallest moving blob, as a share of the frame area.",
    )
    blur: int = Field(default=5, ge=0, le=31, description="Gaussian blur kernel (odd; 0: none).")
    learning_rate: float = Field(
        default=0.05, gt=0.0, le=1.0, description="How fast the background adapts (per frame)."
    )
    global_change: float = Field(
        default=0.6,
        gt=0.05,
        le=1.0,
        description="Share of the frame changed at once that means lighting, not motion.",
    )
    calibration_frames: int = Field(
        default=5, ge=1, le=300, description="Frames that only learn the background at start."
    )
    dilate: int = Field(default=2, ge=0, le=10, description="Dilation passes that join blobs.")

    @field_validator("blur")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v and v % 2 == 0:
            raise ValueError(f"blur must be odd or 0, got {v}")
        return v


class MotionCamera(CameraOptions):
    enabled: bool = Field(default=True, description="Detect motion on this camera.")
    threshold: int | None = Field(
        default=None, ge=1, le=255, description="Overrides motion.threshold."
    )
    min_area: float | None = Field(
        default=None, ge=0.0, le=0.5, description="Overrides motion.min_area."
    )
    masks: list[Polygon] = Field(
        default_factory=list,
        description="Polygons to ignore, points as [x, y] in 0..1 of the frame (a road, a tree).",
    )

    @field_validator("masks")
    @classmethod
    def _polygons(cls, v: list[Polygon]) -> list[Polygon]:
        for i, poly in enumerate(v):
            if len(poly) < 3:
                raise ValueError(f"mask {i} needs at least 3 points, got {len(poly)}")
            for x, y in poly:
                if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                    raise ValueError(f"mask {i} point ({x}, {y}) is outside 0..1")
        return v


@dataclass(frozen=True, slots=True)
class MotionResult:
    boxes: tuple[tuple[int, int, int, int], ...]  # in processing-plane pixels
    changed_fraction: float
    recalibrated: bool


class MotionState:
    """The background model of one camera. Pure OpenCV, no bus: benchmarked on its own."""

    def __init__(self, cfg: Config, cam: MotionCamera | None = None) -> None:
        self.cfg = cfg
        self.cam = cam or MotionCamera()
        self.bg: npt.NDArray[np.float32] | None = None
        self.frames = 0
        self.recalibrations = 0
        self._mask: npt.NDArray[np.uint8] | None = None
        self._kernel = np.ones((3, 3), np.uint8)

    def reconfigure(self, cfg: Config, cam: MotionCamera) -> None:
        self.cfg, self.cam = cfg, cam
        self._mask = None

    def _prepare(self, luma: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        h, w = luma.shape[:2]
        if w > self.cfg.width:
            size = (self.cfg.width, max(1, round(h * self.cfg.width / w)))
            luma = np.asarray(cv2.resize(luma, size, interpolation=cv2.INTER_AREA), np.uint8)
        k = self.cfg.blur
        return np.asarray(cv2.GaussianBlur(luma, (k, k), 0), np.uint8) if k else luma

    def _mask_for(self, shape: tuple[int, ...]) -> npt.NDArray[np.uint8] | None:
        if not self.cam.masks:
            return None
        if self._mask is None or self._mask.shape != shape[:2]:
            h, w = shape[:2]
            mask = np.full((h, w), 255, np.uint8)
            for poly in self.cam.masks:
                pts = np.array(
                    [[round(x * (w - 1)), round(y * (h - 1))] for x, y in poly], np.int32
                )
                cv2.fillPoly(mask, [pts], 0)
            self._mask = mask
        return self._mask

    def process(self, luma: npt.NDArray[np.uint8]) -> MotionResult:
        grey = self._prepare(luma)
        self.frames += 1
        if self.bg is None or self.bg.shape != grey.shape:
            self.bg = grey.astype(np.float32)
            return MotionResult((), 0.0, True)
        diff = cv2.absdiff(grey, cv2.convertScaleAbs(self.bg))
        threshold = self.cam.threshold or self.cfg.threshold
        _, binary = cv2.threshold(diff, threshold, 255, cv2.THRESH_BINARY)
        mask = self._mask_for(binary.shape)
        if mask is not None:
            binary = cv2.bitwise_and(binary, mask)
        changed = cv2.countNonZero(binary) / binary.size
        if self.frames <= self.cfg.calibration_frames:
            cv2.accumulateWeighted(grey, self.bg, 0.5)
            return MotionResult((), changed, True)
        if changed >= self.cfg.global_change:
            # Lighting changed everywhere at once: start over from this frame.
            self.bg = grey.astype(np.float32)
            self.recalibrations += 1
            return MotionResult((), changed, True)
        cv2.accumulateWeighted(grey, self.bg, self.cfg.learning_rate)
        if changed == 0.0:
            return MotionResult((), 0.0, False)
        if self.cfg.dilate:
            binary = cv2.dilate(binary, self._kernel, iterations=self.cfg.dilate)
        contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        min_area = (
            self.cam.min_area if self.cam.min_area is not None else self.cfg.min_area
        ) * binary.size
        boxes = []
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            if w * h >= min_area and cv2.contourArea(c) >= min_area * 0.25:
                boxes.append((x, y, x + w, y + h))
        return MotionResult(tuple(boxes), changed, False)


def to_frame_boxes(
    boxes: tuple[tuple[int, int, int, int], ...],
    plane_w: int,
    plane_h: int,
    width: int,
    height: int,
) -> tuple[Box, ...]:
    sx, sy = width / plane_w, height / plane_h
    return tuple(
        Box(
            x1=max(0, int(x1 * sx)),
            y1=max(0, int(y1 * sy)),
            x2=min(width, int(np.ceil(x2 * sx))),
            y2=min(height, int(np.ceil(y2 * sy))),
        )
        for x1, y1, x2, y2 in boxes
    )


@dataclass
class _CameraCount:
    """What the stage did with one camera's frames, from the cameras' own frame numbers."""

    frames: int = 0
    skipped: int = 0
    last_seq: int | None = None
    #: (frame clock, frames skipped just before) of the last examined frames
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=SKIP_WINDOW))
    #: the sum of the gaps in ``recent``, kept as frames come and go (not summed per frame)
    recent_gaps: int = 0

    def examined(self, seq: int, mono_ts: float) -> int:
        """Count one examined frame; returns how many frames were skipped just before it."""
        gap = 0
        if self.last_seq is not None and seq > self.last_seq:
            gap = seq - self.last_seq - 1
        self.last_seq = seq  # a lower number: the source restarted, count from there
        self.frames += 1
        self.skipped += gap
        if len(self.recent) == self.recent.maxlen:
            self.recent_gaps -= self.recent[0][1]
        self.recent.append((mono_ts, gap))
        self.recent_gaps += gap
        return gap

    def skipped_share(self) -> float:
        gaps = self.recent_gaps
        seen = len(self.recent)
        return gaps / (gaps + seen) if seen else 0.0

    def fps(self) -> float:
        """Examined frames per second on the frames' own clock."""
        if len(self.recent) < 2:
            return 0.0
        span = self.recent[-1][0] - self.recent[0][0]
        return (len(self.recent) - 1) / span if span > 0 else 0.0


class MotionDetector(BaseModule[Config]):
    category: ClassVar[Any] = "process"
    frame_stage: ClassVar[bool] = True
    Config: ClassVar[type[ModuleConfig]] = Config
    Camera: ClassVar[type[CameraOptions] | None] = MotionCamera

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.cams: dict[str, MotionCamera] = {}
        self.states: dict[str, MotionState] = {}
        self.frames = 0
        self.motion_frames = 0
        self.busy_s = 0.0
        self.counts: dict[str, _CameraCount] = {}
        self._camera_ids: list[str] = []

    async def configure(self, app: AppConfig) -> None:
        self.cfg = self.config_of(app)
        self.cams = {
            cid: cam.options(self.name or "motion", MotionCamera)
            for cid, cam in app.cameras.items()
        }
        self._camera_ids = [cid for cid, cam in app.cameras.items() if cam.enabled]
        for cid, state in self.states.items():
            state.reconfigure(self.cfg, self.cams.get(cid, MotionCamera()))

    async def start(self) -> None:
        # latest-wins per camera: when motion falls behind it sees each camera's newest frame,
        # never a backlog, and no camera's frames crowd out another's
        for cid in self._camera_ids or ["*"]:
            self.subscribe(topics.FRAME.at(camera=cid), self._on_frame, policy="latest", maxsize=1)
        self.set_state("ok")

    async def _on_frame(self, msg: Message[Frame]) -> None:
        frame = msg.payload
        cam = self.cams.get(frame.camera_id)
        if cam is None:  # not built per frame: a pydantic model per frame showed in profiles
            cam = self.cams[frame.camera_id] = MotionCamera()
        if not cam.enabled:
            return
        state = self.states.get(frame.camera_id)
        if state is None:
            state = self.states[frame.camera_id] = MotionState(self.cfg, cam)
        t0 = time.perf_counter()
        luma = frame.luma
        if luma.size <= INLINE_MAX_PIXELS:
            # a small plane is examined in a fraction of a millisecond: handing it to the pool
            # and back (two thread wake-ups, two GIL hand-overs, a future chain) costs more
            # CPU than the work itself, on every frame of every idle camera
            result = state.process(luma)
        else:
            result = await self.ctx.executor.run(state.process, luma)
        self.busy_s += time.perf_counter() - t0
        self.frames += 1
        count = self.counts.get(frame.camera_id)
        if count is None:
            count = self.counts[frame.camera_id] = _CameraCount()
        gap = count.examined(frame.seq, frame.mono_ts)
        if gap or count.recent_gaps or self._state == "degraded":
            # only skipped frames (or the end of a degraded spell) change the verdict: a
            # camera whose every frame is examined pays nothing per frame for it
            self._update_health()
        plane_h, plane_w = frame.luma.shape[:2]
        if plane_w > self.cfg.width:
            plane_h, plane_w = max(1, round(plane_h * self.cfg.width / plane_w)), self.cfg.width
        boxes = to_frame_boxes(result.boxes, plane_w, plane_h, frame.width, frame.height)
        if boxes:
            self.motion_frames += 1
        # built without validation: the values come from our own arithmetic, once per frame
        await self.bus.publish(
            topics.MOTION.name,
            MotionEvent.model_construct(
                schema_version=1,
                camera_id=frame.camera_id,
                seq=frame.seq,
                mono_ts=frame.mono_ts,
                wall_ts=frame.wall_ts,
                frame_width=frame.width,
                frame_height=frame.height,
                boxes=boxes,
                changed_fraction=min(1.0, result.changed_fraction),
                frame=frame,
            ),
        )

    def _update_health(self) -> None:
        behind = [
            f"{cid}: {c.skipped_share():.0%} of frames skipped"
            for cid, c in self.counts.items()
            if len(c.recent) >= 10 and c.skipped_share() > SKIPPED_DEGRADED
        ]
        if behind:
            self.set_state("degraded", "; ".join(behind))
        elif self._state == "degraded":
            self.set_state("ok")

    def metrics(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {
            "frames": self.frames,
            "motion_frames": self.motion_frames,
            "recalibrations": sum(s.recalibrations for s in self.states.values()),
            "ms_per_frame": round(1000 * self.busy_s / self.frames, 4) if self.frames else 0.0,
            "frames_skipped": sum(c.skipped for c in self.counts.values()),
        }
        for cid, c in self.counts.items():
            out[f"cam.{cid}.frames"] = c.frames
            out[f"cam.{cid}.skipped"] = c.skipped
            out[f"cam.{cid}.fps"] = round(c.fps(), 2)
        return out
