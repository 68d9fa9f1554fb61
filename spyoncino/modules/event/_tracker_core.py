"""The tracker's logic as a pure core: observations and a time in, intents out.

``TrackerCore`` holds every camera's tracks and activities and never awaits, publishes, logs or
reads a clock: each call takes the time as a number (``now``: the module's clock, which only
advances a camera's frame clock between frames so activities end when a camera goes quiet)
and returns what should happen, in order:

* ``Notice(phase, payload)``: publish ``payload`` on ``event.<kind>.<phase>`` (``started``
  opens an activity, ``updated`` tells a change, ``ended`` closes it);
* ``Parked(camera_id, label, event_id)``: an object left its activity as parked (a log line).

The module (``tracker.py``) turns these into bus messages and log lines; tests drive the core
directly, with no bus and no event loop.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from spyoncino.modules.event._tracking import (
    CameraState,
    Track,
    TrackedEvent,
    Zone,
    associate,
    centre,
    new_event_id,
    snapshot_quality,
    zone_check,
)
from spyoncino.schemas.events import EventNotice, TrackedObject
from spyoncino.schemas.frames import Box, Frame

if TYPE_CHECKING:
    from spyoncino.modules.event.tracker import Camera, Config

Detections = list[tuple[str, float, Box]]


@dataclass(frozen=True, slots=True)
class Notice:
    """Publish ``payload`` on ``event.<payload.kind>.<phase>``."""

    phase: Literal["started", "updated", "ended"]
    payload: EventNotice


@dataclass(frozen=True, slots=True)
class Parked:
    """An object of ``event_id`` stood still long enough to leave it as parked."""

    camera_id: str
    label: str
    event_id: str


Intent = Notice | Parked


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


class TrackerCore:
    """Every camera's tracks and activities; see ``tracker.py`` for the rules."""

    def __init__(self, cfg: Config, cams: dict[str, Camera] | None = None) -> None:
        self.cfg = cfg
        self.cams: dict[str, Camera] = dict(cams or {})
        self.cameras: dict[str, CameraState] = {}
        self.events_started = 0
        self.events_continued = 0
        self.tracks_created = 0
        self._out: list[Intent] = []

    def configure(self, cfg: Config, cams: dict[str, Camera]) -> None:
        self.cfg, self.cams = cfg, dict(cams)
        for st in self.cameras.values():
            for t in st.tracks:
                t.hits = deque(t.hits, maxlen=cfg.confirm_window)

    @property
    def open_activities(self) -> int:
        return sum(1 for s in self.cameras.values() if s.activity is not None)

    @property
    def quiet(self) -> bool:
        """Nothing for ``expire`` to end: no track, no open activity, no ended one still in
        its cooldown, on any camera."""
        return all(
            not s.tracks and s.activity is None and not s.ended for s in self.cameras.values()
        )

    def _take(self) -> list[Intent]:
        out, self._out = self._out, []
        return out

    # -- the calls -------------------------------------------------------------------------
    def observe(
        self,
        camera_id: str,
        mono: float,
        wall: float,
        width: int,
        height: int,
        seq: int,
        detections: Detections,
        frame: Frame | None,
        motion: tuple[Box, ...] = (),
        *,
        now: float,
    ) -> list[Intent]:
        """Associate one frame's detections with the camera's tracks and advance its activity.

        ``mono``/``wall``: the frame's own times; ``motion``: the motion boxes the detections
        were inferred around (none: every newcomer may be a moving object); ``now``: the
        module's clock at this call.
        """
        self._step(camera_id, mono, wall, width, height, seq, detections, frame, motion, now)
        return self._take()

    def tick(self, camera_id: str, mono: float, *, now: float) -> list[Intent]:
        """A frame of ``camera_id`` with nothing to associate (motion while objects raise the
        events): its frame clock moves on, so activities end on time in replays."""
        st = self._camera(camera_id)
        if st.first_mono is None:
            st.first_mono = mono
        if mono > st.clock:
            st.clock, st.clock_real = mono, now
            self._expire_camera(camera_id, st, mono)
        return self._take()

    def expire(self, now: float) -> list[Intent]:
        """End tracks whose objects are gone and activities quiet for the gap, ``now`` being
        the module's clock (each camera's frame clock advanced by the time since its last
        frame)."""
        for camera_id, st in list(self.cameras.items()):
            self._expire_camera(camera_id, st, st.now(now))
        return self._take()

    def close_all(self, now: float) -> list[Intent]:
        """Stopping: every open activity ends (a replay that stops mid-activity still has an
        end time in the index)."""
        for st in self.cameras.values():
            act = st.activity
            if act is not None and act.due != "started":
                self._end(st, act, st.now(now))
        return self._take()

    def _camera(self, camera_id: str) -> CameraState:
        st = self.cameras.get(camera_id)
        if st is None:
            st = self.cameras[camera_id] = CameraState()
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
    def _step(
        self,
        camera_id: str,
        mono: float,
        wall: float,
        width: int,
        height: int,
        seq: int,
        detections: list[tuple[str, float, Box]],
        frame: Frame | None,
        motion: tuple[Box, ...],
        now: float,
    ) -> None:
        st = self._camera(camera_id)
        if st.first_mono is None:
            st.first_mono = mono
        st.clock = max(st.clock, mono)
        st.clock_real = now
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
        cam = self.cams.get(camera_id)
        zones = cam.zones if cam is not None else ()
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
                self._publish(act, "started", wall, tracks=st.tracks)
            elif act.due == "updated" or (
                on_frame and mono - act.last_update_mono >= self.cfg.update_every_s
            ):
                act.due = None
                act.last_update_mono = mono
                self._publish(act, "updated", wall, tracks=st.tracks)
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
        self._expire_camera(camera_id, st, mono)

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
            self._out.append(Parked(camera_id, track.label, ev.notice.event_id))

    # -- ending ------------------------------------------------------------------------------
    def _expire_camera(self, camera_id: str, st: CameraState, now: float) -> None:
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
            self._end(st, act, now)
        elif (
            act is not None
            and act.due != "started"
            and now - act.notice.started_mono >= self.cfg.activity_max_s
        ):
            # too long for one clip: closed here, and whoever is still in view opens the next
            st.split = (now, act.last_seen_wall + max(0.0, now - act.last_seen_mono))
            self._end(st, act, now, resumable=False)
        cutoff = max(
            [self.cfg.cooldown_s, *self.cfg.cooldown_by_label.values()]
            + [c.cooldown_s for c in self.cams.values() if c.cooldown_s is not None]
        )
        st.ended = [
            e for e in st.ended if e.ended_mono is not None and now - e.ended_mono <= cutoff
        ]

    def _end(
        self, st: CameraState, ev: TrackedEvent, now: float, *, resumable: bool = True
    ) -> None:
        ev.ended_mono = now
        st.activity = None
        for t in st.tracks:
            if t.event is ev:
                t.event = None
        if resumable:
            st.ended.append(ev)
        self._publish(ev, "ended", ev.last_seen_wall, ended_at=ev.last_seen_wall, tracks=[])

    def _publish(
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
        self._out.append(Notice(phase, payload))


def _touches(a: Box, b: Box) -> bool:
    return a.x1 < b.x2 and b.x1 < a.x2 and a.y1 < b.y2 and b.y1 < a.y2


__all__ = ["MAX_CROPS", "Intent", "Notice", "Parked", "TrackerCore", "crop_of"]
