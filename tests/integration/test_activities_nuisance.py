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

from spyoncino.core.bus import Message
from spyoncino.schemas.events import EventNotice
from tests.support.lockstep import Lockstep

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
    raw = {
        "cameras": {"cam": {"source": "cam.mp4", "detector": {"max_fps": 5.0}}},
        "detector": {"trigger": "motion", "crop": True},
    }
    notices: list[EventNotice] = []

    async def on_event(msg: Message[Any]) -> None:
        notices.append(msg.payload)

    # the frames' clock moves 0.1 s with each frame, as a live 10 fps camera's would, so the
    # detector paces itself as it does live (5 fps) however slow this machine is
    run = Lockstep(raw, fps=FPS)
    run.bus.subscribe("event.#", on_event, policy="block", maxsize=1000, module="test")
    async with run:
        for i, (img, luma) in enumerate(replay):
            await run.step(i, img, luma)
        assert await run.finish()  # drained before and after the stop
    last = {n.event_id: n for n in notices}
    print(
        f"nuisances {names}: {len(last)} activities,",
        [(n.severity, n.labels, len(n.objects)) for n in last.values()],
    )
    assert [n for n in notices if n.severity == "alert"] == []
