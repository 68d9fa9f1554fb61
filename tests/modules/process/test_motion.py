from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from spyoncino.modules.process.motion import Config, MotionCamera, MotionDetector, MotionState
from spyoncino.schemas.detections import MotionEvent
from spyoncino.schemas.frames import Frame
from spyoncino.testing import BusHarness, synthetic_frames
from tests.conftest import SAMPLE, decode_frames


def lumas(path: Path, limit: int | None = None, width: int = 320) -> list[np.ndarray]:
    out = []
    for img in decode_frames(path, limit):
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        h = round(grey.shape[0] * width / grey.shape[1])
        out.append(cv2.resize(grey, (width, h), interpolation=cv2.INTER_AREA))
    return out


def run(state: MotionState, planes: list[np.ndarray]) -> list[int]:
    return [len(state.process(p).boxes) for p in planes]


def test_people_walking_in_real_footage_are_motion(vtest: Path) -> None:
    planes = lumas(vtest, limit=200)
    counts = run(MotionState(Config()), planes)
    after_calibration = counts[10:]
    # pedestrians cross the whole clip: most frames show moving blobs
    assert sum(1 for c in after_calibration if c) / len(after_calibration) > 0.8


def test_sample_clip_has_motion_without_shared_assets() -> None:
    counts = run(MotionState(Config()), lumas(SAMPLE, limit=80))
    assert sum(1 for c in counts[10:] if c) > 50


def _static_clip(n: int = 120, sigma: float = 4.0) -> list[np.ndarray]:
    base = lumas(SAMPLE, limit=1)[0]
    rng = np.random.default_rng(1)
    return [
        np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8) for _ in range(n)
    ]


def test_static_scene_with_sensor_noise_is_not_motion() -> None:
    counts = run(MotionState(Config()), _static_clip())
    assert sum(counts) == 0


def test_sudden_global_brightness_change_recalibrates_instead_of_alerting() -> None:
    planes = _static_clip(60)
    brighter = [np.clip(p.astype(np.int16) + 60, 0, 255).astype(np.uint8) for p in planes[:30]]
    darker = [np.clip(p.astype(np.int16) - 50, 0, 255).astype(np.uint8) for p in planes[30:]]
    state = MotionState(Config())
    counts = run(state, planes + brighter + darker)
    assert sum(counts) == 0
    assert state.recalibrations >= 2


def test_mask_blanks_a_region() -> None:
    frames = list(synthetic_frames(count=20, width=640, height=360))
    unmasked = MotionState(Config())
    masked = MotionState(Config(), MotionCamera(masks=[[(0, 0), (1, 0), (1, 1), (0, 1)]]))
    assert sum(run(unmasked, [f.luma for f in frames])) > 0
    assert sum(run(masked, [f.luma for f in frames])) == 0


def test_mask_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        MotionCamera(masks=[[(0, 0), (2, 0), (1, 1)]])
    with pytest.raises(ValueError, match="at least 3 points"):
        MotionCamera(masks=[[(0, 0), (1, 1)]])
    with pytest.raises(ValueError, match="odd"):
        Config(blur=4)


async def test_module_publishes_boxes_in_full_frame_pixels(tmp_path: Path) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        rec = h.record("process.motion.detected")
        module = h.build(MotionDetector, {"cameras": {"syn": {"source": "x.mp4"}}}, name="motion")
        await module.configure(module.ctx.app)
        await module.start()
        frames = list(
            synthetic_frames("syn", width=1280, height=720, count=20, moving_box=(160, 240))
        )
        for f in frames:
            await h.bus.publish("camera.syn.frame", f)
            await h.bus.wait_idle("camera.syn.frame")
        await h.bus.drain(timeout=2)
        events: list[MotionEvent] = rec.payloads
        assert len(events) == 20  # every frame examined
        moving = [e for e in events if e.boxes]
        assert len(moving) >= 10
        last = moving[-1]
        frame = frames[last.seq]
        # the white box is 160x240 at the frame's scale, centred vertically
        x = int((1280 - 160) * last.seq / 19)
        box = max(last.boxes, key=lambda b: min(b.x2, x + 160) - max(b.x1, x))
        assert abs(box.y1 - 240) <= 16
        assert abs(box.y2 - 480) <= 16
        assert abs(box.x2 - (x + 160)) <= 16
        assert last.frame is frame
        assert last.frame_width == 1280
        assert module.metrics()["frames"] == 20


def _frames_for(cams: list[str], seq: int) -> list[Frame]:
    grey = np.full((90, 160), 100, np.uint8)
    return [Frame(c, seq, 100.0 + seq / 10, 1e9 + seq / 10, 160, 90, grey) for c in cams]


async def test_eight_cameras_each_get_their_share_of_motion_frames(tmp_path: Path) -> None:
    """One latest-wins slot for all cameras let the last publisher win: cam0 went blind.

    Rounds of one frame per camera, then the stage catches up: a fair stage examines every
    camera's newest frame each round. No wall clock: the bus decides, not timing.
    """
    cams = [f"cam{i}" for i in range(8)]
    async with BusHarness(storage_root=tmp_path) as h:
        rec = h.record("process.motion.detected")
        module = h.build(
            MotionDetector,
            {"cameras": {c: {"source": f"{c}.mp4"} for c in cams}},
            name="motion",
        )
        await module.configure(module.ctx.app)
        await module.start()
        rounds = 40
        for seq in range(rounds):
            for f in _frames_for(cams, seq):
                await h.bus.publish(f"camera.{f.camera_id}.frame", f)
            await h.bus.drain(timeout=5)
        per_cam = {c: sum(1 for e in rec.payloads if e.camera_id == c) for c in cams}
        share = rounds  # every camera published one frame per round
        assert all(abs(n - share) <= 0.2 * share for n in per_cam.values()), per_cam


async def test_a_camera_whose_frames_are_skipped_says_so(tmp_path: Path) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        module = h.build(MotionDetector, {"cameras": {"cam": {"source": "x.mp4"}}}, name="motion")
        await module.configure(module.ctx.app)
        await module.start()
        grey = np.full((90, 160), 100, np.uint8)

        def frame(seq: int) -> Frame:
            return Frame("cam", seq, 1.0 + seq / 10, 2.0, 160, 90, grey)

        await h.bus.publish("camera.cam.frame", frame(0))
        await h.bus.drain(timeout=5)
        for seq in range(1, 30):  # 29 frames at once: the stage can only take the newest
            await h.bus.publish("camera.cam.frame", frame(seq))
        await h.bus.drain(timeout=5)
        m = module.metrics()
        assert m["cam.cam.frames"] < 30
        assert m["cam.cam.frames"] + m["cam.cam.skipped"] == 30
        assert module.health().state == "ok"  # too few frames to judge yet
        for seq in range(30, 40):  # it keeps falling behind: one in three examined
            for s in range(3):
                await h.bus.publish("camera.cam.frame", frame(seq * 3 + s))
            await h.bus.drain(timeout=5)
        health = module.health()
        assert health.state == "degraded" and "cam" in health.detail and "skipped" in health.detail
        assert module.metrics()["cam.cam.fps"] < 5  # examined, on the frames' 10 fps clock
        for seq in range(120, 220):  # then at a pace it keeps up with
            await h.bus.publish("camera.cam.frame", frame(seq))
            await h.bus.drain(timeout=5)
        assert module.health().state == "ok"
        assert module.metrics()["cam.cam.fps"] == 10.0


async def test_a_small_plane_is_examined_without_a_trip_to_the_worker_pool(
    tmp_path: Path,
) -> None:
    """Idle cost (#20): handing the default 320-wide plane to the pool and back cost more CPU
    than examining it, on every frame of every camera. Larger planes still go to the pool."""
    async with BusHarness(storage_root=tmp_path) as h:
        module = h.build(MotionDetector, {"cameras": {"cam": {"source": "x.mp4"}}}, name="motion")
        await module.configure(module.ctx.app)
        await module.start()
        hops: list[object] = []
        real_run = module.ctx.executor.run

        async def counting_run(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
            hops.append(fn)
            return await real_run(fn, *args, **kwargs)

        module.ctx.executor.run = counting_run  # type: ignore[method-assign]
        small = np.full((180, 320), 100, np.uint8)
        for seq in range(10):
            await h.bus.publish(
                "camera.cam.frame", Frame("cam", seq, 1.0 + seq / 10, 2.0, 640, 360, small)
            )
            await h.bus.drain(timeout=5)
        assert module.metrics()["frames"] == 10
        assert hops == []
        big = np.full((720, 1280), 100, np.uint8)
        await h.bus.publish("camera.cam.frame", Frame("cam", 10, 3.0, 4.0, 1280, 720, big))
        await h.bus.drain(timeout=5)
        assert module.metrics()["frames"] == 11
        assert len(hops) == 1
