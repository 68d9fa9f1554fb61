"""The detector's schedule, driven directly: frames and times in, the job to run out.

No model, no bus, no event loop: each call is handed the time on the module's clock, so the
pacing is stated exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from spyoncino.modules.process._detector_config import Config, DetectorCamera
from spyoncino.modules.process._detector_schedule import Job, Schedule
from spyoncino.schemas.detections import Detection
from spyoncino.schemas.frames import Box, Frame

W, H = 640, 360
LUMA = np.zeros((4, 4), np.uint8)
MOTION = (Box(x1=100, y1=100, x2=200, y2=250),)


def job(t: float, camera: str = "cam", motion: tuple[Box, ...] = MOTION) -> Job:
    seq = round(t * 10)
    frame = Frame(camera, seq, t, 1_700_000_000.0 + t, W, H, LUMA)
    return Job(camera, frame, seq, t, 1_700_000_000.0 + t, W, H, motion)


def person(x: int = 120) -> list[Detection]:
    return [Detection(label="person", score=0.9, box=Box(x1=x, y1=100, x2=x + 40, y2=220))]


def test_frames_are_paced_on_their_own_clock_at_max_fps() -> None:
    s = Schedule(Config())  # max_fps 5: one frame in two of a 10 fps camera
    ran = []
    for i in range(10):
        t = i / 10
        s.offer(job(t, motion=()), now=t)  # no motion boxes: never idles
        step = s.next(now=t)
        if isinstance(step, Job):
            ran.append(step.seq)
            s.done(step, [])
    assert ran == [0, 2, 4, 6, 8]
    assert s.superseded == 4 and s.depth == 1  # each odd frame replaced; frame 9 waits


def test_a_replay_faster_than_real_time_infers_the_same_frames() -> None:
    s = Schedule(Config())
    ran = []
    for i in range(10):
        s.offer(job(i / 10, motion=()), now=0.0)  # the clock stands still: ten frames at once
        step = s.next(now=0.0)
        if isinstance(step, Job):
            ran.append(step.seq)
            s.done(step, [])
    assert ran == [0, 2, 4, 6, 8]


def test_a_frame_not_due_runs_once_no_newer_one_came_for_an_interval() -> None:
    s = Schedule(Config())
    s.offer(job(0.0), now=0.0)
    first = s.next(now=0.0)
    assert isinstance(first, Job)
    s.done(first, [])
    s.offer(job(0.1), now=0.1)  # motion stops after this frame
    assert s.next(now=0.1) == pytest.approx(0.3)  # not due: look again at 0.3
    assert s.next(now=0.29) == pytest.approx(0.3)
    late = s.next(now=0.3)
    assert isinstance(late, Job) and late.seq == 1
    assert s.next(now=0.3) is None  # nothing pending


def test_the_newest_frame_of_a_camera_replaces_the_pending_one() -> None:
    s = Schedule(Config())
    s.offer(job(0.0), now=0.0)
    s.offer(job(0.1), now=0.1)
    step = s.next(now=0.1)
    assert isinstance(step, Job) and step.seq == 1
    assert s.superseded == 1 and s.max_queue_depth == 1


def test_cameras_are_served_in_turn() -> None:
    s = Schedule(Config())
    for cam in ("a", "b", "c"):
        s.offer(job(0.0, cam), now=0.0)
    order = []
    while isinstance(step := s.next(now=0.0), Job):
        order.append(step.camera_id)
        s.offer(job(step.mono_ts + 0.2, step.camera_id), now=0.0)  # each has its next frame
        if len(order) == 6:
            break
    assert order == ["a", "b", "c", "a", "b", "c"]


def test_a_newcomer_earns_its_camera_a_second_look_at_once_in_place_of_the_next() -> None:
    s = Schedule(Config())
    s.offer(job(0.0), now=0.0)
    first = s.next(now=0.0)
    assert isinstance(first, Job)
    s.done(first, person())  # someone new
    s.offer(job(0.1), now=0.1)
    again = s.next(now=0.1)
    assert isinstance(again, Job) and again.seq == 1  # at once, not after 0.2 s
    assert s.rechecks == 1
    s.done(again, person(124))  # the same person: no further second look
    ran = []
    for i in range(2, 6):
        s.offer(job(i / 10), now=i / 10)
        if isinstance(step := s.next(now=i / 10), Job):
            ran.append(step.seq)
            s.done(step, person(124 + 4 * i))
    assert ran == [4]  # the cadence resumes: the look took frame 2's turn


def test_empty_looks_at_the_same_motion_slow_a_camera_down_until_motion_is_elsewhere() -> None:
    s = Schedule(Config(idle_after=2, idle_fps=1.0))
    for i in (0, 2):
        s.offer(job(i / 10), now=i / 10)
        step = s.next(now=i / 10)
        assert isinstance(step, Job)
        s.done(step, [])  # swaying hedge: nothing
    assert s.idle_cameras == 1
    s.offer(job(0.4), now=0.4)
    assert s.next(now=0.4) == pytest.approx(1.4)  # idle: once a second at the same place
    elsewhere = (Box(x1=400, y1=100, x2=480, y2=300),)
    s.offer(job(0.5, motion=(*MOTION, *elsewhere)), now=0.5)
    step = s.next(now=0.5)
    assert isinstance(step, Job) and step.seq == 5  # someone walking in beside it


def test_motion_after_a_still_scene_forgets_the_idle_state() -> None:
    s = Schedule(Config(idle_after=1, idle_fps=0.2))
    assert s.motion("cam", 0.0, True)
    s.offer(job(0.0), now=0.0)
    step = s.next(now=0.0)
    assert isinstance(step, Job)
    s.done(step, [])
    assert s.idle_cameras == 1
    assert s.motion("cam", 3.0, True)  # 3 s without motion, then motion again
    assert s.idle_cameras == 0
    s.offer(job(3.0), now=3.0)
    assert isinstance(s.next(now=3.0), Job)


def test_frames_without_motion_or_of_a_disabled_camera_are_not_inferred() -> None:
    s = Schedule(Config(), {"off": DetectorCamera(enabled=False)})
    assert not s.motion("cam", 0.0, False)
    assert s.skipped_no_motion == 1
    assert not s.motion("off", 0.0, True)
    assert s.motion("cam", 0.1, True)


def test_a_camera_owed_a_second_look_goes_before_the_other_busy_cameras() -> None:
    """Four busy cameras: the one whose last look found someone new is inferred next, not
    after the three others' regular turns (its alert waits on that second sighting)."""
    s = Schedule(Config())
    cams = ("a", "b", "c", "d")
    for cam in cams:
        s.offer(job(0.0, cam), now=0.0)
    served = []
    for _ in cams:
        step = s.next(now=0.0)
        assert isinstance(step, Job)
        served.append(step.camera_id)
        s.done(step, person() if step.camera_id == "b" else [])
    assert served == ["a", "b", "c", "d"]
    for cam in cams:
        s.offer(job(0.2, cam), now=0.2)
    step = s.next(now=0.2)
    assert isinstance(step, Job) and step.camera_id == "b"


def test_motion_starting_on_a_still_camera_goes_before_cameras_in_ongoing_motion() -> None:
    s = Schedule(Config())
    for i in range(0, 10):  # a and b have been busy for a second
        for cam in ("a", "b"):
            assert s.motion(cam, i / 10, True)
            s.offer(job(i / 10, cam, motion=()), now=i / 10)
            if isinstance(step := s.next(now=i / 10), Job):
                s.done(step, [])
    assert s.motion("c", 1.0, True)  # someone steps into c's view
    for cam in ("a", "b", "c"):
        if cam != "c":
            assert s.motion(cam, 1.0, True)
        s.offer(job(1.0, cam, motion=()), now=1.0)
    step = s.next(now=1.0)
    assert isinstance(step, Job) and step.camera_id == "c"


def test_cameras_that_keep_finding_newcomers_do_not_starve_the_others() -> None:
    """One inference per 0.1 s (the interpreter is the bottleneck), four busy cameras, two of
    them finding someone new on every look: a jump is served at most once between two turns
    of the round robin, so the quiet two are still looked at."""
    s = Schedule(Config())
    served: list[str] = []
    for i in range(60):
        t = i / 10
        for cam in ("a", "b", "c", "d"):
            s.offer(job(t, cam, motion=()), now=t)
        step = s.next(now=t)
        if isinstance(step, Job):
            served.append(step.camera_id)
            newcomer = step.camera_id in ("a", "b")
            s.done(step, person(20 + 60 * i) if newcomer else [])  # never near the last
    # without the bound, "a" took all 60 looks: its newcomer every time kept it first in line
    assert served.count("c") >= 5 and served.count("d") >= 5, served
