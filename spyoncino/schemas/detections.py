"""What the processing stage found: motion and objects."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from spyoncino.schemas.base import Payload
from spyoncino.schemas.frames import Box

# A reference to the in-process Frame the result was computed on, for modules that need its
# pixels (detector, snapshot). Never serialised, absent from the JSON Schema, None over MQTT.
FrameRef = SkipJsonSchema[Any]


class MotionEvent(Payload):
    """Motion in one frame: boxes in full-frame pixels and the share of the frame changed."""

    camera_id: str
    seq: int = Field(ge=0)
    mono_ts: float
    wall_ts: float
    frame_width: int = Field(gt=0)
    frame_height: int = Field(gt=0)
    boxes: tuple[Box, ...]
    changed_fraction: float = Field(ge=0.0, le=1.0)
    frame: FrameRef = Field(default=None, exclude=True, repr=False)


class Detection(Payload):
    label: str
    score: float = Field(ge=0.0, le=1.0)
    box: Box


class DetectionEvent(Payload):
    """Objects an object detector found in one frame (only alerting labels are kept)."""

    camera_id: str
    seq: int = Field(ge=0)
    mono_ts: float
    wall_ts: float
    frame_width: int = Field(gt=0)
    frame_height: int = Field(gt=0)
    detections: tuple[Detection, ...]
    backend: str
    model: str
    inference_ms: float = Field(ge=0.0)
    motion_boxes: tuple[Box, ...] = ()
    frame: FrameRef = Field(default=None, exclude=True, repr=False)
