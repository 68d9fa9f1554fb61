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
the real clock between messages so that activities still end when a camera goes quiet.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, CameraOptions, ModuleConfig, ModuleContext
from spyoncino.modules.event._tracking import (
    CameraState,
    Track,
    TrackedEvent,
    Zone,
    associate,
    centre,
    new_event_id,
    point_in_polygon,
    snapshot_quality,
    zone_check,
)
from spyoncino.schemas import topics
from spyoncino.schemas.detections import DetectionEvent, MotionEvent
from spyoncino.schemas.events import EventNotice, TrackedObject
from spyoncino.schemas.frames import Box, Frame

#: objects of one activity whose best crops (each with its frame) are kept for the thumbnail
MAX_CROPS = 8


def crop_of(frame: Frame, box: Box) -> tuple[Frame, Box]:
    """What a crop needs of ``frame``: a small frame holding the box and the margin the
    thumbnail shows around it, and the box in it; the whole frame when it is not decoded yet
    (decoding is not for the event loop; the snapshot writer decodes it in a worker)."""
    image = frame._image
    if image is None:
        return frame, box
    ih, iw = image.shape[:2]
    mx, my = round(box.width * 0.15) + 1, round(box.height * 0.1) + 1
    x1, y1 = max(0, box.x1 - mx), max(0, box.y1 - my)
    x2, y2 = min(iw, box.x2 + mx), min(ih, box.y2 + my)
    if x2 <= x1 or y2 <= y1:
        return frame, box
    part = image[y1:y2, x1:x2].copy()  # a copy, not a view: the frame can go
    small = Frame(
        camera_id=frame.camera_id,
        seq=frame.seq,
        mono_ts=frame.mono_ts,
        wall_ts=frame.wall_ts,
        width=x2 - x1,
        height=y2 - y1,
        luma=part[:1, :1, 0] if part.ndim == 3 else part[:1, :1],
        _image=part,
    )
    moved = Box(x1=box.x1 - x1, y1=box.y1 - y1, x2=box.x2 - x1, y2=box.y2 - y1)
    return small, moved


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
        self._cstate: dict[str, CameraState] = {}
        self.events_started = 0
        self.events_continued = 0
        self.tracks_created = 0

    async def configure(self, app: AppConfig) -> None:
        self.cfg = self.config_of(app)
        det = getattr(app, "detector", None)
        self.detector_enabled = bool(getattr(det, "enabled", False))
        self.cams = {
            cid: cam.options(self.name or "tracker", Camera) for cid, cam in app.cameras.items()
        }
        for st in self._cstate.values():
            for t in st.tracks:
                t.hits = deque(t.hits, maxlen=self.cfg.confirm_window)

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
            st = self._camera(m.camera_id)
            if st.first_mono is None:
                st.first_mono = m.mono_ts
            if m.mono_ts > st.clock:
                st.clock, st.clock_real = m.mono_ts, time.monotonic()
                await self._expire_camera(m.camera_id, st, m.mono_ts)
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

    def _camera(self, camera_id: str) -> CameraState:
        st = self._cstate.get(camera_id)
        if st is None:
            st = self._cstate[camera_id] = CameraState()
        return st

    def _alerting(self, camera_id: str, label: str) -> bool:
        cam = self.cams.get(camera_id)
        labels = cam.labels if cam is not None and cam.labels is not None else self.cfg.labels
        return label == "motion" or not labels or label in labels

    def _still(self, box: Box, motion: tuple[Box, ...]) -> bool:
        """No motion box of this inference touches ``box`` (and motion boxes were given)."""
        return (
            self.cfg.still_bystanders and bool(motion) and not any(_touches(box, m) for m in motion)
        )

    def _cooldown(self, camera_id: str, label: str) -> float:
        if label in self.cfg.cooldown_by_label:
            return self.cfg.cooldown_by_label[label]
        cam = self.cams.get(camera_id)
        if cam is not None and cam.cooldown_s is not None:
            return cam.cooldown_s
        return self.cfg.cooldown_s

    # -- the per-frame step ----------------------------------------------------------------------
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
        """Associate one frame's detections with the camera's tracks and advance events.

        ``motion``: the motion boxes the detections were inferred around (none: every
        newcomer may be a moving object).
        """
        st = self._camera(camera_id)
        if st.first_mono is None:
            st.first_mono = mono
        st.clock = max(st.clock, mono)
        st.clock_real = time.monotonic()
        st.width, st.height = width, height
        diag = math.hypot(width, height)
        dets = [d for d in detections if self._alerting(camera_id, d[0])]
        matched = associate(
            st.tracks, dets, diag, mono, width, height, self.cfg.match_iou, self.cfg.max_jump
        )
        seen: set[int] = set()
        for track, (_label, score, box) in matched:
            seen.add(track.id)
            track.follow(box, mono)
            track.score = score
            track.hits.append(True)
            track.sightings += 1
            if track.still_box is None or (
                box.iou(track.still_box) < self.cfg.stationary_iou and not self._still(box, motion)
            ):
                track.still_box, track.still_mono = box, mono
            if (
                track.label != "motion"
                and box.iou(track.first_box) < self.cfg.stationary_iou
                and not self._still(box, motion)
            ):
                track.moved = True
                if track.parked:
                    track.parked = False
                    track.first_box, track.first_mono = box, mono
        used = {id(d) for _, d in matched}
        for track in st.tracks:
            if track.id not in seen:
                track.hits.append(False)
        for det in dets:
            if id(det) in used:
                continue
            label, score, box = det
            warm = mono - st.first_mono < self.cfg.warmup_s
            bystander = self._still(box, motion)
            t = Track(
                id=st.next_id,
                label=label,
                box=box,
                score=score,
                first_box=box,
                first_mono=mono,
                first_wall=wall,
                last_seen_mono=mono,
                still_box=box,
                still_mono=mono,
                hits=deque([True], maxlen=self.cfg.confirm_window),
                moved=label == "motion",
                already_there=label != "motion"
                and (
                    warm
                    or bystander
                    or any(
                        pl == label and box.iou(pb) >= self.cfg.stationary_iou
                        for pl, pb in st.parked
                    )
                ),
            )
            st.next_id += 1
            self.tracks_created += 1
            st.tracks.append(t)
            seen.add(t.id)
        zones = self.cams.get(camera_id, Camera()).zones
        on_frame: list[Track] = []  # members of the activity seen in this frame
        for track in st.tracks:
            if track.id not in seen:
                continue
            foot = ((track.box.x1 + track.box.x2) / 2.0 / width, track.box.y2 / height)
            allowed, inside = zone_check(zones, track.label, foot)
            if track.event is None:
                if (
                    allowed
                    and not track.parked
                    and sum(track.hits) >= self.cfg.confirm_hits
                    and (track.moved or not track.already_there)
                ):
                    self._join(camera_id, st, track, mono, diag)
                else:
                    continue
            ev = track.event
            assert ev is not None
            self._sighting(camera_id, ev, track, inside, foot, zones, mono, wall, seq)
            if self._stopped(camera_id, track, mono):
                self._park(camera_id, st, track)
                continue
            on_frame.append(track)
        act = st.activity
        if act is not None and on_frame:
            self._consider_best(act, on_frame, seq, frame, width, height)
        if act is not None:
            if act.due == "started":
                act.due = None
                act.last_update_mono = mono
                await self._publish(act, "started", wall, tracks=st.tracks)
            elif act.due == "updated" or (
                on_frame and mono - act.last_update_mono >= self.cfg.update_every_s
            ):
                act.due = None
                act.last_update_mono = mono
                await self._publish(act, "updated", wall, tracks=st.tracks)
        # a still object with no activity is remembered as parked so a re-detection stays quiet
        for track in st.tracks:
            if (
                track.event is None
                and not track.parked
                and not track.moved
                and track.label != "motion"
                and mono - track.first_mono >= self.cfg.stationary_after_s
            ):
                self._park(camera_id, st, track)
        await self._expire_camera(camera_id, st, mono)

    def _stopped(self, camera_id: str, track: Track, mono: float) -> bool:
        """A member that leaves its activity as parked: still since it was first seen, or, for
        a label that is no alert anywhere (a car), stopped where it is for the same time."""
        if track.label == "motion":
            return False
        limit = self.cfg.stationary_after_s
        if not track.moved:
            return mono - track.first_mono >= limit
        cam = self.cams.get(camera_id)
        labels = (
            cam.alert_labels
            if cam is not None and cam.alert_labels is not None
            else self.cfg.alert_labels
        )
        return track.label not in labels and mono - track.still_mono >= limit

    def _alert_label(
        self, camera_id: str, label: str, foot: tuple[float, float], zones: tuple[Zone, ...]
    ) -> bool:
        """Whether ``label`` standing at ``foot`` makes its activity an alert."""
        cam = self.cams.get(camera_id)
        labels = (
            cam.alert_labels
            if cam is not None and cam.alert_labels is not None
            else self.cfg.alert_labels
        )
        if label in labels:
            return True
        return any(
            z.mode == "include" and label in z.alert_labels and z.contains(foot) for z in zones
        )

    def _sighting(
        self,
        camera_id: str,
        ev: TrackedEvent,
        track: Track,
        inside: tuple[str, ...],
        foot: tuple[float, float],
        zones: tuple[Zone, ...],
        mono: float,
        wall: float,
        seq: int,
    ) -> None:
        """A member of ``ev`` seen: it extends the activity and may make it an alert."""
        ev.zones.update(inside)
        ev.last_seen_mono = max(ev.last_seen_mono, mono)
        ev.last_seen_wall = max(ev.last_seen_wall, wall)
        old = ev.members.get(track.id)
        ev.members[track.id] = TrackedObject(
            track_id=track.id,
            label=track.label,
            score=max(track.score, old.score if old is not None else 0.0),
            box=track.box,
            zones=tuple(sorted({*inside, *(old.zones if old is not None else ())})),
        )
        if old is None and ev.due is None:
            ev.due = "updated"  # a new object: the caption changes
        if ev.severity != "alert" and self._alert_label(camera_id, track.label, foot, zones):
            ev.severity = "alert"
            ev.escalated_seq = seq
            ev.best_q = -1.0  # the snapshot shows what made it an alert
            if ev.due is None:
                ev.due = "updated"

    def _consider_best(
        self,
        ev: TrackedEvent,
        tracks: list[Track],
        seq: int,
        frame: Frame | None,
        width: int,
        height: int,
    ) -> None:
        qs = [snapshot_quality(t.score, t.box, width, height) for t in tracks]
        if frame is not None:
            for t, qt in zip(tracks, qs, strict=True):
                if qt > ev.crops.get(t.id, (-1.0,))[0]:
                    ev.crops[t.id] = (qt, *crop_of(frame, t.box))
            # a crop holds its whole frame (~4 MB at 720p once decoded) until the activity
            # ends: keep the best MAX_CROPS (what the thumbnail row shows), not one per object
            while len(ev.crops) > MAX_CROPS:
                del ev.crops[min(ev.crops, key=lambda tid: ev.crops[tid][0])]
        q = sum(qs)
        if q > ev.best_q and (frame is not None or ev.best_frame is None):
            ev.best_q, ev.best_frame, ev.best_seq = q, frame, seq
            ev.best_objects = tuple(
                TrackedObject(track_id=t.id, label=t.label, score=t.score, box=t.box)
                for t in tracks
            )

    def _join(
        self, camera_id: str, st: CameraState, track: Track, mono: float, diag: float
    ) -> None:
        """A confirmed track joins the camera's open activity, reopens one, or opens one."""
        act = st.activity
        if act is None:
            act = self._resumable(camera_id, st, track, mono, diag)
            if act is not None:
                act.ended_mono = None
                st.ended.remove(act)
                act.due = "updated"
                self.events_continued += 1
        if act is None:
            start_mono, start_wall = track.first_mono, track.first_wall
            if st.split is not None and st.split[0] > start_mono:
                start_mono, start_wall = st.split  # it goes on from the one closed for length
            notice = EventNotice(
                event_id=new_event_id(start_wall),
                camera_id=camera_id,
                kind="motion" if track.label == "motion" else "object",
                phase="started",
                labels=(track.label,),
                top_score=track.score,
                started_at=start_wall,
                updated_at=start_wall,
                started_mono=start_mono,
                frame_width=st.width,
                frame_height=st.height,
            )
            act = TrackedEvent(
                notice=notice,
                last_seen_mono=track.last_seen_mono,
                last_seen_wall=start_wall,
                last_update_mono=mono,
            )
            self.events_started += 1
        elif act.notice.kind == "motion" and track.label != "motion":
            act.notice = act.notice.model_copy(update={"kind": "object"})
        st.activity = act
        track.event = act

    def _resumable(
        self, camera_id: str, st: CameraState, track: Track, mono: float, diag: float
    ) -> TrackedEvent | None:
        """A closed activity this track reopens: one of its label ended lately, nearby."""
        cooldown = self._cooldown(camera_id, track.label)
        reach = self.cfg.reentry_distance * diag
        c = centre(track.first_box)
        best: tuple[float, TrackedEvent] | None = None
        for ev in st.ended:
            if ev.ended_mono is None or mono - ev.ended_mono > cooldown:
                continue
            dist = ev.near(track.label, c)
            if dist is not None and dist <= reach and (best is None or dist < best[0]):
                best = (dist, ev)
        return best[1] if best is not None else None

    def _park(self, camera_id: str, st: CameraState, track: Track) -> None:
        track.parked = True
        st.parked.append((track.label, track.box))
        del st.parked[:-32]
        ev = track.event
        if ev is not None:
            track.event = None
            self.log.info(
                "object_parked", camera=camera_id, label=track.label, event_id=ev.notice.event_id
            )

    # -- ending ------------------------------------------------------------------------------
    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            await self.expire()

    async def expire(self) -> None:
        """End tracks whose objects are gone and activities quiet for the gap."""
        for camera_id, st in list(self._cstate.items()):
            await self._expire_camera(camera_id, st, st.now())

    async def _expire_camera(self, camera_id: str, st: CameraState, now: float) -> None:
        keep: list[Track] = []
        for t in st.tracks:
            gone = now - t.last_seen_mono
            if t.event is None and not t.parked and gone > max(1.0, self.cfg.end_after_s / 2):
                if (
                    t.already_there
                    and not t.moved
                    and t.label != "motion"
                    and t.sightings >= self.cfg.confirm_hits
                ):
                    # a still object (seen more than once) out of view, the detector looking
                    # elsewhere: remember it as parked so seeing it there again stays quiet
                    st.parked.append((t.label, t.box))
                    del st.parked[:-32]
                continue  # an unconfirmed flicker, or a still object out of view
            if gone < self.cfg.end_after_s:
                keep.append(t)
                continue
            t.event = None
        st.tracks = keep
        act = st.activity
        if (
            act is not None
            and act.due != "started"
            and now - act.last_seen_mono >= (self.cfg.activity_gap_s)
        ):
            await self._end(st, act, now)
        elif (
            act is not None
            and act.due != "started"
            and now - act.notice.started_mono >= self.cfg.activity_max_s
        ):
            # too long for one clip: closed here, and whoever is still in view opens the next
            st.split = (now, act.last_seen_wall + max(0.0, now - act.last_seen_mono))
            await self._end(st, act, now, resumable=False)
        cutoff = max(
            [self.cfg.cooldown_s, *self.cfg.cooldown_by_label.values()]
            + [c.cooldown_s for c in self.cams.values() if c.cooldown_s is not None]
        )
        st.ended = [
            e for e in st.ended if e.ended_mono is not None and now - e.ended_mono <= cutoff
        ]

    async def _end(
        self, st: CameraState, ev: TrackedEvent, now: float, *, resumable: bool = True
    ) -> None:
        ev.ended_mono = now
        st.activity = None
        for t in st.tracks:
            if t.event is ev:
                t.event = None
        if resumable:
            st.ended.append(ev)
        await self._publish(ev, "ended", ev.last_seen_wall, ended_at=ev.last_seen_wall, tracks=[])

    async def _publish(
        self,
        ev: TrackedEvent,
        phase: Literal["started", "updated", "ended"],
        wall: float,
        *,
        tracks: list[Track],
        ended_at: float | None = None,
    ) -> None:
        alive = {t.id for t in tracks if t.event is ev}
        objects = tuple(
            o
            if o.present == (o.track_id in alive)
            else o.model_copy(update={"present": not o.present})
            for o in ev.members.values()
        )
        top = max([ev.notice.top_score, *(o.score for o in objects)])
        ev.notice = ev.notice.model_copy(
            update={
                "phase": phase,
                "labels": ev.labels or ev.notice.labels,
                "top_score": top,
                "updated_at": max(wall, ev.notice.started_at),
                "ended_at": ended_at,
                "zones": tuple(sorted(ev.zones)),
                "objects": objects,
                "severity": ev.severity,
                "frame_objects": ev.best_objects,
                "boxes": tuple(o.box for o in ev.best_objects),
                "frame_seq": ev.best_seq,
            }
        )
        update: dict[str, Any] = {"frame": ev.best_frame}
        if phase == "ended":
            update["crops"] = tuple((tid, f, b) for tid, (_q, f, b) in ev.crops.items())
        payload = ev.notice.model_copy(update=update)
        await self.bus.publish(topics.EVENT.at(kind=ev.notice.kind, phase=phase), payload)

    async def stop(self) -> None:
        await super().stop()
        # A replay that ends mid-activity still closes it, so the index has an end time.
        for st in self._cstate.values():
            act = st.activity
            if act is not None and act.due != "started":
                await self._end(st, act, st.now())

    def metrics(self) -> dict[str, float | int | str]:
        return {
            "events_started": self.events_started,
            "events_continued": self.events_continued,
            "tracks_created": self.tracks_created,
            "open_events": sum(1 for s in self._cstate.values() if s.activity is not None),
            "mode": self.mode,
        }


def _touches(a: Box, b: Box) -> bool:
    return a.x1 < b.x2 and b.x1 < a.x2 and a.y1 < b.y2 and b.y1 < a.y2


__all__ = [
    "Camera",
    "Config",
    "EventTracker",
    "Zone",
    "point_in_polygon",
    "snapshot_quality",
    "zone_check",
]
