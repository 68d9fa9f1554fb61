"""CPU per frame of a USB camera's two paths, 1280x720, on the footage (no camera needed).

What ``format: auto`` chooses between, per frame the camera delivers:

* ``h264``: the camera's H.264 decoded (one thread) and the luma plane taken from the Y plane,
  as ``UsbInput`` does for a camera that offers H.264; its packets go to the clip ring as they
  are, so clips cost nothing more;
* ``mjpeg_luma``: the MJPEG path's reduced-size greyscale decode alone (``jpeg_frame``);
* ``mjpeg_with_preroll``: the same plus what the clip recorder's pre-roll ring does for every
  sampled frame of a camera without packets (default ``clip.fps`` 10: every frame of a 10 fps
  camera): the colour decode, the resize to 640 px and the I420 conversion. This is the MJPEG
  camera's cost with the default config (the clip module on).

The H.264 is the shared footage scaled (tests/support/media.py: libx264 veryfast crf 23, GOP
1 s); the JPEGs are its frames at quality 85. Process CPU time, ``cv2.setNumThreads(1)`` (the
app's camera threads each do one picture at a time), 3 interleaved rounds of 200 frames.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, footage, write_result

FRAMES = 200


def h264_ms(src: Path) -> float:
    import av

    from spyoncino.helpers.camera import av_frame_to_raw

    with av.open(str(src)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        t0, n = time.process_time(), 0
        for packet in c.demux(s):
            for f in packet.decode():
                av_frame_to_raw(f, 320)
                n += 1
            if n >= FRAMES:
                break
    return (time.process_time() - t0) * 1000 / n


def mjpeg_ms(jpegs: list[Any], preroll: bool) -> float:
    import cv2

    from spyoncino.modules.input.usb import jpeg_frame

    t0 = time.process_time()
    for j in jpegs:
        raw = jpeg_frame(j, 1280, 720, 320)
        assert raw is not None
        if preroll:  # spyoncino.modules.event.clip's _ingest for a sampled frame
            img = cv2.resize(raw.decode(), (640, 360), interpolation=cv2.INTER_AREA)
            cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420)
    return (time.process_time() - t0) * 1000 / len(jpegs)


def main() -> int:
    import av
    import cv2

    sys.path.insert(0, str(REPO))
    from tests.support.media import scaled_h264

    cv2.setNumThreads(1)
    clip = footage()
    src = scaled_h264(clip, 1280, 720)
    jpegs = []
    with av.open(str(src)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= FRAMES:
                break
            ok, j = cv2.imencode(
                ".jpg", f.to_ndarray(format="bgr24"), [cv2.IMWRITE_JPEG_QUALITY, 85]
            )
            assert ok
            jpegs.append(j.reshape(1, -1))
    runs: dict[str, list[float]] = {"h264": [], "mjpeg_luma": [], "mjpeg_with_preroll": []}
    for _ in range(3):
        runs["h264"].append(round(h264_ms(src), 3))
        runs["mjpeg_luma"].append(round(mjpeg_ms(jpegs, False), 3))
        runs["mjpeg_with_preroll"].append(round(mjpeg_ms(jpegs, True), 3))
    med = {k: sorted(v)[1] for k, v in runs.items()}
    write_result(
        "usb",
        {
            "clip": clip.name,
            "size": "1280x720",
            "frames_per_run": FRAMES,
            "rounds": 3,
            "note": (
                "ms_per_frame: process CPU per frame, cv2.setNumThreads(1), median of 3 "
                "interleaved rounds. h264: decode + luma (UsbInput's H.264 path; clips remuxed "
                "from the packets). mjpeg_luma: reduced greyscale JPEG decode. "
                "mjpeg_with_preroll: plus the clip pre-roll's colour decode, resize to 640 px "
                "and I420 conversion, which the clip recorder does for every sampled frame of "
                "a camera without packets (default clip.fps 10). No real camera: the H.264 is "
                "x264's, a UVC camera's encoder may give other bitrates."
            ),
            **{k: {"ms_per_frame": med[k], "ms_per_frame_runs": v} for k, v in runs.items()},
            "h264_vs_mjpeg_with_preroll": round(med["h264"] / med["mjpeg_with_preroll"], 3),
            "h264_vs_mjpeg_luma": round(med["h264"] / med["mjpeg_luma"], 3),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
