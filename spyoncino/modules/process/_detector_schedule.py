"""The detector's scheduling as a pure core: which camera's frame is inferred next, and when.

``Schedule`` does no I/O and reads no clock: the module hands it each motion event and frame
with the time on its clock (``now``), asks ``next(now)`` for the job to run (or the time to
look again), and reports each inference's result with ``done``. The rules:

* **Latest wins**: one pending frame per camera; a newer one replaces it (``superseded``).
* **Round robin**: cameras are served in turn, the one served going to the back.
* **Pacing** on the frames' own clock (``mono_ts``): a camera's frame is due once its time is
  ``1/max_fps`` past the camera's last inference, so a replay at any speed infers the same
  frames; a frame not due yet is inferred anyway when no newer one came for a whole interval
  (motion stopped).
* **Onset**: motion after a still scene (``STILL_RESET_S`` without any) resets the idle state
  (whatever moves now is not the swaying that went idle before); its first frame is due at
  once, the last inference being at least that long before it.
* **Idle**: after ``idle_after`` empty inferences on motion in the same places a camera drops
  to ``idle_fps``; motion reaching beyond those places is looked at at ``max_fps`` again.
* **Second look**: an object none of the camera's inferences of the last second had earns the
  camera's next frame at once (in place of the next regular inference): the tracker needs a
  second sighting before it alerts.
* **First in line**: a camera owed a second look, or whose motion just started after a still
  scene, is served before the round robin of cameras in ongoing motion: an alert never waits
  for the other cameras' regular inferences (with four busy cameras that wait was up to half a
  second per step, issue #20). It costs no extra inference, only the order changes; and at
  most one such jump is served between two turns of the round robin, so cameras that keep
  finding newcomers cannot starve the others.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from spyoncino.modules.process._detector_config import Config, DetectorCamera
from spyoncino.modules.process._regions import near, within
from spyoncino.schemas.detections import Detection
from spyoncino.schemas.frames import Box, Frame

RECENT_S = 1.0  # an object seen this recently (frame time) is not new to the detector
STILL_RESET_S = 1.0  # motion that starts again after this long without any is looked at anew
SAME_PLACE = 0.1  # an idle camera's motion box may reach this share past the empty looks' boxes
SLACK_S = 0.002  # 10 fps frames are 0.1 s apart give or take rounding


@dataclass(frozen=True, slots=True)
class Job:
    """One frame to infer, with the motion it is inferred around."""

    camera_id: str
    frame: Frame
    seq: int
    mono_ts: float
    wall_ts: float
    width: int
    height: int
    motion: tuple[Box, ...]


class Schedule:
    """Pending frames per camera and the state that paces them."""

    def __init__(self, cfg: Config, cams: dict[str, DetectorCamera] | None = None) -> None:
        self.cfg = cfg
        self.cams: dict[str, DetectorCamera] = dict(cams or {})
        self._pending: dict[str, Job] = {}
        self._order: deque[str] = deque()
        self._last_ts: dict[str, float] = {}  # frame time of each camera's last inference
        self._arrived: dict[str, float] = {}  # when each pending job arrived (clock time)
        self._last_motion: dict[str, float] = {}
        # per camera: empty inferences in a row, and the motion they were run for
        self._empty_streak: Counter[str] = Counter()
        self._empty_motion: dict[str, tuple[Box, ...]] = {}
        # per camera: what the last inferences kept, and cameras owed a quick second look
        self._found: dict[str, list[tuple[float, tuple[Box, ...]]]] = {}
        self._recheck: set[str] = set()
        self._onset: set[str] = set()  # cameras whose motion started after a still scene
        self._jumped = False  # the last job served jumped the line
        # telemetry
        self.superseded = 0
        self.max_queue_depth = 0
        self.rechecks = 0
        self.skipped_no_motion = 0

    def configure(self, cfg: Config, cams: dict[str, DetectorCamera]) -> None:
        self.cfg, self.cams = cfg, dict(cams)

    def camera(self, cid: str) -> DetectorCamera:
        cam = self.cams.get(cid)
        return cam if cam is not None else DetectorCamera()

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def idle_cameras(self) -> int:
        return sum(n >= self.cfg.idle_after for n in self._empty_streak.values())

    # -- input -------------------------------------------------------------------------------
    def motion(self, camera_id: str, mono_ts: float, has_boxes: bool) -> bool:
        """A motion event of ``camera_id``: whether its frame is worth inferring (it has motion
        and the camera is on). Motion after a still scene forgets the idle state."""
        if not has_boxes:
            self.skipped_no_motion += 1
            return False
        if not self.camera(camera_id).enabled:
            return False
        last = self._last_motion.get(camera_id)
        self._last_motion[camera_id] = mono_ts
        if last is None or not 0.0 <= mono_ts - last < STILL_RESET_S:
            self._empty_streak[camera_id] = 0
            self._empty_motion.pop(camera_id, None)
            self._onset.add(camera_id)
        return True

    def offer(self, job: Job, now: float) -> None:
        """The newest frame of its camera (an older pending one is dropped)."""
        cid = job.camera_id
        if cid in self._pending:
            self.superseded += 1
        elif cid not in self._order:
            self._order.append(cid)
        self._pending[cid] = job
        self._arrived[cid] = now
        self.max_queue_depth = max(self.max_queue_depth, len(self._pending))

    # -- the decision ------------------------------------------------------------------------
    def next(self, now: float) -> Job | float | None:
        """The job to infer now (taken off the queue), else the clock time at which a pending
        frame falls due by waiting (no newer one came), else None (nothing pending)."""
        earliest: float | None = None
        first = (
            []
            if self._jumped
            else [c for c in self._order if c in self._recheck or c in self._onset]
        )
        for k in range(len(first) + len(self._order)):
            if k < len(first):
                cid = first[k]  # first in line; its place in the round robin is kept
            else:
                cid = self._order[0]
                self._order.rotate(-1)  # round robin: the camera served goes to the back
            job = self._pending.get(cid)
            if job is None:
                continue
            interval = self.interval(job)
            last = self._last_ts.get(cid)
            elapsed = None if last is None else job.mono_ts - last
            due = elapsed is None or elapsed < 0 or elapsed >= interval - SLACK_S
            early = not due and cid in self._recheck and last is not None
            wake_at = self._arrived.get(cid, now) + interval
            # (the same sum as the time handed back below: a clock woken exactly then is due)
            if due or early or now >= wake_at - 1e-9:
                # a second look takes the place of the next regular inference (the cadence
                # resumes after it), so a newcomer costs no extra CPU
                stamp = job.mono_ts
                if early and last is not None:
                    stamp = last + interval
                self._last_ts[cid] = stamp
                self._recheck.discard(cid)
                self._onset.discard(cid)
                self._jumped = k < len(first)
                return self._pending.pop(cid)
            earliest = wake_at if earliest is None else min(earliest, wake_at)
        return earliest

    def interval(self, job: Job) -> float:
        """Seconds between inferences of this job's camera: 1/max_fps, or 1/idle_fps while
        motion in the same places keeps finding nothing. Any motion box that reaches beyond
        the boxes the empty inferences looked at, by more than a tenth of their size (a person
        walking in beside the swaying hedge, or growing into view at the frame's edge), is
        new."""
        cam = self.camera(job.camera_id)
        fast = 1.0 / cam.max_fps
        if self.cfg.trigger != "motion" or self._empty_streak[job.camera_id] < self.cfg.idle_after:
            return fast
        empty = self._empty_motion.get(job.camera_id, ())
        new = [b for b in job.motion if not any(within(b, e, SAME_PLACE) for e in empty)]
        if not job.motion or new:
            return fast  # motion somewhere new: look at once
        return max(fast, 1.0 / self.cfg.idle_fps)

    # -- results -----------------------------------------------------------------------------
    def done(self, job: Job, dets: Sequence[Detection]) -> None:
        """What the inference of ``job`` kept."""
        self._note_new(job, dets)
        cid = job.camera_id
        if dets:
            self._empty_streak[cid] = 0
            self._empty_motion.pop(cid, None)
            return
        self._empty_streak[cid] += 1
        if job.motion:
            before = self._empty_motion.get(cid, ())
            self._empty_motion[cid] = (*before, *job.motion)[-32:]

    def _note_new(self, job: Job, dets: Sequence[Detection]) -> None:
        """An object none of the camera's inferences of the last second had is confirmed
        sooner when the next frame is inferred at once rather than after the fps interval;
        someone the detector merely missed last time is not a newcomer."""
        recent = [
            (ts, boxes)
            for ts, boxes in self._found.get(job.camera_id, [])
            if 0.0 <= job.mono_ts - ts <= RECENT_S
        ]
        seen = [b for _, boxes in recent for b in boxes]
        if self.cfg.recheck_new and any(not any(near(b, d.box) for b in seen) for d in dets):
            self._recheck.add(job.camera_id)
            self.rechecks += 1
        recent.append((job.mono_ts, tuple(d.box for d in dets)))
        self._found[job.camera_id] = recent


__all__ = ["RECENT_S", "SAME_PLACE", "STILL_RESET_S", "Job", "Schedule"]
