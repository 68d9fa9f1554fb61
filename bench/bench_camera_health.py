"""Camera health: what it costs per frame, and what it raises on faults and on nuisances.

Cost, single-threaded on the 320-wide luma plane an input publishes:

* ``frame_us``: a frame the module does not analyse (all but ``sample_fps`` a second) when
  it is handed one (a replay): the module reads its clock and compares a timestamp;
* ``publish_us_*``: what publishing one live frame costs with nobody subscribed and with the
  module subscribed and resting between its samples (the difference is the module's cost
  per frame of a live camera);
* ``sample_ms``: one analysed frame (thumbnail, spread, frozen diff, structure cells);
* ``cpu_share_per_camera``: a 25 fps live camera analysed once a second;
* ``pipeline``: process CPU of 1000 frames of a live 100 fps camera through a real bus with
  the motion stage alone and with the motion stage plus camera health, runs interleaved, the
  least of 4 each (the difference is what the module adds: between samples of a live camera
  it rests, so a frame costs the bus a swap in its latest-wins slot).

Alerts: every fault replay (tests/support/health_replays.py) and every nuisance replay, the
lighting ones made there and the motion nuisances of bench_detector.py (branch, bird, cloud
shadow, plastic bag), replayed through the module with its default settings.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import footage, write_result

from spyoncino.core.bus import Bus, Message
from spyoncino.core.config import Layer, build_app_model, validate
from spyoncino.core.contracts import BoundedExecutor, ModuleContext
from spyoncino.modules.process.camera_health import Analyser, CameraHealth, Config
from spyoncino.modules.process.motion import MotionDetector
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Frame
from spyoncino.schemas.health import CameraHealthNotice
from tests.support.health_replays import FPS, MAKERS, lumas, replay

T0 = 1_750_000_000.0


def build(
    names: list[str], bus: Bus, executor: BoundedExecutor, health: dict[str, Any] | None = None
) -> list[Any]:
    registry: dict[str, Any] = {"motion": MotionDetector, "health": CameraHealth}
    for name, cls in registry.items():
        cls.name = name
    raw = {"cameras": {"cam": {"source": "cam.mp4"}}, "health": health or {}}
    app = validate(build_app_model(registry), [Layer("bench", raw)])
    mods = []
    for name in names:
        ctx = ModuleContext(bus=bus, executor=executor, app=app, instance=name)
        mods.append(registry[name](ctx))
    return mods


async def replay_run(
    frames: list[tuple[float, np.ndarray]], health: dict[str, Any] | None = None
) -> list[CameraHealthNotice]:
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(workers=1)
    got: list[CameraHealthNotice] = []

    async def rec(msg: Message[CameraHealthNotice]) -> None:
        got.append(msg.payload)

    bus.subscribe(topics.CAMERA_HEALTH.pattern(), rec, module="bench")
    (mod,) = build(["health"], bus, executor, health)
    clock = [0.0]
    mod.clock = lambda: clock[0]
    await mod.configure(mod.ctx.app)
    await mod.start()
    topic = topics.FRAME.at(camera="cam")
    for i, (t, luma) in enumerate(frames):
        clock[0] = t
        h, w = luma.shape
        await bus.publish(topic, Frame("cam", i, t, T0 + t, w, h, luma))
        await bus.wait_idle(topic)
    await bus.drain()
    await mod.stop()
    await bus.close()
    executor.shutdown()
    return got


def summary(notices: list[CameraHealthNotice]) -> list[dict[str, Any]]:
    return [
        {"condition": n.condition, "phase": n.phase, "at_s": round(n.at - T0, 1)} for n in notices
    ]


def detector_nuisances() -> dict[str, list[tuple[float, np.ndarray]]]:
    import bench_detector as bd

    imgs, names = bd.build_nuisances(footage())
    n = int(bd.NUISANCE_S * bd.FPS)
    out: dict[str, list[tuple[float, np.ndarray]]] = {}
    for k, name in enumerate(names):
        part = imgs[k * n : (k + 1) * n]
        out[name] = [(i / bd.FPS, bd.luma_of(img)) for i, img in enumerate(part)]
    return out


def cost() -> dict[str, Any]:
    frames = [luma for _, luma in lumas(replay("light_switch"))][:200]
    a = Analyser(Config())
    for luma in frames[:10]:
        a.analyse(luma, 0.0)
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for i, luma in enumerate(frames):
            a.analyse(luma, float(i))
        runs.append((time.perf_counter() - t0) / len(frames))
    sample_ms = statistics.median(runs) * 1000

    async def frame_cost() -> float:
        bus = Bus(status_interval=0)
        executor = BoundedExecutor(workers=1)
        (mod,) = build(["health"], bus, executor)
        await mod.configure(mod.ctx.app)
        await mod.start()
        luma = frames[0]
        h, w = luma.shape
        n = 20000
        msgs = [  # all within the first second: one analysed, the rest skipped
            Message("camera.cam.frame", Frame("cam", i, i * 1e-5, i * 1e-5, w, h, luma), 0.0)
            for i in range(n + 1)
        ]
        await mod._on_frame(msgs[0])
        t0 = time.process_time()
        for m in msgs[1:]:
            await mod._on_frame(m)
        per = (time.process_time() - t0) / n
        await mod.stop()
        await bus.close()
        executor.shutdown()
        return per * 1e6

    async def handoff_cost(with_module: bool) -> float:
        """CPU of one publish of a live frame: to nobody, or to the resting module."""
        bus = Bus(status_interval=0)
        executor = BoundedExecutor(workers=1)
        mods = build(["health"], bus, executor) if with_module else []
        for m in mods:
            await m.configure(m.ctx.app)
            await m.start()
        luma = frames[0]
        h, w = luma.shape
        topic = topics.FRAME.at(camera="cam")
        n = 5000
        t0 = time.process_time()
        for i in range(n):
            now = time.monotonic()
            await bus.publish(topic, Frame("cam", i, now, now, w, h, luma))
            await asyncio.sleep(0)  # the subscriber may run, as between a camera's frames
        per = (time.process_time() - t0) / n
        for m in mods:
            await m.stop()
        await bus.close()
        executor.shutdown()
        return per * 1e6

    frame_us = asyncio.run(frame_cost())
    alone = min(asyncio.run(handoff_cost(False)) for _ in range(3))
    resting = min(asyncio.run(handoff_cost(True)) for _ in range(3))
    fps = 25.0
    # one sample a second, and every live frame handed past the resting module
    share = (sample_ms / 1000) + max(0.0, resting - alone) * 1e-6 * fps
    return {
        "luma": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "sample_ms": round(sample_ms, 4),
        "frame_us": round(frame_us, 3),
        "publish_us_no_subscriber": round(alone, 2),
        "publish_us_to_resting_module": round(resting, 2),
        "camera_fps_assumed": fps,
        "cpu_share_per_camera": round(share, 6),
    }


PIPELINE_FRAMES = 1000
PIPELINE_RATE = 100.0  # frames per second of the live camera simulated


async def pipeline(names: list[str], frames: list[np.ndarray]) -> float:
    """Process CPU seconds of PIPELINE_FRAMES frames published like a live camera: paced,
    stamped on arrival, the consumers running between frames as they would."""
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(workers=1)
    mods = build(names, bus, executor)
    for m in mods:
        await m.configure(m.ctx.app)
        await m.start()
    topic = topics.FRAME.at(camera="cam")
    start = time.monotonic()
    t0 = time.process_time()
    for i in range(PIPELINE_FRAMES):
        luma = frames[i % len(frames)]
        h, w = luma.shape
        t = time.monotonic()
        await bus.publish(topic, Frame("cam", i, t, T0 + t, w, h, luma))
        await asyncio.sleep(max(0.0, start + (i + 1) / PIPELINE_RATE - time.monotonic()))
    await bus.drain()
    spent = time.process_time() - t0
    for m in mods:
        await m.stop()
    await bus.close()
    executor.shutdown()
    return spent


def main() -> None:
    result: dict[str, Any] = {"replay_fps": FPS, "cost": cost()}
    frames = [luma for _, luma in lumas(replay("light_switch"))][:250]
    runs: dict[str, list[float]] = {"motion": [], "motion+health": []}
    for _ in range(4):
        for key, names in (("motion", ["motion"]), ("motion+health", ["motion", "health"])):
            runs[key].append(asyncio.run(pipeline(names, frames)))
    base = min(runs["motion"])  # the least disturbed run of each
    both = min(runs["motion+health"])
    result["pipeline_cpu_s"] = {
        "frames": PIPELINE_FRAMES,
        "motion": round(base, 3),
        "motion_and_health": round(both, 3),
        "runs": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "added_per_frame_us": round((both - base) / PIPELINE_FRAMES * 1e6, 2),
        "added_share": round((both - base) / base, 4) if base else None,
    }
    faults = {}
    # the shifted replay lasts 140 s: the new view is accepted after 30 s instead of 600
    for name, section in (("black", {}), ("frozen", {}), ("shifted", {"scene_accept_s": 30})):
        faults[name] = summary(asyncio.run(replay_run(list(lumas(replay(name))), section)))
    result["faults"] = faults
    nuisances: dict[str, Any] = {}
    for name in MAKERS:
        if name in faults:
            continue
        seq = list(lumas(replay(name)))
        got = asyncio.run(replay_run(seq))
        nuisances[name] = {
            "seconds": round(len(seq) / FPS, 1),
            "alerts": len(got),
            "notices": summary(got),
        }
    for name, seq in detector_nuisances().items():
        got = asyncio.run(replay_run(seq))
        nuisances[f"bench_detector.{name}"] = {
            "seconds": round(len(seq) / 10.0, 1),
            "alerts": len(got),
            "notices": summary(got),
        }
    result["nuisances"] = nuisances
    result["targets"] = {
        "nuisance_alerts": sum(v["alerts"] for v in nuisances.values()),
        "nuisance_alerts_target": 0,
        "each_fault_one_alert_one_recovery": all(
            [n["phase"] for n in v] == ["alert", "recovered"] for v in faults.values()
        ),
    }
    write_result("camera_health", result)


if __name__ == "__main__":
    cv2.setNumThreads(1)
    main()
