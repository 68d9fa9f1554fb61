"""Events: what the owner hears about. One person crossing the yard is one event."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spyoncino.schemas.base import Payload
from spyoncino.schemas.detections import FrameRef
from spyoncino.schemas.frames import Box

EventPhase = Literal["started", "updated", "ended"]


class TrackedObject(Payload):
    track_id: int
    label: str
    score: float = Field(ge=0.0, le=1.0)
    box: Box


class EventNotice(Payload):
    """Published on ``event.<kind>.<phase>`` (kind ``object`` or ``motion``)."""

    event_id: str
    camera_id: str
    kind: Literal["object", "motion"]
    phase: EventPhase
    labels: tuple[str, ...]
    top_score: float = Field(ge=0.0, le=1.0)
    started_at: float = Field(description="wall-clock seconds since the epoch")
    updated_at: float
    ended_at: float | None = None
    started_mono: float = 0.0
    zones: tuple[str, ...] = ()
    objects: tuple[TrackedObject, ...] = ()
    boxes: tuple[Box, ...] = ()
    frame_seq: int = 0
    frame_width: int = 0
    frame_height: int = 0
    frame: FrameRef = Field(default=None, exclude=True, repr=False)
