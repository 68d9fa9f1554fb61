"""Motion detector cost per frame, single-threaded, on real footage at 1280x720 and 640x360.

Measured from the full-resolution luma (the Y plane a decoder hands over) to motion boxes:
the downscale to the 320-wide processing plane plus blur, background, diff, threshold,
dilate and contours. For reference the same frames go through the approach of a well-known
peer (resize luma to 100 rows, stretch contrast, running average, diff) as described in the
issue. Target: <= 0.35 ms per 1280x720 frame.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footage, write_result

from spyoncino.core.inputs import shrink_luma
from spyoncino.modules.process.motion import Config, MotionState


def lumas(path: Path, size: tuple[int, int], limit: int = 300) -> list[np.ndarray]:
    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= limit:
                break
            grey = f.to_ndarray(format="gray")
            out.append(cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR))
    return out


def ours(frames: list[np.ndarray]) -> tuple[float, int]:
    state = MotionState(Config())
    t0 = time.perf_counter()
    moving = 0
    for y in frames:
        res = state.process(shrink_luma(y, 320))
        moving += bool(res.boxes)
    return (time.perf_counter() - t0) / len(frames), moving


def peer(frames: list[np.ndarray]) -> float:
    """Resize to 100 rows, stretch contrast, running average, absdiff, threshold."""
    avg = None
    t0 = time.perf_counter()
    for y in frames:
        h, w = y.shape
        small = cv2.resize(y, (round(w * 100 / h), 100), interpolation=cv2.INTER_AREA)
        small = cv2.normalize(small, None, 0, 255, cv2.NORM_MINMAX)
        small = cv2.GaussianBlur(small, (5, 5), 0)
        if avg is None:
            avg = small.astype(np.float32)
            continue
        diff = cv2.absdiff(small, cv2.convertScaleAbs(avg))
        cv2.accumulateWeighted(small, avg, 0.05)
        _, th = cv2.threshold(diff, 25, 255, cv2.THRESH_BINARY)
        cv2.countNonZero(th)
    return (time.perf_counter() - t0) / len(frames)


def main() -> None:
    cv2.setNumThreads(1)
    clip = footage()
    results: dict[str, object] = {"clip": clip.name, "threads": 1}
    for w, h in ((1280, 720), (640, 360)):
        frames = lumas(clip, (w, h))
        best = min(ours(frames)[0] for _ in range(5))
        _, moving = ours(frames)
        results[f"ours_ms_per_frame_{w}x{h}"] = round(best * 1000, 4)
        results[f"ours_frames_with_motion_{w}x{h}"] = f"{moving}/{len(frames)}"
        results[f"peer_ms_per_frame_{w}x{h}"] = round(min(peer(frames) for _ in range(5)) * 1000, 4)
    results["target_ms_1280x720"] = 0.35
    results["meets_target"] = results["ours_ms_per_frame_1280x720"] <= 0.35  # type: ignore[operator]
    write_result("motion", results)


if __name__ == "__main__":
    main()
