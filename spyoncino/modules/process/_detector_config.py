"""The detector's settings: the ``detector`` section and ``cameras.<id>.detector``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from spyoncino.core.contracts import CameraOptions, ModuleConfig

if TYPE_CHECKING:
    from spyoncino.platform.profiles import Profile

BUILTIN_PREFIX = "spyoncino:"
#: the default: NanoDet-m 416, 80 COCO classes, full int8 (hardware/models/quantize_nanodet.py)
BUNDLED_MODEL = "coco_nanodet_m_416_int8.tflite"
#: the lighter option, people only: ``model: spyoncino:models/<this file>``
PERSON_MODEL = "person_ssdlite_mobilenet_v2_int8.tflite"
COCO_LABELS = "coco80_labels.txt"
#: ``max_zoom: null`` with an SSD model: its crops around small motion are enlarged up to 2x
ZOOM_SSD = 2.0


class Config(ModuleConfig):
    type: Literal["detector"] = "detector"

    @classmethod
    def profile_defaults(cls, profile: Profile) -> dict[str, Any]:
        # the profile's 0 is one thread per CPU core (within the field's 1-16)
        threads = profile.detector.threads or os.cpu_count() or 1
        out: dict[str, Any] = {"num_threads": max(1, min(threads, 16))}
        # a lighter model on the small boards; the bundled default stays "unset" elsewhere
        if not profile.detector.model.endswith(BUNDLED_MODEL):
            out["model"] = profile.detector.model
        return out

    model: str | None = Field(
        default=None,
        description=(
            "Model file (.tflite or .onnx); 'spyoncino:models/<file>' for a packaged one. "
            "None: the bundled 80-class int8 NanoDet; "
            "'spyoncino:models/person_ssdlite_mobilenet_v2_int8.tflite': the lighter, "
            "people-only int8 SSDLite."
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
    num_threads: int = Field(
        default=2,
        ge=1,
        le=16,
        description="CPU threads for inference. The board's hardware profile sets it (a PC: one "
        "per CPU core); 2 where no profile applies.",
    )
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
    recheck_new: bool = Field(
        default=True,
        description=(
            "When an inference finds an object the last second's did not have, infer the next "
            "frame at once, in place of the next regular inference: the second sighting "
            "that confirms it, and so the alert, comes 0.1 s sooner at 10 fps."
        ),
    )
    max_regions: int = Field(
        default=1,
        ge=1,
        le=8,
        description=(
            "Most crops inferred per frame (one inference each) when motion is in several "
            "places; 1: one crop around all of it, shrunk as needed."
        ),
    )
    region_max_scale: float = Field(
        default=1.5,
        ge=1.0,
        le=10.0,
        description=(
            "Motion in several places shares one crop only while that crop needs at most this "
            "much shrinking to fit the model; farther apart, each place gets its own crop "
            "(up to max_regions), so small, distant people keep their pixels."
        ),
    )
    max_zoom: float | None = Field(
        default=None,
        ge=1.0,
        le=4.0,
        description=(
            "A crop around small motion may be enlarged up to this much to fit the model, so a "
            "far-away person gains pixels; 1: never enlarged. None: per model, 2 for SSD "
            "models (the people-only SSDLite finds far walkers only enlarged), 1 for the "
            "others (the bundled NanoDet scores people in enlarged crops lower: someone "
            "stepping into view was confirmed up to 1.5 s later)."
        ),
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
        default=0.85,
        gt=0.0,
        le=1.0,
        description=(
            "A crop covering more than this share of the frame becomes the full frame (a "
            "larger crop shrinks people less than the whole frame does)."
        ),
    )

    def zoom_for(self, fmt: str) -> float:
        """The crop enlargement used with a model of output format ``fmt``."""
        if self.max_zoom is not None:
            return self.max_zoom
        return ZOOM_SSD if fmt in ("ssd", "ssd_postprocess") else 1.0

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
        default=("person", "bicycle", "car", "motorcycle", "bus", "truck", "cat", "dog"),
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
