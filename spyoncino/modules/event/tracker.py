"""Turns per-frame detections (or bare motion) into activities: the unit the owner meets.

Per camera, detections are associated across frames into tracks (greedy IoU matching, then
a centroid-distance fallback for small or fast objects; same label only). A track is
*confirmed* once it is seen in >= ``confirm_hits`` of its last ``confirm_window`` frames, is
inside the camera's zones and is not a parked object.

* **Activities**: the first confirmed object of a camera opens an activity (``event.<kind>.
  started``); every object confirmed while it is open joins it (any label, any track, whether
  or not it is someone seen before), and it closes ``activity_gap_s`` after the last sighting
  of any of its objects (``ended``). Tracks end on their own (``end_after_s`` unseen); the
  activity outlives them. ``objects`` lists every object of the activity (one per track, with
  its best score), ``frame_objects`` those on the best frame.
* **Severity**: ``alert`` once an object of an ``alert_labels`` label (default: person, and
  bare motion) is in the activity, or one of a zone's own ``alert_labels`` inside that zone
  (a car on the driveway); else ``detection``: stored and shown, not pushed. It only rises,
  and an ``updated`` notice says so at once (with the frame that made it an alert).
* **Stationary objects** (a parked car) do not count: a track that has not moved since it
  was first seen, and was already there when the camera started, sits where a parked object
  was remembered, or was first seen with no motion box touching it (``still_bystanders``: a
  parked car that a crop around someone walking past took in), joins nothing until it moves;
  a box that shifts with no motion on it (detector jitter on a small, cut-off car) has not
  moved. Such a still object that drops out of view (the motion-gated detector looks
  elsewhere) is remembered as parked, so seeing it again later stays quiet. An object that
  stands still for ``stationary_after_s`` leaves its activity and is remembered as parked.
* **Cooldown** (per camera and label): an object confirmed within ``cooldown_s`` after an
  activity closed, near where an object of its label in it was last seen, reopens that
  activity instead of raising a new one.
* **Zones** (``cameras.<id>.tracker.zones``): named polygons in normalised coordinates. An
  object is in a zone when its bottom-centre point is. Exclude zones silence their labels;
  when a camera has include zones for a label, only objects inside one of them count.
  Activities carry the include zones entered. Zones are re-read on every ``configure``.
* **Best snapshot**: a frame is scored by the sum over the activity's objects on it of
  ``score x sqrt(box area share)``, halved for a box touching the frame edge (a cut-off
  person); notices carry the best frame so far in ``frame``/``frame_seq``/``frame_objects``,
  so the snapshot writer can replace its picture when a better one comes.

Time is the frames' own ``mono_ts`` (so a replay behaves like the live camera), advanced by
the module's clock (``ctx.clock``) between messages so that activities still end when a camera
goes quiet.

The rules live in ``_tracker_core.TrackerCore``, which does no I/O: this module hands it each
observation and the clock's time, and publishes the notices it returns (sans-IO).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, CameraOptions, ModuleConfig, ModuleContext
from spyoncino.modules.event._tracker_core import (
    MAX_CROPS,
    Intent,
    Notice,
    TrackerCore,
    crop_of,
)
from spyoncino.modules.event._tracking import (
    CameraState,
    Zone,
    point_in_polygon,
    snapshot_quality,
    zone_check,
)
from spyoncino.schemas import topics
from spyoncino.schemas.detections import DetectionEvent, MotionEvent
from spyoncino.schemas.frames import Box, Frame


class Config(ModuleConfig):
    type: Literal["tracker"] = "tracker"
    source: Literal["auto", "motion", "objects"] = Field(
        default="auto",
        description="What raises events: objects when a detector runs (auto), or bare motion.",
    )
    labels: tuple[str, ...] = Field(
        default=(), description="Labels that raise events; empty: every label the detector keeps."
    )
    confirm_hits: int = Field(default=2, ge=1, le=30, description="N of N-of-M confirmation.")
    confirm_window: int = Field(default=3, ge=1, le=60, description="M of N-of-M confirmation.")
    end_after_s: float = Field(
        default=5.0,
        ge=0.2,
        le=600.0,
        description="Seconds an object must be gone to end its track.",
    )
    activity_gap_s: float = Field(
        default=10.0,
        ge=0.2,
        le=3600.0,
        description="An activity closes this long after the last sighting of its objects.",
    )
    activity_max_s: float = Field(
        default=120.0,
        ge=5.0,
        le=86400.0,
        description="A longer activity is closed and the objects still in view open the next "
        "one at once (keep it at or below clip.max_duration_s, so every moment is in a clip).",
    )
    alert_labels: tuple[str, ...] = Field(
        default=("person", "motion"),
        description="Labels that make an activity an alert anywhere; other labels alert only "
        "inside a zone whose alert_labels name them, else the activity is a detection.",
    )
    cooldown_s: float = Field(
        default=10.0,
        ge=0.0,
        le=3600.0,
        description="Per camera and label: an object back this soon after its activity closed, "
        "near where it was, reopens that activity.",
    )
    cooldown_by_label: dict[str, float] = Field(
        default_factory=dict, description="Per-label cooldown overrides in seconds (0..3600)."
    )
    lost_after_s: float = Field(
        default=1.0,
        ge=0.0,
        le=60.0,
        description=(
            "Kept so configurations written before activities still load; it no longer "
            "changes anything (an open activity takes in every newcomer)."
        ),
    )
    reentry_distance: float = Field(
        default=0.15,
        ge=0.0,
        le=1.5,
        description="How near (share of the frame diagonal) a returning object must reappear.",
    )
    update_every_s: float = Field(
        default=2.0, ge=0.1, le=600.0, description="Minimum seconds between event.*.updated."
    )
    match_iou: float = Field(
        default=0.2, ge=0.01, le=0.95, description="Minimum box overlap to continue a track."
    )
    max_jump: float = Field(
        default=0.12,
        ge=0.0,
        le=1.0,
        description="Centroid fallback: largest gap to a track's predicted place, share of the "
        "frame diagonal (also bounded by the object's own size).",
    )
    stationary_iou: float = Field(
        default=0.6,
        ge=0.1,
        le=0.99,
        description="Overlap with its first box that means 'not moved'.",
    )
    stationary_after_s: float = Field(
        default=60.0,
        ge=1.0,
        le=86400.0,
        description="An object still this long ends its event and is remembered as parked.",
    )
    warmup_s: float = Field(
        default=3.0,
        ge=0.0,
        le=600.0,
        description="Still objects seen this soon after a camera starts count as already there.",
    )

    still_bystanders: bool = Field(
        default=True,
        description=(
            "An object no motion box of its inference touches is still: seen first so (a "
            "parked car in the crop around someone walking past) it counts as already there, "
            "and its box shifting so (detector jitter) is not a move."
        ),
    )

    @field_validator("cooldown_by_label")
    @classmethod
    def _cooldowns(cls, value: dict[str, float]) -> dict[str, float]:
        for label, seconds in value.items():
            if not 0.0 <= seconds <= 3600.0:
                raise ValueError(f"cooldown for {label!r} must be within 0..3600 s, got {seconds}")
        return value


class Camera(CameraOptions):
    """``cameras.<id>.tracker``: zones and per-camera overrides."""

    zones: tuple[Zone, ...] = Field(default=(), description="Named include/exclude polygons.")
    labels: tuple[str, ...] | None = Field(
        default=None, description="Labels that raise events here; None: the module's list."
    )
    cooldown_s: float | None = Field(
        default=None, ge=0.0, le=3600.0, description="Cooldown here; None: the module's."
    )
    alert_labels: tuple[str, ...] | None = Field(
        default=None, description="Labels that alert anywhere here; None: the module's list."
    )

    @field_validator("zones")
    @classmethod
    def _unique(cls, value: tuple[Zone, ...]) -> tuple[Zone, ...]:
        names = [z.name for z in value]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"zone names must be unique, repeated: {sorted(dup)}")
        return value


class EventTracker(BaseModule[Config]):
    category: ClassVar[Any] = "event"
    Config: ClassVar[type[ModuleConfig]] = Config
    Camera: ClassVar[type[CameraOptions] | None] = Camera
    #: subscriptions are camera-agnostic and configure rebuilds ``cams``: a camera added live
    #: needs no restart, which would drop the open events of the others
    follows_cameras: ClassVar[bool] = True
    #: stops before the GIF and clip makers, so the events it closes at stop reach them
    stop_rank: ClassVar[int] = 1

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.detector_enabled = False
        self.cams: dict[str, Camera] = {}
        #: the rules, with no I/O: this module feeds it and carries out what it returns
        self.core = TrackerCore(self.cfg)
        self._clock = ctx.clock
        #: set when a frame leaves the core something to end (a track, an activity, a
        #: cooldown): the expire loop rests while there is nothing
        self._stirred = asyncio.Event()

    @property
    def _cstate(self) -> dict[str, CameraState]:
        return self.core.cameras

    @property
    def events_started(self) -> int:
        return self.core.events_started

    async def configure(self, app: AppConfig) -> None:
        self.cfg = self.config_of(app)
        det = getattr(app, "detector", None)
        self.detector_enabled = bool(getattr(det, "enabled", False))
        self.cams = {
            cid: cam.options(self.name or "tracker", Camera) for cid, cam in app.cameras.items()
        }
        self.core.configure(self.cfg, self.cams)

    @property
    def mode(self) -> str:
        if self.cfg.source == "auto":
            return "objects" if self.detector_enabled else "motion"
        return self.cfg.source

    async def start(self) -> None:
        self.subscribe(topics.MOTION.name, self._on_motion, policy="block")
        self.subscribe(topics.OBJECTS.name, self._on_objects, policy="block")
        self.spawn(self._expire_loop(), "expire")
        self.set_state("ok", f"events from {self.mode}")

    # -- input ---------------------------------------------------------------------------------
    async def _on_motion(self, msg: Message[MotionEvent]) -> None:
        m = msg.payload
        if self.mode != "motion":
            # motion comes with every frame: it keeps the camera's clock going while the
            # detector (which only reports finds) is quiet, so events end on time in replays
            await self._carry_out(
                self.core.tick(m.camera_id, m.mono_ts, now=self._clock.monotonic())
            )
            return
        dets: list[tuple[str, float, Box]] = []
        if m.boxes:
            union = Box(
                x1=min(b.x1 for b in m.boxes),
                y1=min(b.y1 for b in m.boxes),
                x2=max(b.x2 for b in m.boxes),
                y2=max(b.y2 for b in m.boxes),
            )
            dets.append(("motion", min(1.0, max(0.01, m.changed_fraction * 10.0)), union))
        await self.observe(
            m.camera_id, m.mono_ts, m.wall_ts, m.frame_width, m.frame_height, m.seq, dets, m.frame
        )

    async def _on_objects(self, msg: Message[DetectionEvent]) -> None:
        if self.mode != "objects":
            return
        d = msg.payload
        dets = [(x.label, x.score, x.box) for x in d.detections]
        await self.observe(
            d.camera_id,
            d.mono_ts,
            d.wall_ts,
            d.frame_width,
            d.frame_height,
            d.seq,
            dets,
            d.frame,
            motion=d.motion_boxes,
        )

    async def observe(
        self,
        camera_id: str,
        mono: float,
        wall: float,
        width: int,
        height: int,
        seq: int,
        detections: list[tuple[str, float, Box]],
        frame: Frame | None,
        motion: tuple[Box, ...] = (),
    ) -> None:
        """One frame's detections through the core; its notices published in order."""
        intents = self.core.observe(
            camera_id,
            mono,
            wall,
            width,
            height,
            seq,
            detections,
            frame,
            motion,
            now=self._clock.monotonic(),
        )
        if not self._stirred.is_set() and not self.core.quiet:
            self._stirred.set()
        await self._carry_out(intents)

    async def _carry_out(self, intents: list[Intent]) -> None:
        for it in intents:
            if isinstance(it, Notice):
                topic = topics.EVENT.at(kind=it.payload.kind, phase=it.phase)
                await self.bus.publish(topic, it.payload)
            else:
                self.log.info(
                    "object_parked", camera=it.camera_id, label=it.label, event_id=it.event_id
                )

    # -- ending ------------------------------------------------------------------------------
    async def _expire_loop(self) -> None:
        while True:
            if self.core.quiet:
                # nothing to end: rest until a frame brings something, instead of waking
                # 4 times a second on an idle box (bench/bench_idle.py)
                self._stirred.clear()
                await self._stirred.wait()
            await self._clock.sleep(0.25)
            await self.expire()

    async def expire(self) -> None:
        """End tracks whose objects are gone and activities quiet for the gap."""
        await self._carry_out(self.core.expire(self._clock.monotonic()))

    async def stop(self) -> None:
        await super().stop()
        await self._carry_out(self.core.close_all(self._clock.monotonic()))

    def metrics(self) -> dict[str, float | int | str]:
        return {
            "events_started": self.core.events_started,
            "events_continued": self.core.events_continued,
            "tracks_created": self.core.tracks_created,
            "open_events": self.core.open_activities,
            "mode": self.mode,
        }


__all__ = [
    "MAX_CROPS",
    "Camera",
    "Config",
    "EventTracker",
    "TrackerCore",
    "Zone",
    "crop_of",
    "point_in_polygon",
    "snapshot_quality",
    "zone_check",
]
