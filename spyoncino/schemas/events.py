"""Events: what the owner hears about. An event is an *activity*: per camera, one span from the
first confirmed object to a gap (``tracker.activity_gap_s``) after the last, gathering every
object seen meanwhile. Two people walking by together are one event."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spyoncino.schemas.base import Payload
from spyoncino.schemas.detections import FrameRef
from spyoncino.schemas.frames import Box

EventPhase = Literal["started", "updated", "ended"]
Severity = Literal["alert", "detection"]


class TrackedObject(Payload):
    track_id: int
    label: str
    score: float = Field(ge=0.0, le=1.0, description="its best score in the activity")
    box: Box
    present: bool = Field(default=True, description="still in view (its track is alive)")
    zones: tuple[str, ...] = ()


class EventNotice(Payload):
    """Published on ``event.<kind>.<phase>`` (kind ``object`` or ``motion``).

    ``objects``: every object of the activity so far (one per track); ``frame_objects``: those
    on the best frame (``frame``), boxed on the snapshot. ``severity`` only ever rises, from
    ``detection`` (stored, shown, not pushed) to ``alert``.
    """

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
    severity: Severity = "alert"
    frame_objects: tuple[TrackedObject, ...] = ()
    boxes: tuple[Box, ...] = ()
    frame_seq: int = 0
    frame_width: int = 0
    frame_height: int = 0
    frame: FrameRef = Field(default=None, exclude=True, repr=False)
    #: on ``ended``: ``(track_id, Frame, Box)`` of each object's best sighting, for its crop
    crops: FrameRef = Field(default=None, exclude=True, repr=False)
