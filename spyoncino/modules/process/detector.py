"""Object detection on quantized models, gated by motion.

Only frames with motion are inferred, and only around the motion (``_regions.py``): one region
around all of it, grown to at least the model's input size and clamped to the frame, plus,
when that region had to be shrunk a lot, optional crops for the motion it did not explain.
Each region is resized once to the model input and the detections mapped back to full-frame
pixels. All cameras share one interpreter through one queue that keeps only the newest frame
per camera and serves cameras in turn, each no faster than its ``max_fps``; a newly found
object earns its camera an immediate second look. That scheduling is a sans-IO core
(``_detector_schedule.Schedule``: frames and the clock's time in, the job to run or the time to
look again out); this module feeds it, waits on ``ctx.clock`` and runs the inferences.

Settings are in ``_detector_config.py``, model loading in ``_models.py``, runtimes (LiteRT,
tflite_runtime, Coral EdgeTPU, ONNX Runtime) in ``_backends.py`` and output formats
(YOLOv8/YOLO11, YOLOv5, SSD, SSD with post-processing, NanoDet) in ``_decoders.py``. The
bundled default is a person-only int8 SSDLite MobileNetV2.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter, deque
from collections.abc import Sequence
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
from spyoncino.modules.process._detector_schedule import Job, Schedule
from spyoncino.modules.process._models import bundled_model_path as bundled_model_path
from spyoncino.modules.process._models import describe_models as describe_models
from spyoncino.modules.process._models import load_model as load_model
from spyoncino.modules.process._models import resolve_model_path as resolve_model_path
from spyoncino.modules.process._regions import box_of, merge_detections, plan_regions
from spyoncino.schemas import topics
from spyoncino.schemas.detections import Detection, DetectionEvent, MotionEvent
from spyoncino.schemas.frames import Box, Frame

# -- the module --------------------------------------------------------------------------------
_Job = Job  # the name it had before the schedule was its own core


class ObjectDetector(BaseModule[Config]):
    """Confirms motion with an object detector; publishes ``process.object.detected``."""

    category: ClassVar[Any] = "process"
    frame_stage: ClassVar[bool] = True
    Config: ClassVar[type[ModuleConfig]] = Config
    Camera: ClassVar[type[CameraOptions] | None] = DetectorCamera

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self._model: Any = None
        self._model_key: tuple[Any, ...] | None = None
        self._model_name = ""
        self._cams: dict[str, DetectorCamera] = {}
        #: which frame runs when, with no I/O: fed here, asked by the worker
        self.schedule = Schedule(self.cfg)
        self._clock = ctx.clock
        self._wake: asyncio.Event | None = None
        # the worker's wait: whether it waits, until when (None: for a frame), and an event
        # set each time it starts waiting (``settled`` waits on it)
        self._waiting = False
        self._wait_until: float | None = None
        self._entered = asyncio.Event()
        # telemetry
        self.inferences = 0
        self.busy = False  # an inference is in flight
        self.published = 0
        self.errors = 0
        self.skipped_no_image = 0
        self.regions_inferred = 0
        # per camera: what the main region found at the last inference (job pixels)
        self._explained: dict[str, tuple[Box, ...]] = {}
        self.camera_inferences: Counter[str] = Counter()
        self.label_counts: Counter[str] = Counter()
        self._ms: deque[float] = deque(maxlen=500)
        self._crop_share: deque[float] = deque(maxlen=500)

    @property
    def superseded(self) -> int:
        return self.schedule.superseded

    @property
    def skipped_no_motion(self) -> int:
        return self.schedule.skipped_no_motion

    @property
    def max_queue_depth(self) -> int:
        return self.schedule.max_queue_depth

    @property
    def rechecks(self) -> int:
        return self.schedule.rechecks

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
        self.schedule.configure(cfg, cams)

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
        return self.schedule.camera(cid)

    async def _on_motion(self, msg: Message[MotionEvent]) -> None:
        ev = msg.payload
        if not self.schedule.motion(ev.camera_id, ev.mono_ts, bool(ev.boxes)):
            return
        if not isinstance(ev.frame, Frame) or not ev.frame.has_image:
            self.skipped_no_image += 1  # e.g. a motion event that came over MQTT
            return
        self._enqueue(
            Job(
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
        self._enqueue(Job(f.camera_id, f, f.seq, f.mono_ts, f.wall_ts, f.width, f.height, ()))

    def _enqueue(self, job: Job) -> None:
        self.schedule.offer(job, self._clock.monotonic())
        if self._wake is not None:
            self._wake.set()

    async def settled(self) -> None:
        """Return once the worker waits with nothing due at the clock's time now: every frame
        offered so far is inferred (and published) or waits for a later time. A lockstep
        replay on a ``FakeClock`` waits on this between frames instead of sleeping."""
        while True:
            wake = self._wake is not None and self._wake.is_set()
            until = self._wait_until
            if (
                self._waiting
                and not wake
                and (until is None or until > self._clock.monotonic() + 1e-9)
            ):
                return
            self._entered.clear()
            await self._entered.wait()

    async def _next_job(self) -> Job:
        """The next job the schedule gives, waiting on the clock for one to fall due."""
        assert self._wake is not None
        while True:
            now = self._clock.monotonic()
            step = self.schedule.next(now)
            if isinstance(step, Job):
                return step
            self._wake.clear()
            self._waiting, self._wait_until = True, step
            self._entered.set()
            try:
                if step is None:
                    await self._wake.wait()
                else:
                    await self._clock.wait(self._wake, max(0.0, step - now))
            finally:
                self._waiting = False

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
            self.schedule.done(job, dets)
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
        self, model: Any, job: Job, explained: tuple[Box, ...], turn: int
    ) -> tuple[list[Any], tuple[Box, ...], float, list[tuple[int, int, int, int]]]:
        """Blocking: decode the colour image, plan the regions, infer each, merge.

        Returns the detections in frame pixels, the boxes the main region found (in job
        pixels), the milliseconds spent and the regions. Runs in the executor.
        """
        frame = job.frame
        # the frame itself, not frame.image: the model's crop is converted at the model's
        # size from the decoder's planes where the input offers it (Frame.resizer)
        h, w = frame.colour_size
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
                zoom=self.zoom,
                explained=scaled(explained, sx, sy),
                turn=turn,
            )
        else:
            regions = [(0, 0, w, h)]
        floor = self._lowest_score()
        results = [model.run(frame, r, min_score=floor) for r in regions]
        total_ms = sum(r.total_ms for r in results)
        main = scaled(tuple(box_of(d) for d in results[0].detections), 1 / sx, 1 / sy)
        if len(results) == 1:
            return list(results[0].detections), main, total_ms, regions
        merged = merge_detections([d for r in results for d in r.detections], self.cfg.nms_iou)
        return merged, main, total_ms, regions

    @property
    def zoom(self) -> float:
        """How much a crop around small motion may be enlarged (``max_zoom``, or the model's
        own default when it is unset)."""
        fmt = getattr(self._model, "format", "") if self._model is not None else ""
        return self.cfg.zoom_for(fmt)

    def _lowest_score(self) -> float:
        scores = [self.cfg.min_score, *self.cfg.label_scores.values()]
        return min(scores)

    def _keep(self, job: Job, raw: Sequence[Any]) -> list[Detection]:
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
        return self.schedule.depth

    def metrics(self) -> dict[str, float | int | str]:
        ms = list(self._ms)
        out: dict[str, float | int | str] = {
            "inferences": self.inferences,
            "published": self.published,
            "errors": self.errors,
            "superseded": self.superseded,
            "skipped_no_motion": self.skipped_no_motion,
            "skipped_no_image": self.skipped_no_image,
            "idle_cameras": self.schedule.idle_cameras,
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
