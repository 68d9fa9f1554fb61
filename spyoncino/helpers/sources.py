"""Camera sources as an owner names them: what this box can see, and one test frame.

``spyoncino setup`` and the status page's first-run page both list what ``doctor`` finds and
probe what the owner picks; the packaged sample (``spyoncino:sample.mp4``) resolves here too,
for the file input. Blocking: call from a worker thread, not the event loop.
"""

from __future__ import annotations

import contextlib
import glob
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from spyoncino.core.config import redact_url
from spyoncino.helpers.doctor import check_tcp

#: a file shipped in the package: ``spyoncino:sample.mp4``
BUILTIN_PREFIX = "spyoncino:"


def resolve(source: str) -> Path:
    """The file a file-camera source names (packaged, ``file://`` or a plain path)."""
    if source.startswith(BUILTIN_PREFIX):
        return Path(str(resources.files("spyoncino") / "data" / source[len(BUILTIN_PREFIX) :]))
    if source.startswith("file://"):
        return Path(source[len("file://") :])
    return Path(source)


@dataclass
class Choice:
    source: str
    label: str
    name: str


def found_cameras(video_glob: str = "/dev/video*") -> list[Choice]:
    """Cameras this box can see, by the names a config should use."""
    found: list[Choice] = []
    with contextlib.suppress(Exception):  # picamera2 absent or libcamera unhappy: no CSI
        from picamera2 import Picamera2

        for i, info in enumerate(Picamera2.global_camera_info()):
            num = info.get("Num", i)
            found.append(Choice(f"csi://{num}", f"Pi camera {info.get('Model', '?')}", "picam"))
    by_id = {os.path.realpath(p): p for p in sorted(glob.glob("/dev/v4l/by-id/*index0"))}
    for dev in sorted(glob.glob(video_glob)):
        stable = by_id.get(os.path.realpath(dev))
        if stable is None and by_id:
            continue  # a metadata or second node of a camera listed by its stable name
        label = Path(stable).name if stable else dev
        found.append(Choice(stable or dev, f"USB camera {label}", "usb"))
    return found


def grab_frame(source: str, out: Path, timeout_s: float = 10.0) -> str:
    """Open ``source``, decode one frame, write it to ``out``; a line saying what happened."""
    import cv2
    import numpy as np

    image: np.ndarray[Any, Any] | None = None
    if source.startswith("/dev/"):
        cap = cv2.VideoCapture(source, cv2.CAP_V4L2)
        try:
            ok, image = cap.read() if cap.isOpened() else (False, None)
        finally:
            cap.release()
        if not ok:
            return f"cannot read a frame from {source} (busy, unplugged or no permission)"
    elif source.startswith("csi://"):
        return "a Pi camera is checked when the service starts (picamera2 owns it)"
    else:
        import av

        if source.startswith(("rtsp://", "rtsps://")):
            reach = check_tcp(source, timeout_s)
            if not reach.startswith("reachable"):
                return f"{redact_url(source)} is {reach}"
        target = source if "://" in source else str(resolve(source))
        try:
            opts = {"rtsp_transport": "tcp"} if source.startswith("rtsp") else {}
            with av.open(target, options=opts, timeout=timeout_s) as container:
                frame = next(container.decode(video=0))
                image = frame.to_ndarray(format="bgr24")
        except (av.FFmpegError, OSError, StopIteration, IndexError) as e:
            return f"cannot decode {redact_url(source)}: {e}"
    assert image is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), image)
    h, w = image.shape[:2]
    return f"got a {w}x{h} frame; look at it: {out}"
