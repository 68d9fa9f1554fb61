"""The camera-input base: hung reads, permanent failures, read-ahead with drop counting."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, ClassVar

import numpy as np

from spyoncino.core.contracts import CameraOptions
from spyoncino.core.inputs import CameraInput, RawFrame, SourceFatal
from tests.modules.input.conftest import camera_input  # noqa: F401 - the fixture


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


async def test_a_fatal_error_fails_the_camera_and_stops_retrying(camera_input) -> None:  # noqa: F811
    Scripted.script = ["ok", "fatal"]
    h = await camera_input(Scripted, "test://x", "scripted")
    await h.wait_state(("failed",), timeout=5)
    await asyncio.sleep(0.3)
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
    await asyncio.sleep(0.1)
    assert h.module.frames_dropped >= 10
    assert h.module.metrics()["frames_dropped"] == h.module.frames_dropped
