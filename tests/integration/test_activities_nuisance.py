"""The bundled nuisance replay (``bench/bench_detector.py``: a swaying branch, a bird, a cloud's
shadow and a plastic bag over the sample clip's empty street, 15 s each) through the real
motion stage, the packaged default detector (motion-gated crops, as shipped) and the tracker:
no activity may reach ``alert``, so nothing would be pushed. Detections are allowed (they are
stored, not sent), and counted in the output.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

from spyoncino.core.bus import Bus, Message
from spyoncino.core.config import Layer, build_app_model, validate
from spyoncino.core.contracts import BoundedExecutor, ModuleContext
from spyoncino.modules.event.tracker import EventTracker
from spyoncino.modules.process.detector import ObjectDetector
from spyoncino.modules.process.motion import MotionDetector
from spyoncino.schemas import topics
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Frame
from spyoncino.testing import FakeClock

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "spyoncino" / "data" / "sample.mp4"
FPS = 10.0


def nuisance_frames() -> tuple[list[Any], list[str]]:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        bench = importlib.import_module("bench_detector")
    finally:
        sys.path.remove(str(REPO / "bench"))
    frames, names = bench.build_nuisances(SAMPLE)
    return [(img, bench.luma_of(img)) for img in frames], names


@pytest.mark.slow
async def test_no_activity_of_the_nuisance_replay_becomes_an_alert() -> None:
    replay, names = await asyncio.to_thread(nuisance_frames)
    registry: dict[str, Any] = {
        "motion": MotionDetector,
        "detector": ObjectDetector,
        "tracker": EventTracker,
    }
    for name, cls in registry.items():
        cls.name = name
    raw = {
        "cameras": {"cam": {"source": "cam.mp4", "detector": {"max_fps": 5.0}}},
        "detector": {"trigger": "motion", "crop": True},
    }
    app = validate(build_app_model(registry), [Layer("test", raw)])
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(workers=2)
    notices: list[EventNotice] = []

    async def on_event(msg: Message[Any]) -> None:
        notices.append(msg.payload)

    bus.subscribe("event.#", on_event, policy="block", maxsize=1000, module="test")
    # the frames' clock: it moves 0.1 s with each frame, as a live 10 fps camera's would, so
    # the detector paces itself as it does live (5 fps) however slow this machine is
    clock = FakeClock(mono=0.0)
    mods: list[Any] = []
    try:
        for name, cls in registry.items():
            ctx = ModuleContext(bus=bus, executor=executor, app=app, instance=name, clock=clock)
            m = cls(ctx)
            await m.configure(app)
            await m.start()
            mods.append(m)
        detector = next(m for m in mods if isinstance(m, ObjectDetector))
        for i, (img, luma) in enumerate(replay):
            h, w = img.shape[:2]
            frame = Frame("cam", i, clock.monotonic(), clock.time(), w, h, luma, _image=img)
            await bus.publish(topics.FRAME.at(camera="cam"), frame)
            await bus.wait_idle(topics.FRAME.at(camera="cam"), topics.MOTION.name)
            await detector.settled()
            await bus.wait_idle(topics.OBJECTS.name)
            clock.advance(1 / FPS)
        assert await bus.drain(timeout=120.0)  # an upper bound for a loaded machine only
        for m in reversed(mods):
            await m.stop()
            mods.remove(m)
        assert await bus.drain(timeout=120.0)  # an upper bound for a loaded machine only
    finally:
        for m in mods:
            await m.stop()
        await bus.close()
        executor.shutdown()
    last = {n.event_id: n for n in notices}
    print(
        f"nuisances {names}: {len(last)} activities,",
        [(n.severity, n.labels, len(n.objects)) for n in last.values()],
    )
    assert [n for n in notices if n.severity == "alert"] == []
