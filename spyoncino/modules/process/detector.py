"""Object detection on quantized models, gated by motion.

Only frames with motion are inferred, and only around the motion (``_regions.py``): one region
around all of it, grown to at least the model's input size and clamped to the frame, plus,
when that region had to be shrunk a lot, optional crops for the motion it did not explain.
Each region is resized once to the model input and the detections mapped back to full-frame
pixels. All cameras share one interpreter through one queue that keeps only the newest frame
per camera and serves cameras in turn, each no faster than its ``max_fps``; a newly found
object earns its camera an immediate second look.

Settings are in ``_detector_config.py``, model loading in ``_models.py``, runtimes (LiteRT,
tflite_runtime, Coral EdgeTPU, ONNX Runtime) in ``_backends.py`` and output formats
(YOLOv8/YOLO11, YOLOv5, SSD, SSD with post-processing, NanoDet) in ``_decoders.py``. The
bundled default is a person-only int8 SSDLite MobileNetV2.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import (
    BaseModule,
    CameraOptions,
    ModuleConfig,
    ModuleConfigError,
    ModuleContext,
)
from spyoncino.modules.process._detector_config import Config as Config
from spyoncino.modules.process._detector_config import DetectorCamera as DetectorCamera
from spyoncino.modules.process._models import bundled_model_path as bundled_model_path
from spyoncino.modules.process._models import describe_models as describe_models
from spyoncino.modules.process._models import load_model as load_model
from spyoncino.modules.process._models import resolve_model_path as resolve_model_path
from spyoncino.modules.process._regions import (
    box_of,
    merge_detections,
    near,
    plan_regions,
    within,
)
from spyoncino.schemas import topics
from spyoncino.schemas.detections import Detection, DetectionEvent, MotionEvent
from spyoncino.schemas.frames import Box, Frame

RECENT_S = 1.0  # an object seen this recently (frame time) is not new to the detector
STILL_RESET_S = 1.0  # motion that starts again after this long without any is looked at anew
SAME_PLACE = 0.1  # an idle camera's motion box may reach this share past the empty looks' boxes


# -- the module --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Job:
    camera_id: str
    frame: Frame
    seq: int
    mono_ts: float
    wall_ts: float
    width: int
    height: int
    motion: tuple[Box, ...]


class ObjectDetector(BaseModule[Config]):
    """Confirms motion with an object detector; publishes ``process.object.detected``."""

    category: ClassVar[Any] = "process"
    Config: ClassVar[type[ModuleConfig]] = Config
    Camera: ClassVar[type[CameraOptions] | None] = DetectorCamera

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self._model: Any = None
        self._model_key: tuple[Any, ...] | None = None
        self._model_name = ""
        self._cams: dict[str, DetectorCamera] = {}
        self._pending: dict[str, _Job] = {}
        self._order: deque[str] = deque()
        self._last_ts: dict[str, float] = {}  # frame time of each camera's last inference
        self._arrived: dict[str, float] = {}  # when each pending job arrived (monotonic)
        # per camera: empty inferences in a row, and the motion they were run for
        self._empty_streak: Counter[str] = Counter()
        self._empty_motion: dict[str, tuple[Box, ...]] = {}
        self._last_motion: dict[str, float] = {}
        self._wake: asyncio.Event | None = None
        # telemetry
        self.inferences = 0
        self.busy = False  # an inference is in flight
        self.published = 0
        self.errors = 0
        self.superseded = 0
        self.skipped_no_motion = 0
        self.skipped_no_image = 0
        self.max_queue_depth = 0
        self.regions_inferred = 0
        # per camera: what the main region found at the last inference (job pixels)
        self._explained: dict[str, tuple[Box, ...]] = {}
        # per camera: what the last inference kept, and cameras owed a quick second look
        self._found: dict[str, list[tuple[float, tuple[Box, ...]]]] = {}
        self._recheck: set[str] = set()
        self.rechecks = 0
        self.camera_inferences: Counter[str] = Counter()
        self.label_counts: Counter[str] = Counter()
        self._ms: deque[float] = deque(maxlen=500)
        self._crop_share: deque[float] = deque(maxlen=500)

    @property
    def _section(self) -> str:
        return type(self).name or "detector"

    # -- configuration -----------------------------------------------------------------------
    @classmethod
    def preflight(cls, app: AppConfig, camera_id: str | None) -> list[str]:
        section = cls.name or "detector"
        cfg = app.section(section, Config)
        problems = []
        for key, value in (("model", cfg.model), ("labels", cfg.labels)):
            if key == "labels" and value is None:
                continue
            path = resolve_model_path(value)
            if not path.is_file():
                shown = "the bundled model" if value is None else repr(value)
                where = "" if str(path) == value else f" ({str(path)!r})"
                problems.append(f"{section}.{key}: {shown} does not exist{where}")
        return problems

    async def check(self, app: AppConfig) -> None:
        problems = type(self).preflight(app, None)
        if problems:
            raise ModuleConfigError("; ".join(problems))

    async def configure(self, app: AppConfig) -> None:
        cfg = app.section(self._section, Config)
        cams = {cid: cam.options(self._section, DetectorCamera) for cid, cam in app.cameras.items()}
        key = (
            cfg.model,
            cfg.labels,
            cfg.format,
            cfg.backend,
            cfg.num_threads,
            cfg.input_size,
            cfg.resize,
            cfg.channel_order,
            cfg.input_mean,
            cfg.input_std,
            cfg.nms_iou,
            cfg.max_detections,
        )
        if key != self._model_key:
            cache = app.storage.root / ".cache" / "tensorrt"  # engines built on a Jetson
            model = await self.ctx.executor.run(load_model, cfg, cache)
            self._model, self._model_key = model, key
            self._model_name = resolve_model_path(cfg.model).name
            self.log.info(
                "detector_model_loaded",
                model=self._model_name,
                format=model.format,
                backend=model.backend.name,
                input=list(model.input_size),
                labels=len(model.labels),
            )
            unknown = sorted({lbl for c in cams.values() for lbl in c.labels} - set(model.labels))
            if unknown:
                self.log.info(
                    "detector_labels_not_in_model", labels=unknown, model=self._model_name
                )
        self.cfg = cfg
        self._cams = cams

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._model is None:
            raise ModuleConfigError("detector: start before configure")
        self._wake = asyncio.Event()
        if self.cfg.trigger == "motion":
            self.subscribe(
                topics.MOTION.name,
                self._on_motion,
                policy="latest",
                maxsize=max(16, 4 * len(self._cams)),
            )
        else:
            self.subscribe(
                topics.FRAME.pattern(),
                self._on_frame,
                policy="latest",
                maxsize=max(16, 4 * len(self._cams)),
            )
        self.spawn(self._worker(), "inference")
        self.set_state("ok", f"{self._model_name} on {self._model.backend.name}")

    # -- input -------------------------------------------------------------------------------
    def _camera(self, cid: str) -> DetectorCamera:
        cam = self._cams.get(cid)
        return cam if cam is not None else DetectorCamera()

    async def _on_motion(self, msg: Message[MotionEvent]) -> None:
        ev = msg.payload
        if not ev.boxes:
            self.skipped_no_motion += 1
            return
        if not self._camera(ev.camera_id).enabled:
            return
        last = self._last_motion.get(ev.camera_id)
        self._last_motion[ev.camera_id] = ev.mono_ts
        if last is None or not 0.0 <= ev.mono_ts - last < STILL_RESET_S:
            # the scene was still: whatever moves now is not the swaying that went idle before
            self._empty_streak[ev.camera_id] = 0
            self._empty_motion.pop(ev.camera_id, None)
        if not isinstance(ev.frame, Frame) or not ev.frame.has_image:
            self.skipped_no_image += 1  # e.g. a motion event that came over MQTT
            return
        self._enqueue(
            _Job(
                ev.camera_id,
                ev.frame,
                ev.seq,
                ev.mono_ts,
                ev.wall_ts,
                ev.frame_width,
                ev.frame_height,
                tuple(ev.boxes),
            )
        )

    async def _on_frame(self, msg: Message[Frame]) -> None:
        f = msg.payload
        if not self._camera(f.camera_id).enabled or not f.has_image:
            return
        self._enqueue(_Job(f.camera_id, f, f.seq, f.mono_ts, f.wall_ts, f.width, f.height, ()))

    def _enqueue(self, job: _Job) -> None:
        if job.camera_id in self._pending:
            self.superseded += 1  # latest wins: an older frame of this camera is dropped
        else:
            if job.camera_id not in self._order:
                self._order.append(job.camera_id)
        self._pending[job.camera_id] = job
        self._arrived[job.camera_id] = time.monotonic()
        self.max_queue_depth = max(self.max_queue_depth, len(self._pending))
        if self._wake is not None:
            self._wake.set()

    async def _next_job(self) -> _Job:
        """The next camera in turn whose newest frame is due.

        The rate cap runs on the frames' own clock (``mono_ts``): live that is the capture
        time, and a replay at any speed infers the same frames. A frame that is not due yet
        is inferred anyway when no newer one came for a whole interval (motion stopped).
        """
        assert self._wake is not None
        while True:
            now = time.monotonic()
            earliest: float | None = None
            for _ in range(len(self._order)):
                cid = self._order[0]
                self._order.rotate(-1)  # round robin: the camera served goes to the back
                job = self._pending.get(cid)
                if job is None:
                    continue
                interval = self._interval(job)
                last = self._last_ts.get(cid)
                elapsed = None if last is None else job.mono_ts - last
                # 2 ms of slack: 10 fps frames are 0.1 s apart give or take rounding
                due = elapsed is None or elapsed < 0 or elapsed >= interval - 0.002
                early = not due and cid in self._recheck and last is not None
                if due or early or now - self._arrived.get(cid, now) >= interval:
                    # something new was just found: look again at once, in place of the
                    # next regular inference (the cadence resumes after it), so a newcomer
                    # costs no extra CPU
                    stamp = job.mono_ts
                    if early and last is not None:
                        stamp = last + interval
                    self._last_ts[cid] = stamp
                    self._recheck.discard(cid)
                    return self._pending.pop(cid)
                wake_at = self._arrived.get(cid, now) + interval
                earliest = wake_at if earliest is None else min(earliest, wake_at)
            self._wake.clear()
            timeout = None if earliest is None else max(0.0, earliest - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def _interval(self, job: _Job) -> float:
        """Seconds between inferences of this job's camera: 1/max_fps, or 1/idle_fps while
        motion in the same places keeps finding nothing. Any motion box that reaches beyond
        the boxes the empty inferences looked at, by more than a tenth of their size (a person
        walking in beside the swaying hedge, or growing into view at the frame's edge), is
        new."""
        cam = self._camera(job.camera_id)
        fast = 1.0 / cam.max_fps
        if self.cfg.trigger != "motion" or self._empty_streak[job.camera_id] < self.cfg.idle_after:
            return fast
        empty = self._empty_motion.get(job.camera_id, ())
        new = [b for b in job.motion if not any(within(b, e, SAME_PLACE) for e in empty)]
        if not job.motion or new:
            return fast  # motion somewhere new: look at once
        return max(fast, 1.0 / self.cfg.idle_fps)

    def _note_result(self, job: _Job, found: bool) -> None:
        if found:
            self._empty_streak[job.camera_id] = 0
            self._empty_motion.pop(job.camera_id, None)
            return
        self._empty_streak[job.camera_id] += 1
        if job.motion:
            before = self._empty_motion.get(job.camera_id, ())
            self._empty_motion[job.camera_id] = (*before, *job.motion)[-32:]

    def _note_new(self, job: _Job, dets: list[Detection]) -> None:
        """An object none of the camera's inferences of the last second had is confirmed
        sooner when the next frame is inferred at once rather than after the fps interval:
        the tracker needs a second sighting before it alerts. That look takes the place of
        the next regular inference, so it costs nothing extra; someone the detector merely
        missed last time is not a newcomer."""
        recent = [
            (ts, boxes)
            for ts, boxes in self._found.get(job.camera_id, [])
            if 0.0 <= job.mono_ts - ts <= RECENT_S
        ]
        seen = [b for _, boxes in recent for b in boxes]
        if self.cfg.recheck_new and any(not any(near(b, d.box) for b in seen) for d in dets):
            self._recheck.add(job.camera_id)
            self.rechecks += 1
        recent.append((job.mono_ts, tuple(d.box for d in dets)))
        self._found[job.camera_id] = recent

    # -- inference ---------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            job = await self._next_job()
            model = self._model
            explained = self._explained.get(job.camera_id, ())
            turn = self.camera_inferences[job.camera_id]
            self.busy = True
            try:
                raw, main_found, total_ms, regions = await self.ctx.executor.run(
                    self._infer, model, job, explained, turn
                )
            except Exception as e:
                self.errors += 1
                self.set_state("degraded", "inference failed", repr(e))
                self.log.error("detector_inference_failed", camera=job.camera_id, error=repr(e))
                continue
            finally:
                self.busy = False
            if self._state == "degraded":
                self.set_state("ok", f"{self._model_name} on {model.backend.name}")
            self.inferences += 1
            self.camera_inferences[job.camera_id] += 1
            self._explained[job.camera_id] = main_found
            self._ms.append(total_ms)
            self.regions_inferred += len(regions)
            area = sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in regions)
            self._crop_share.append(area / max(1, job.width * job.height))
            dets = self._keep(job, raw)
            self._note_new(job, dets)
            self._note_result(job, bool(dets))
            if not dets:
                continue
            for d in dets:
                self.label_counts[d.label] += 1
            await self.bus.publish(
                topics.OBJECTS.name,
                DetectionEvent(
                    camera_id=job.camera_id,
                    seq=job.seq,
                    mono_ts=job.mono_ts,
                    wall_ts=job.wall_ts,
                    frame_width=job.width,
                    frame_height=job.height,
                    detections=tuple(dets),
                    backend=model.backend.name,
                    model=self._model_name,
                    inference_ms=round(total_ms, 3),
                    motion_boxes=job.motion,
                    frame=job.frame,
                ),
            )
            self.published += 1

    def _infer(
        self, model: Any, job: _Job, explained: tuple[Box, ...], turn: int
    ) -> tuple[list[Any], tuple[Box, ...], float, list[tuple[int, int, int, int]]]:
        """Blocking: decode the colour image, plan the regions, infer each, merge.

        Returns the detections in frame pixels, the boxes the main region found (in job
        pixels), the milliseconds spent and the regions. Runs in the executor.
        """
        image = job.frame.image
        h, w = image.shape[:2]
        sx, sy = w / job.width, h / job.height

        def scaled(boxes: tuple[Box, ...], fx: float, fy: float) -> tuple[Box, ...]:
            if fx == 1.0 and fy == 1.0:
                return boxes
            return tuple(
                Box(x1=int(b.x1 * fx), y1=int(b.y1 * fy), x2=int(b.x2 * fx), y2=int(b.y2 * fy))
                for b in boxes
            )

        if self.cfg.crop and job.motion:
            regions = plan_regions(
                scaled(job.motion, sx, sy),
                w,
                h,
                model.input_size,
                margin=self.cfg.crop_margin,
                full_share=self.cfg.full_frame_share,
                max_regions=self.cfg.max_regions,
                max_scale=self.cfg.region_max_scale,
                zoom=self.cfg.max_zoom,
                explained=scaled(explained, sx, sy),
                turn=turn,
            )
        else:
            regions = [(0, 0, w, h)]
        floor = self._lowest_score()
        results = [model.run(image, r, min_score=floor) for r in regions]
        total_ms = sum(r.total_ms for r in results)
        main = scaled(tuple(box_of(d) for d in results[0].detections), 1 / sx, 1 / sy)
        if len(results) == 1:
            return list(results[0].detections), main, total_ms, regions
        merged = merge_detections([d for r in results for d in r.detections], self.cfg.nms_iou)
        return merged, main, total_ms, regions

    def _lowest_score(self) -> float:
        scores = [self.cfg.min_score, *self.cfg.label_scores.values()]
        return min(scores)

    def _keep(self, job: _Job, raw: Sequence[Any]) -> list[Detection]:
        cam = self._camera(job.camera_id)
        allowed = set(cam.labels)
        floor = cam.min_score or 0.0
        out = []
        for d in raw:
            if d.label not in allowed:
                continue
            if d.score < max(floor, self.cfg.label_scores.get(d.label, self.cfg.min_score)):
                continue
            out.append(Detection(label=d.label, score=round(d.score, 4), box=box_of(d)))
        return out

    # -- telemetry ---------------------------------------------------------------------------
    def pending(self) -> int:
        return self.queue_depth + int(self.busy)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def metrics(self) -> dict[str, float | int | str]:
        ms = list(self._ms)
        out: dict[str, float | int | str] = {
            "inferences": self.inferences,
            "published": self.published,
            "errors": self.errors,
            "superseded": self.superseded,
            "skipped_no_motion": self.skipped_no_motion,
            "skipped_no_image": self.skipped_no_image,
            "idle_cameras": sum(n >= self.cfg.idle_after for n in self._empty_streak.values()),
            "queue_depth": self.queue_depth,
            "max_queue_depth": self.max_queue_depth,
            "rechecks": self.rechecks,
            "regions_per_inference": round(self.regions_inferred / self.inferences, 3)
            if self.inferences
            else 0.0,
            "inference_ms_p50": round(statistics.median(ms), 3) if ms else 0.0,
            "inference_ms_avg": round(statistics.fmean(ms), 3) if ms else 0.0,
            "crop_share_avg": round(statistics.fmean(self._crop_share), 3)
            if self._crop_share
            else 0.0,
            "model": self._model_name,
            "backend": self._model.backend.name if self._model is not None else "",
        }
        for label, n in sorted(self.label_counts.items()):
            out[f"detections_{label.replace(' ', '_')}"] = n
        return out
