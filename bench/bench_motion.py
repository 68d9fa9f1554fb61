"""Motion detector cost per frame, single-threaded, on real footage at 1280x720 and 640x360.

Ours is measured from the full-resolution luma (the Y plane a decoder hands over) to motion
boxes: the downscale to the 320-wide processing plane plus blur, background, diff,
threshold, dilate and contours.

Compared, on the same frames, in the same process, rounds interleaved, against:

* **Frigate's real ``ImprovedMotionDetector``** when ``SPYONCINO_FRIGATE_SRC`` points at a
  Frigate checkout (loaded from it at run time, never copied here: see ``_frigate.py``),
  with Frigate's default motion config, fed the same luma plane as Frigate feeds it;
* **OpenCV's MOG2** background subtractor (``createBackgroundSubtractorMOG2``, defaults,
  shadows off) on the same 320-wide plane ours uses -- always, as the library baseline.

No hand-written imitation of another project is measured. Figures are CPU time
(``time.process_time``, one thread: ``cv2.setNumThreads(1)``) per frame over 300 frames; each
of ``--rounds`` rounds runs every detector once, in turn; the median and the spread are
reported. Frames with motion are counted for each, as a sanity check that all of them see the
people walking. The machine is shared (2 cores, other jobs).

Target: ours <= 0.35 ms per 1280x720 frame.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _frigate
from _common import footage, write_result

from spyoncino.helpers.camera import shrink_luma
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
    moving = 0
    t0 = time.process_time()
    for y in frames:
        res = state.process(shrink_luma(y, 320))
        moving += bool(res.boxes)
    return (time.process_time() - t0) / len(frames), moving


def mog2(frames: list[np.ndarray]) -> tuple[float, int]:
    sub = cv2.createBackgroundSubtractorMOG2(detectShadows=False)
    moving = 0
    t0 = time.process_time()
    for y in frames:
        fg = sub.apply(shrink_luma(y, 320))
        moving += cv2.countNonZero(fg) > 0.001 * fg.size
    return (time.process_time() - t0) / len(frames), moving


def frigate(frames: list[np.ndarray]) -> tuple[float, int]:
    h, w = frames[0].shape
    det = _frigate.detector((h, w), 10)
    if isinstance(det, str):
        raise RuntimeError(det)
    moving = 0
    t0 = time.process_time()
    for y in frames:
        moving += bool(det.detect(y))
    return (time.process_time() - t0) / len(frames), moving


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    clip = footage()
    available = _frigate.load()
    peers: dict[str, Callable[[list[np.ndarray]], tuple[float, int]]] = {"mog2": mog2}
    if not isinstance(available, str):
        peers["frigate"] = frigate
    results: dict[str, Any] = {
        "clip": clip.name,
        "threads": 1,
        "rounds": args.rounds,
        "frigate": available
        if isinstance(available, str)
        else f"ImprovedMotionDetector loaded from {_frigate.ENV}",
        "note": "CPU ms per frame (process_time), median and all rounds; rounds interleave the "
        "detectors. The machine was shared with other heavy jobs.",
    }
    for w, h in ((1280, 720), (640, 360)):
        frames = lumas(clip, (w, h))
        runs: dict[str, list[float]] = {"ours": [], **{k: [] for k in peers}}
        moving: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, fn in {"ours": ours, **peers}.items():
                ms, moving[name] = fn(frames)
                runs[name].append(round(ms * 1000, 4))
        res: dict[str, Any] = {}
        for name, vals in runs.items():
            res[name] = {
                "ms_per_frame_median": round(statistics.median(vals), 4),
                "ms_per_frame_runs": vals,
                "frames_with_motion": f"{moving[name]}/{len(frames)}",
            }
        ours_ms = res["ours"]["ms_per_frame_median"]
        for name in peers:
            res[f"{name}_vs_ours"] = round(res[name]["ms_per_frame_median"] / ours_ms, 2)
        results[f"{w}x{h}"] = res
    results["target_ms_1280x720"] = 0.35
    results["meets_target"] = results["1280x720"]["ours"]["ms_per_frame_median"] <= 0.35
    write_result("motion", results)


if __name__ == "__main__":
    main()
