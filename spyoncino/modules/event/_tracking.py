"""The tracker's working parts: zones, tracks, activities and frame-to-frame association.

Kept apart from ``_tracker_core.py`` (the rules: the event lifecycle) and ``tracker.py`` (the
module: its settings and the bus) so each stays readable; nothing here touches the bus or reads
a clock (``new_event_id`` formats the wall time it is given).
"""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spyoncino.schemas.events import EventNotice, TrackedObject
from spyoncino.schemas.frames import Box, Frame

Point = tuple[float, float]


class Zone(BaseModel):
    """A named polygon in normalised coordinates (0..1 of width and height)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=40, description="Shown in alerts and the index.")
    polygon: tuple[tuple[float, float], ...] = Field(
        min_length=3, description="[[x, y], ...] corners, each 0..1, at least three."
    )
    mode: Literal["include", "exclude"] = Field(
        default="include", description="include: alert only inside; exclude: never alert inside."
    )
    labels: tuple[str, ...] = Field(
        default=(), description="Labels this zone applies to; empty: every label."
    )
    alert_labels: tuple[str, ...] = Field(
        default=(),
        description="Labels that make an activity an alert when seen inside this zone, on top "
        "of the tracker's alert_labels (e.g. [car] on the driveway).",
    )

    @field_validator("polygon")
    @classmethod
    def _normalised(cls, value: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        for x, y in value:
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(f"zone corner ({x}, {y}) is outside 0..1")
        return value

    def applies_to(self, label: str) -> bool:
        return not self.labels or label in self.labels

    def contains(self, p: Point) -> bool:
        return point_in_polygon(p, self.polygon)


def point_in_polygon(p: Point, poly: tuple[tuple[float, float], ...]) -> bool:
    """Even-odd rule; points on an edge may fall either way."""
    x, y = p
    inside = False
    j = len(poly) - 1
    for i in range(len(poly)):
        xi, yi = poly[i]
        xj, yj = poly[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def zone_check(zones: tuple[Zone, ...], label: str, foot: Point) -> tuple[bool, tuple[str, ...]]:
    """Whether an object of ``label`` standing at ``foot`` may alert, and the zones it is in."""
    applicable = [z for z in zones if z.applies_to(label)]
    if any(z.mode == "exclude" and z.contains(foot) for z in applicable):
        return False, ()
    includes = [z for z in applicable if z.mode == "include"]
    inside = tuple(z.name for z in includes if z.contains(foot))
    if includes and not inside:
        return False, ()
    return True, inside


def snapshot_quality(score: float, box: Box, width: int, height: int) -> float:
    """Higher is a better picture: confident, large, and not cut by the frame edge."""
    area = box.area / max(1, width * height)
    q = score * math.sqrt(area)
    margin = 2
    if (
        box.x1 <= margin
        or box.y1 <= margin
        or box.x2 >= width - margin
        or box.y2 >= height - margin
    ):
        q *= 0.5
    return q


def new_event_id(wall_ts: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(wall_ts))
    return f"{stamp}-{secrets.token_hex(3)}"


def centre(b: Box) -> Point:
    return ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0)


@dataclass(eq=False)
class TrackedEvent:
    """One activity: every confirmed object of a camera from the first to a gap after the last."""

    notice: EventNotice
    last_seen_mono: float
    last_seen_wall: float
    last_update_mono: float
    best_q: float = -1.0
    best_frame: Frame | None = None
    best_objects: tuple[TrackedObject, ...] = ()
    best_seq: int = 0
    zones: set[str] = field(default_factory=set)
    ended_mono: float | None = None
    #: track id -> the object as last seen (best score kept), in order of joining
    members: dict[int, TrackedObject] = field(default_factory=dict)
    severity: Literal["alert", "detection"] = "detection"
    #: what a notice must tell now: "started" (not yet published), "updated" (a new object,
    #: more severe), or None (only the rate-limited updates)
    due: Literal["started", "updated"] | None = "started"
    #: the best frame was taken at the moment it became an alert: the snapshot shows why
    escalated_seq: int | None = None
    #: track id -> (quality, frame, box) of that object's best sighting (its crop)
    crops: dict[int, tuple[float, Frame, Box]] = field(default_factory=dict)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o.label for o in self.members.values()))

    def near(self, label: str, c: Point) -> float | None:
        """Distance from ``c`` to the nearest last box of a member of ``label`` (None: none)."""
        dists = [
            math.hypot(c[0] - centre(o.box)[0], c[1] - centre(o.box)[1])
            for o in self.members.values()
            if o.label == label
        ]
        return min(dists) if dists else None


@dataclass(eq=False)
class Track:
    id: int
    label: str
    box: Box
    score: float
    first_box: Box
    first_mono: float
    first_wall: float
    last_seen_mono: float
    hits: deque[bool]
    sightings: int = 1  # frames it was seen in, in all
    already_there: bool = False
    moved: bool = False
    parked: bool = False
    event: TrackedEvent | None = None
    #: where it last stopped and since when (a car that drove in and parked)
    still_box: Box | None = None
    still_mono: float = 0.0
    vx: float = 0.0  # pixels per second, smoothed
    vy: float = 0.0

    def predicted(self, t: float) -> Box:
        """Where the box should be at ``t`` if it kept its speed (for at most 1.5 s)."""
        dt = min(max(0.0, t - self.last_seen_mono), 1.5)
        dx, dy = round(self.vx * dt), round(self.vy * dt)
        b = self.box
        return Box.model_construct(x1=b.x1 + dx, y1=b.y1 + dy, x2=b.x2 + dx, y2=b.y2 + dy)

    def follow(self, box: Box, mono: float) -> None:
        dt = mono - self.last_seen_mono
        if dt > 0:
            (cx, cy), (nx, ny) = centre(self.box), centre(box)
            a = 0.5 if (self.vx or self.vy) else 1.0
            self.vx += a * ((nx - cx) / dt - self.vx)
            self.vy += a * ((ny - cy) / dt - self.vy)
        self.box, self.last_seen_mono = box, mono

    def exited(self, t: float, width: int, height: int) -> bool:
        """Whether it has walked out of the frame by ``t`` (most of it predicted outside)."""
        p = self.predicted(t)
        ix = max(0, min(p.x2, width) - max(p.x1, 0))
        iy = max(0, min(p.y2, height) - max(p.y1, 0))
        return ix * iy < 0.5 * max(1, (p.x2 - p.x1) * (p.y2 - p.y1))


@dataclass
class CameraState:
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1
    first_mono: float | None = None
    clock: float = 0.0
    clock_real: float = 0.0
    width: int = 0
    height: int = 0
    parked: list[tuple[str, Box]] = field(default_factory=list)
    ended: list[TrackedEvent] = field(default_factory=list)
    activity: TrackedEvent | None = None
    #: (mono, wall) when the last activity was closed for its length: the next one starts there
    split: tuple[float, float] | None = None

    def now(self, real: float) -> float:
        """The camera's frame clock at ``real`` (the module's clock): its last frame's time
        advanced by the time since that frame came."""
        return self.clock + (real - self.clock_real)


def associate(
    tracks: list[Track],
    dets: list[tuple[str, float, Box]],
    diag: float,
    mono: float,
    width: int,
    height: int,
    match_iou: float,
    max_jump: float,
) -> list[tuple[Track, tuple[str, float, Box]]]:
    """Greedy matching on the tracks' predicted boxes: IoU first, then centre distance.

    A track that has walked out of the frame takes no detection: whoever appears at that
    edge next is someone new.
    """
    pairs: list[tuple[float, int, int]] = []
    live = [
        (ti, t, t.predicted(mono))
        for ti, t in enumerate(tracks)
        if t.label == "motion" or not t.exited(mono, width, height)
    ]
    for ti, t, pred in live:
        for di, (label, _s, box) in enumerate(dets):
            if label != t.label:
                continue
            iou = box.iou(pred)
            if iou >= match_iou:
                pairs.append((-iou, ti, di))
    cap = max_jump * diag
    for ti, t, pred in live:
        c = centre(pred)
        dt = min(max(0.0, mono - t.last_seen_mono), 2.0)
        for di, (label, _s, box) in enumerate(dets):
            if label != t.label:
                continue
            # an object can be this far from where it should be: about its own size,
            # a little more the longer it was not seen
            size = max(t.box.height, t.box.width, box.height, box.width)
            gate = min(cap, size * (0.6 + 0.4 * dt)) if t.label != "motion" else cap
            dc = centre(box)
            dist = math.hypot(c[0] - dc[0], c[1] - dc[1])
            if dist <= gate:
                pairs.append((1.0 + dist / max(1.0, gate), ti, di))  # after every IoU pair
    pairs.sort()
    t_used: set[int] = set()
    d_used: set[int] = set()
    out: list[tuple[Track, tuple[str, float, Box]]] = []
    for _cost, ti, di in pairs:
        if ti in t_used or di in d_used:
            continue
        t_used.add(ti)
        d_used.add(di)
        out.append((tracks[ti], dets[di]))
    return out
