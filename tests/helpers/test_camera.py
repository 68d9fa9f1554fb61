"""The camera-input base: hung reads, permanent failures, read-ahead with drop counting,
a driver that hangs in open() until the camera is wedged."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import structlog

from spyoncino.core.contracts import CameraOptions
from spyoncino.core.systemd import camera_liveness
from spyoncino.helpers import camera as camera_module
from spyoncino.helpers.camera import CameraInput, RawFrame, SourceFatal
from spyoncino.testing.clock import FakeClock
from tests.modules.input.conftest import camera_input  # noqa: F401 - the fixture
from tests.support.wait import until


class Scripted(CameraInput):
    """A camera whose reads follow a script: 'ok', 'hang', 'fatal'."""

    Camera: ClassVar[type[CameraOptions] | None] = None
    script: ClassVar[list[str]] = []

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.opened = 0
        self.closed = 0
        self.release = threading.Event()
        self.read_threads: set[int] = set()

    @classmethod
    def accepts(cls, source: str) -> bool:
        return source.startswith("test://")

    def open(self) -> None:
        self.opened += 1

    def read(self) -> RawFrame:
        self.read_threads.add(threading.get_ident())
        step = self.script.pop(0) if self.script else "ok"
        if step == "hang":
            self.release.wait(30)  # a driver that never returns (until the test ends)
        if step == "fatal":
            raise SourceFatal("camera removed for good")
        time.sleep(0.01)
        return RawFrame(width=64, height=48, image=np.zeros((48, 64, 3), np.uint8))

    def close(self) -> None:
        self.closed += 1


async def test_a_hung_read_is_a_stall_and_the_camera_recovers(camera_input) -> None:  # noqa: F811
    Scripted.script = ["ok", "ok", "hang"]
    h = await camera_input(Scripted, "test://x", "scripted", start=False)
    m = h.module
    m.stall_timeout = 0.5
    m.abandon_after = 0.3
    m.backoff_base = 0.1
    await m.start()
    try:
        await h.wait_state(("stalled",), timeout=5)
        assert "no frame" in (m.last_error or "")
        before = len(h.frames)
        await h.wait_frames(before + 3, timeout=5)  # reopened on a fresh thread
        assert m.reconnects == 1
        assert m.opened == 2
        assert len(m.read_threads) == 2  # the hung thread was abandoned, not waited for
    finally:
        m.release.set()


async def test_a_steady_stream_outlives_many_stall_timeouts_without_a_stall(
    camera_input,  # noqa: F811
) -> None:
    """The stall watchdog is one timer that re-arms from the last frame's time: a camera
    delivering frames for several stall timeouts in a row is never taken for stalled."""
    Scripted.script = []
    h = await camera_input(Scripted, "test://x", "scripted", start=False)
    m = h.module
    m.stall_timeout = 1.0
    await m.start()
    first = await until(lambda: m.last_frame_mono, timeout=5)
    # frames every ~10 ms; wait (on the module's own frames) for 4 stall timeouts' worth
    await until(
        lambda: m.last_frame_mono is not None and m.last_frame_mono - first >= 4.0,
        timeout=60,
    )
    assert m.reconnects == 0
    assert m.cam_state == "streaming"


async def test_a_fatal_error_fails_the_camera_and_stops_retrying(camera_input) -> None:  # noqa: F811
    Scripted.script = ["ok", "fatal"]
    h = await camera_input(Scripted, "test://x", "scripted")
    await h.wait_state(("failed",), timeout=5)
    frames = next(t for t in h.module._tasks if t.get_name().endswith(":frames"))
    await asyncio.wait_for(frames, 5)  # the camera's loop ended: it retries no more
    assert h.module.opened == 1
    assert h.module.health().state == "failed"
    assert h.module.health().last_error == "camera removed for good"


async def test_frames_arriving_while_the_loop_is_busy_are_dropped_and_counted(
    camera_input,  # noqa: F811
) -> None:
    Scripted.script = []
    h = await camera_input(Scripted, "test://x", "scripted")
    await h.wait_frames(3, timeout=5)
    # block the event loop for 0.3 s: ~30 frames arrive, one waits, the rest are replaced
    time.sleep(0.3)
    # the next frame comes after every hand-over queued while the loop was blocked
    await h.wait_frames(len(h.frames) + 1, timeout=5)
    assert h.module.frames_dropped >= 10
    metrics = h.module.metrics()
    assert metrics["frames_dropped"] == h.module.frames_dropped
    # the operator sees it by reason, and decoded = published + dropped by the input
    assert metrics["dropped_queue_full"] == h.module.frames_dropped
    assert metrics["dropped_decode_error"] == 0
    assert metrics["frames_decoded"] >= metrics["frames"] + h.module.frames_dropped


async def capped_to_2_fps(camera_input: Any) -> tuple[Any, FakeClock]:  # noqa: F811
    """A camera reading ~100 frames a second, held to the board's 2 fps on a clock of the
    test's, once its first frame is published."""
    Scripted.script = []
    clock = FakeClock()
    h = await camera_input(
        Scripted, "test://x", "scripted", runtime={"camera_max_fps": 2.0}, clock=clock
    )
    await h.wait_frames(1, timeout=5)
    return h, clock


async def test_frames_over_the_cap_are_capped_on_the_camera_thread_not_dropped_by_the_loop(
    camera_input,  # noqa: F811
) -> None:
    """A camera sending more than its cap (here the board's rate, the camera setting none):
    the frames over it are ``fps_cap`` drops, by design, and never wake the event loop, so a
    busy loop does not turn them into ``queue_full`` drops, the reason that tells the
    operator the box is overloaded."""
    h, clock = await capped_to_2_fps(camera_input)
    m = h.module
    await until(lambda: m.drops()["fps_cap"] >= 5, timeout=5)
    time.sleep(0.3)  # the loop blocked while ~30 more frames arrive, all over the cap
    await until(lambda: m.drops()["fps_cap"] >= 30, timeout=5)
    assert len(h.frames) == 1
    assert m.drops()["queue_full"] == 0
    clock.advance(0.5)  # one frame time at 2 fps: the next frame read is published
    await h.wait_frames(2, timeout=5)
    metrics = m.metrics()
    assert metrics["max_fps"] == 2.0  # the watchdog's frame time comes from the cap in force
    assert metrics["dropped_fps_cap"] == m.drops()["fps_cap"]
    assert metrics["frames_decoded"] >= metrics["frames"] + metrics["dropped_fps_cap"]


async def test_the_grey_plane_is_made_on_the_camera_thread_for_kept_frames_only(
    camera_input,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The small grey plane motion reads is made from each kept frame on the camera's own
    thread, never on the event loop every module shares, and not at all for the frames
    dropped over the cap (a 25 fps camera held to 10 shrinks 10 pictures a second)."""
    made_on: list[int] = []
    real = camera_module.make_luma

    def spy(image: Any, width: int) -> Any:
        made_on.append(threading.get_ident())
        return real(image, width)

    monkeypatch.setattr(camera_module, "make_luma", spy)
    h, clock = await capped_to_2_fps(camera_input)
    m = h.module
    await until(lambda: m.drops()["fps_cap"] >= 10, timeout=5)
    clock.advance(0.5)  # one more frame is kept
    await h.wait_frames(2, timeout=5)
    assert len(made_on) == 2  # one per frame kept, none for the ten and more dropped
    assert threading.get_ident() not in made_on  # this test runs on the event loop
    assert h.frames[-1][1].luma.shape == (48, 64)


class HangsInOpen(CameraInput):
    """A camera whose driver hangs in ``open`` the first ``hangs`` times (a wedged V4L2 device)."""

    Camera: ClassVar[type[CameraOptions] | None] = None
    hangs: ClassVar[int] = 0

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.open_timeout = 0.2
        self.abandon_after = 0.1
        self.backoff_base = 0.05
        self.opens = 0
        self.never = threading.Event()  # set only at teardown, to let the leaked threads go

    @classmethod
    def accepts(cls, source: str) -> bool:
        return source.startswith("test://")

    def open(self) -> None:
        self.opens += 1
        if self.opens <= self.hangs:
            self.never.wait()

    def read(self) -> RawFrame:
        time.sleep(0.01)
        return RawFrame(width=64, height=48, image=np.zeros((48, 64, 3), np.uint8))

    def close(self) -> None:
        pass


@dataclass
class Slot:
    """What ``camera_liveness`` reads of an orchestrator slot."""

    module: CameraInput
    camera_id: str = "cam"
    state: str = "running"


async def test_a_driver_hanging_in_open_wedges_the_camera_and_fails_the_watchdog(
    camera_input,  # noqa: F811
) -> None:
    HangsInOpen.hangs = 1_000_000
    h = await camera_input(HangsInOpen, "test://x", "hangsinopen")
    m = h.module
    try:
        await h.wait_state(("wedged",), timeout=10)
        metrics = m.metrics()
        assert metrics["camera_state"] == "wedged"
        assert metrics["threads_abandoned"] >= 3
        assert metrics["hangs_in_a_row"] >= 3
        assert m.health().state == "failed"
        (verdict,) = camera_liveness([Slot(m)], frame_deadline=30.0)
        assert not verdict.alive
        assert verdict.state == "wedged"
        assert verdict.reason.startswith("camera cam: driver hung in open() ")
        assert verdict.reason.endswith("times; restart needed")
        # it keeps retrying (it may recover) and stays wedged meanwhile
        opens = m.opens
        await until(lambda: m.opens > opens, what="another open()")  # the input's own count
        assert m.cam_state == "wedged"
    finally:
        m.never.set()


async def test_a_frame_after_the_hangs_resets_the_count_and_the_camera_is_alive(
    camera_input,  # noqa: F811
) -> None:
    HangsInOpen.hangs = 2
    with structlog.testing.capture_logs() as logs:
        h = await camera_input(HangsInOpen, "test://x", "hangsinopen", start=False)
        m = h.module
        m.wedged_after = 2
        await m.start()
        try:
            await h.wait_frames(3, timeout=10)
        finally:
            m.never.set()
    assert [e["hangs"] for e in logs if e["event"] == "camera_wedged"] == [2]
    metrics = m.metrics()
    assert metrics["camera_state"] == "streaming"
    assert metrics["threads_abandoned"] == 2
    assert metrics["hangs_in_a_row"] == 0
    assert m.health().state == "ok"
    (verdict,) = camera_liveness([Slot(m)], frame_deadline=30.0)
    assert verdict.alive
