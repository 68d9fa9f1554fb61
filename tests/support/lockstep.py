"""The real motion stage, detector and tracker fed frame by frame on a fake clock.

Each frame is waited out before the next (the bus idle, the detector settled) and the clock
moves ``1 / fps`` per frame, as a live camera's would: the detector paces itself as it does
live however slow the machine is. Used by the nuisance-replay test and by
``bench/bench_alert_latency.py --lockstep``::

    run = Lockstep({"cameras": {"cam": {"source": "cam.mp4"}}})
    run.bus.subscribe("event.#", on_event, policy="block", maxsize=1000, module="test")
    async with run:  # the modules start
        for seq, (img, luma) in enumerate(frames):
            await run.step(seq, img, luma)
        assert await run.finish()
"""

from __future__ import annotations

from typing import Any

from spyoncino.modules.event.tracker import EventTracker
from spyoncino.modules.process.detector import ObjectDetector
from spyoncino.modules.process.motion import MotionDetector
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Frame
from spyoncino.testing import BusHarness, FakeClock

REGISTRY: dict[str, Any] = {
    "motion": MotionDetector,
    "detector": ObjectDetector,
    "tracker": EventTracker,
}


class Lockstep(BusHarness):
    """A :class:`BusHarness` on a ``FakeClock`` whose modules are the three stages.

    ``raw``: the config (one camera, ``cam``); ``wait_also``: topics whose subscribers must
    be idle too before the next frame (a recorder of events that reads the frame number)."""

    def __init__(
        self, raw: dict[str, Any], *, fps: float = 10.0, wait_also: tuple[str, ...] = ()
    ) -> None:
        self.fake_clock = FakeClock(mono=0.0)
        super().__init__(clock=self.fake_clock)
        self.raw = raw
        self.fps = fps
        self.wait_also = wait_also

    async def __aenter__(self) -> Lockstep:
        for name, cls in REGISTRY.items():
            m = self.build(cls, self.raw, name=name, others=REGISTRY)
            await m.configure(m.ctx.app)
            await m.start()
        return self

    @property
    def detector(self) -> ObjectDetector:
        return next(m for m in self.modules if isinstance(m, ObjectDetector))

    async def step(self, seq: int, img: Any, luma: Any) -> None:
        """One frame through motion, the detector and the tracker; then the clock moves on."""
        clock = self.fake_clock
        h, w = img.shape[:2]
        frame = Frame("cam", seq, clock.monotonic(), clock.time(), w, h, luma, _image=img)
        await self.bus.publish(topics.FRAME.at(camera="cam"), frame)
        await self.bus.wait_idle(topics.FRAME.at(camera="cam"), topics.MOTION.name)
        await self.detector.settled()
        await self.bus.wait_idle(topics.OBJECTS.name, *self.wait_also)
        clock.advance(1 / self.fps)

    async def finish(self, timeout: float = 120.0) -> bool:
        """Drain, stop the modules (the orchestrator's order, last first), drain again: whether
        the bus went idle both times (``timeout`` is an upper bound for a loaded machine)."""
        idle = await self.bus.drain(timeout=timeout)
        while self.modules:
            await self.modules.pop().stop()
        return await self.bus.drain(timeout=timeout) and idle
