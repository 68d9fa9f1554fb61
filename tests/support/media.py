"""Test footage at other sizes: the real clip scaled and re-encoded once, then cached.

A camera's main stream and its sub-stream are the same scene at two resolutions; these are made
from the shared footage (or the packaged cut of it) with libx264 (veryfast: CABAC and
deblocking on), a keyframe a second and no B-frames, like most cameras send. Cached in the
checkout's ignored ``.cache/`` so CI and repeated runs pay the encode once.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "test-media"


def scaled_h264(
    src: Path, width: int, height: int, seconds: float = 30.0, fmt: str = "mp4"
) -> Path:
    """``src``'s first ``seconds`` at ``width`` x ``height``, H.264 in MP4 (cached); ``fmt``
    ``h264``: an Annex B elementary stream instead (what a V4L2 camera hands over)."""
    import av
    import cv2

    out = CACHE / f"{src.stem}-{width}x{height}-{seconds:g}s-vf23.{fmt}"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp.{fmt}")
    with av.open(str(src)) as c, av.open(str(tmp), "w", format=fmt) as o:
        stream = c.streams.video[0]
        fps = stream.average_rate or Fraction(10)
        s = o.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = max(1, round(float(fps)))
        s.codec_context.max_b_frames = 0
        # veryfast keeps CABAC and deblocking, as camera encoders do (ultrafast drops both
        # and decodes for much less than a camera's stream)
        s.codec_context.options = {"preset": "veryfast", "crf": "23", "bf": "0"}
        for i, f in enumerate(c.decode(stream)):
            if i >= seconds * float(fps):
                break
            img = cv2.resize(f.to_ndarray(format="bgr24"), (width, height))
            vf = av.VideoFrame.from_ndarray(img, format="bgr24")
            vf.pts, vf.time_base = i, 1 / fps
            o.mux(s.encode(vf))
        o.mux(s.encode(None))
    tmp.replace(out)
    return out
