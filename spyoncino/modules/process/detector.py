"""Object detection on quantized models, gated by motion.

Only frames with motion are inferred, and only the region around the motion: the motion boxes
are merged, expanded, grown to at least the model's input size, clamped to the frame, resized
once to the model input, and the detections mapped back to full-frame pixels. All cameras
share one interpreter through one queue that keeps only the newest frame per camera and
serves cameras in turn, each no faster than its ``max_fps``.

Runtimes (LiteRT, tflite_runtime, Coral EdgeTPU, ONNX Runtime) sit in ``_backends.py`` and
output formats (YOLOv8/YOLO11, YOLOv5, SSD, SSD with post-processing, NanoDet) in
``_decoders.py``. The bundled default is a person-only int8 SSDLite MobileNetV2.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, CameraOptions, ModuleConfig, ModuleConfigError
from spyoncino.schemas import topics
from spyoncino.schemas.detections import Detection, DetectionEvent, MotionEvent
from spyoncino.schemas.frames import Box, Frame

BUILTIN_PREFIX = "spyoncino:"
BUNDLED_MODEL = "person_ssdlite_mobilenet_v2_int8.tflite"
COCO_LABELS = "coco80_labels.txt"


class Config(ModuleConfig):
    type: Literal["detector"] = "detector"
    model: str | None = Field(
        default=None,
        description=(
            "Model file (.tflite or .onnx); 'spyoncino:models/<file>' for a packaged one. "
            "None: the bundled person-only int8 SSDLite."
        ),
    )
    labels: str | None = Field(
        default=None,
        description=(
            "Label file, one class a line in model order (a leading '???' background line is "
            "allowed). None: '<model stem>.txt' beside the model, or COCO-80 for 80 classes."
        ),
    )
    format: Literal["auto", "yolov8", "yolov5", "ssd", "ssd_postprocess", "nanodet"] = Field(
        default="auto",
        description="Output layout; auto tells it from the output tensor shapes.",
    )
    backend: Literal["auto", "litert", "tflite", "edgetpu", "onnx"] = Field(
        default="auto",
        description=(
            "Runtime. auto: ONNX Runtime for .onnx, LiteRT (else tflite_runtime) for .tflite; "
            "edgetpu: a Coral with an *_edgetpu.tflite model."
        ),
    )
    num_threads: int = Field(default=2, ge=1, le=16, description="CPU threads for inference.")
    input_size: tuple[int, int] | None = Field(
        default=None,
        description=(
            "[height, width], 16..4096, for models with a dynamic input size (ONNX); else unused."
        ),
    )
    resize: Literal["auto", "letterbox", "stretch"] = Field(
        default="auto",
        description="auto: letterbox for YOLO, stretch for SSD and NanoDet (as they were trained).",
    )
    channel_order: Literal["auto", "rgb", "bgr"] = Field(
        default="auto", description="Colour order the model wants; auto: per format."
    )
    input_mean: tuple[float, float, float] | None = Field(
        default=None, description="Per-channel mean subtracted from pixels; None: per format."
    )
    input_std: tuple[float, float, float] | None = Field(
        default=None, description="Per-channel divisor after the mean; None: per format."
    )
    min_score: float = Field(
        default=0.5, ge=0.01, le=1.0, description="Lowest score kept for any label."
    )
    label_scores: dict[str, float] = Field(
        default_factory=dict,
        description="Per-label minimum score overriding min_score, e.g. {car: 0.6}.",
    )
    nms_iou: float = Field(
        default=0.45, gt=0.0, le=1.0, description="Overlap above which same-class boxes merge."
    )
    max_detections: int = Field(
        default=50, ge=1, le=1000, description="Most detections reported per frame."
    )
    trigger: Literal["motion", "always"] = Field(
        default="motion",
        description=(
            "motion: infer only frames with motion; always: every frame (capped by max_fps)."
        ),
    )
    crop: bool = Field(
        default=True, description="Infer only the region around the motion, not the whole frame."
    )
    crop_margin: float = Field(
        default=0.25,
        ge=0.0,
        le=2.0,
        description="Margin added around the merged motion boxes, as a share of their size.",
    )
    idle_fps: float = Field(
        default=1.0,
        gt=0.0,
        le=60.0,
        description=(
            "Inference rate of a camera whose motion keeps finding nothing in the same place "
            "(swaying trees, shadows, a background still re-learning); max_fps again as soon "
            "as something is found or motion appears elsewhere."
        ),
    )
    idle_after: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Empty inferences in a row before a camera drops to idle_fps.",
    )
    full_frame_share: float = Field(
        default=0.6,
        gt=0.0,
        le=1.0,
        description="A crop covering more than this share of the frame becomes the full frame.",
    )

    @field_validator("input_size")
    @classmethod
    def _size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(16 <= v <= 4096 for v in value):
            raise ValueError(f"input_size {list(value)} must be [height, width] in 16..4096")
        return value

    @field_validator("label_scores")
    @classmethod
    def _scores(cls, value: dict[str, float]) -> dict[str, float]:
        for label, score in value.items():
            if not 0.0 < score <= 1.0:
                raise ValueError(f"label_scores.{label}: {score} is not in (0, 1]")
        return {k.strip().lower(): v for k, v in value.items()}


class DetectorCamera(CameraOptions):
    enabled: bool = Field(default=True, description="Run object detection on this camera.")
    labels: tuple[str, ...] = Field(
        default=("person", "car", "dog", "cat"),
        description="Labels reported for this camera; others are dropped.",
    )
    max_fps: float = Field(
        default=5.0, gt=0.0, le=60.0, description="Most inferences per second for this camera."
    )
    min_score: float | None = Field(
        default=None, ge=0.01, le=1.0, description="Raise the minimum score for this camera."
    )

    @field_validator("labels")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.strip().lower() for v in value)


# -- model loading (also used by `spyoncino models`) -------------------------------------------
def _data_path(name: str) -> Path:
    return Path(str(resources.files("spyoncino") / "data" / name))


def bundled_model_path() -> Path:
    return _data_path(f"models/{BUNDLED_MODEL}")


def resolve_model_path(value: str | None) -> Path:
    if value is None:
        return bundled_model_path()
    if value.startswith(BUILTIN_PREFIX):
        return _data_path(value[len(BUILTIN_PREFIX) :])
    return Path(value).expanduser()


def _labels_for(
    cfg: Config, model_path: Path, classes: int | None
) -> tuple[list[str], Path | None]:
    from spyoncino.modules.process._decoders import read_labels

    if cfg.labels is not None:
        path = resolve_model_path(cfg.labels)
        try:
            return read_labels(path), path
        except (OSError, UnicodeDecodeError) as e:
            raise ModuleConfigError(f"detector.labels: cannot read {str(path)!r}: {e}") from e
    for candidate in (
        model_path.with_suffix(".txt"),
        model_path.with_name(model_path.stem + "_labels.txt"),
    ):
        if candidate.is_file():
            return read_labels(candidate), candidate
    if classes in (80, 81):
        coco = _data_path(f"models/{COCO_LABELS}")
        return read_labels(coco), coco
    raise ModuleConfigError(
        f"detector.labels: model {str(model_path)!r} has {classes or 'an unknown number of'} "
        f"classes and no label file was found beside it ({model_path.stem}.txt): set "
        "detector.labels"
    )


def load_model(cfg: Config, cache_dir: Path | None = None) -> Any:
    """Load and check the configured model; every failure is a ModuleConfigError naming the key.

    Blocking (reads the file, builds the interpreter): call it from the executor.
    """
    from spyoncino.modules.process._backends import BackendError, open_backend
    from spyoncino.modules.process._decoders import DecoderError, Model, detect_format

    path = resolve_model_path(cfg.model)
    key = "detector.model"
    if not path.is_file():
        raise ModuleConfigError(f"{key}: model file {str(path)!r} does not exist")
    size = cfg.input_size or (300, 300)
    try:
        backend = open_backend(
            path,
            backend=cfg.backend,
            num_threads=cfg.num_threads,
            input_size=size,
            cache_dir=cache_dir,
        )
    except BackendError as e:
        raise ModuleConfigError(f"{key}: cannot load {str(path)!r}: {e}") from e
    try:
        fmt = detect_format(backend.outputs) if cfg.format == "auto" else cfg.format
        from spyoncino.modules.process._decoders import DECODERS, Preprocessor

        pre = Preprocessor(
            backend.inputs[0], rgb=True, mean=(0, 0, 0), std=(1, 1, 1), resize="stretch"
        )
        classes = DECODERS[fmt](backend.outputs, pre.size).classes
    except DecoderError as e:
        which = "detector.format" if cfg.format != "auto" else key
        raise ModuleConfigError(f"{which}: model {str(path)!r}: {e}") from e
    labels, labels_path = _labels_for(cfg, path, classes)
    rgb = None if cfg.channel_order == "auto" else cfg.channel_order == "rgb"
    try:
        return Model(
            backend,
            labels,
            fmt=fmt,  # type: ignore[arg-type]
            resize=cfg.resize,
            rgb=rgb,
            mean=cfg.input_mean,
            std=cfg.input_std,
            nms_iou=cfg.nms_iou,
            max_detections=cfg.max_detections,
        )
    except DecoderError as e:
        where = "detector.labels" if "label" in str(e) else key
        raise ModuleConfigError(
            f"{where}: {labels_path or 'labels'} for model {str(path)!r}: {e}"
        ) from e


def describe_models(app: AppConfig) -> list[str]:
    """Lines for ``spyoncino models``: the bundled and the configured model, their tensors."""
    cfg = app.section("detector", Config) if hasattr(app, "detector") else Config()
    seen: list[tuple[str, Config]] = [("bundled", Config())]
    if cfg.model is not None and resolve_model_path(cfg.model) != bundled_model_path():
        seen.append(("configured (detector.model)", cfg))
    lines: list[str] = []
    for title, c in seen:
        path = resolve_model_path(c.model)
        size = path.stat().st_size / 1e6 if path.is_file() else 0.0
        lines.append(f"{title}: {path} ({size:.1f} MB)")
        try:
            model = load_model(c)
        except ModuleConfigError as e:
            lines.append(f"  error: {e}")
            continue
        h, w = model.input_size
        shown = [label for label in model.labels if label not in ("???", "background")]
        more = f", ... ({len(shown)} in all)" if len(shown) > 8 else ""
        lines.append(
            f"  format {model.format}, backend {model.backend.name}, input {w}x{h} "
            f"({model.resize}), labels: {', '.join(shown[:8])}{more}"
        )
        lines.extend(f"  input  {t.describe()}" for t in model.backend.inputs)
        lines.extend(f"  output {t.describe()}" for t in model.backend.outputs)
    if cfg.model is None:
        lines.append("configured (detector.model): the bundled model")
    return lines


# -- motion region -----------------------------------------------------------------------------
def motion_region(
    boxes: Sequence[Box],
    frame_w: int,
    frame_h: int,
    model_hw: tuple[int, int],
    *,
    margin: float = 0.25,
    full_share: float = 0.6,
) -> tuple[int, int, int, int]:
    """The frame region to infer: motion boxes merged, expanded, >= model size, in the frame.

    The region takes the model's aspect ratio so that stretching models are not distorted and
    letterboxing ones waste no input. A region covering most of the frame becomes the frame.
    """
    full = (0, 0, frame_w, frame_h)
    if not boxes:
        return full
    x1 = min(b.x1 for b in boxes)
    y1 = min(b.y1 for b in boxes)
    x2 = max(b.x2 for b in boxes)
    y2 = max(b.y2 for b in boxes)
    bw, bh = max(1, x2 - x1), max(1, y2 - y1)
    w = bw * (1 + 2 * margin)
    h = bh * (1 + 2 * margin)
    mh, mw = model_hw
    w, h = max(w, mw), max(h, mh)
    aspect = mw / mh
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    w, h = min(w, frame_w), min(h, frame_h)
    if w * h >= full_share * frame_w * frame_h:
        return full
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = round(min(max(cx - w / 2, 0), frame_w - w))
    top = round(min(max(cy - h / 2, 0), frame_h - h))
    return (left, top, min(frame_w, left + round(w)), min(frame_h, top + round(h)))


def _union(boxes: Sequence[Box]) -> Box:
    return Box(
        x1=min(b.x1 for b in boxes),
        y1=min(b.y1 for b in boxes),
        x2=max(b.x2 for b in boxes),
        y2=max(b.y2 for b in boxes),
    )


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


class ObjectDetector(BaseModule):
    """Confirms motion with an object detector; publishes ``process.object.detected``."""

    category: ClassVar[Any] = "process"
    Config: ClassVar[type[ModuleConfig]] = Config
    Camera: ClassVar[type[CameraOptions] | None] = DetectorCamera

    def __init__(self, ctx: Any) -> None:
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
        self._empty_motion: dict[str, Box] = {}
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
        self.camera_inferences: Counter[str] = Counter()
        self.label_counts: Counter[str] = Counter()
        self._ms: deque[float] = deque(maxlen=500)
        self._crop_share: deque[float] = deque(maxlen=500)

    @property
    def _section(self) -> str:
        return type(self).name or "detector"

    # -- configuration -----------------------------------------------------------------------
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
                if due or now - self._arrived.get(cid, now) >= interval:
                    self._last_ts[cid] = job.mono_ts
                    return self._pending.pop(cid)
                wake_at = self._arrived.get(cid, now) + interval
                earliest = wake_at if earliest is None else min(earliest, wake_at)
            self._wake.clear()
            timeout = None if earliest is None else max(0.0, earliest - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def _interval(self, job: _Job) -> float:
        """Seconds between inferences of this job's camera: 1/max_fps, or 1/idle_fps while
        motion in the same place keeps finding nothing."""
        cam = self._camera(job.camera_id)
        fast = 1.0 / cam.max_fps
        if self.cfg.trigger != "motion" or self._empty_streak[job.camera_id] < self.cfg.idle_after:
            return fast
        last = self._empty_motion.get(job.camera_id)
        if last is None or not job.motion or _union(job.motion).iou(last) < 0.3:
            return fast  # motion somewhere new: look at once
        return max(fast, 1.0 / self.cfg.idle_fps)

    def _note_result(self, job: _Job, found: bool) -> None:
        if found:
            self._empty_streak[job.camera_id] = 0
            self._empty_motion.pop(job.camera_id, None)
            return
        self._empty_streak[job.camera_id] += 1
        if job.motion:
            self._empty_motion[job.camera_id] = _union(job.motion)

    # -- inference ---------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            job = await self._next_job()
            model = self._model
            self.busy = True
            try:
                result, region = await self.ctx.executor.run(self._infer, model, job)
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
            self._ms.append(result.total_ms)
            x1, y1, x2, y2 = region
            self._crop_share.append((x2 - x1) * (y2 - y1) / max(1, job.width * job.height))
            dets = self._keep(job, result.detections)
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
                    inference_ms=round(result.total_ms, 3),
                    motion_boxes=job.motion,
                    frame=job.frame,
                ),
            )
            self.published += 1

    def _infer(self, model: Any, job: _Job) -> tuple[Any, tuple[int, int, int, int]]:
        """Blocking: decode the colour image, crop, infer. Runs in the executor."""
        image = job.frame.image
        h, w = image.shape[:2]
        if self.cfg.crop and job.motion:
            sx, sy = w / job.width, h / job.height
            boxes = job.motion
            if sx != 1.0 or sy != 1.0:
                boxes = tuple(
                    Box(x1=int(b.x1 * sx), y1=int(b.y1 * sy), x2=int(b.x2 * sx), y2=int(b.y2 * sy))
                    for b in boxes
                )
            region = motion_region(
                boxes,
                w,
                h,
                model.input_size,
                margin=self.cfg.crop_margin,
                full_share=self.cfg.full_frame_share,
            )
        else:
            region = (0, 0, w, h)
        return model.run(image, region, min_score=self._lowest_score()), region

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
            box = Box(
                x1=round(d.x1),
                y1=round(d.y1),
                x2=max(round(d.x2), round(d.x1) + 1),
                y2=max(round(d.y2), round(d.y1) + 1),
            )
            out.append(Detection(label=d.label, score=round(d.score, 4), box=box))
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
