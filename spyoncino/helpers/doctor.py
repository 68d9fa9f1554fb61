"""``spyoncino doctor``: what cameras this box can see, as plain lines for a terminal.

Three sources of truth, each optional so the report works on any machine:

* libcamera cameras (Pi camera modules on the CSI connectors), when picamera2 is importable;
* ``/dev/video*`` nodes with their capture formats (``v4l2-ctl`` when installed, else what
  OpenCV's V4L2 backend opens them with); ISP and codec nodes show as such;
* every RTSP URL in the configuration, checked with a plain TCP connect (no RTSP handshake, so
  no credentials are sent) and printed with its credentials redacted.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from spyoncino.core.config import AppConfig, redact_url

RTSP_PORTS = {"rtsp": 554, "rtsps": 322}
_FMT = re.compile(r"^\s*\[\d+\]:\s*'(?P<fourcc>[^']+)'")
_SIZE = re.compile(r"Size:\s*\w+\s+(?P<size>\d+x\d+)")
_FPS = re.compile(r"\((?P<fps>[\d.]+) fps\)")

Runner = Callable[[list[str]], str | None]


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def inputs_report(
    app: AppConfig,
    *,
    video_glob: str = "/dev/video*",
    run: Runner | None = None,
    connect_timeout: float = 2.0,
) -> list[str]:
    """Lines describing the cameras this box can see and the configured network cameras."""
    lines = ["cameras:"]
    lines += [f"  {line}" for line in _libcamera_lines()]
    lines += [f"  {line}" for line in _v4l2_lines(video_glob, run)]
    lines += [f"  {line}" for line in _configured_lines(app, connect_timeout)]
    return lines


# -- libcamera ---------------------------------------------------------------------------------
def _libcamera_lines() -> list[str]:
    try:
        from picamera2 import Picamera2
    except ImportError:
        return [
            "libcamera: picamera2 not installed (Pi camera modules need "
            "`sudo apt install python3-picamera2` and a venv with --system-site-packages)"
        ]
    except Exception as e:  # e.g. apt's simplejpeg built for numpy 1 under pip's numpy 2
        return [
            f"libcamera: picamera2 is installed but cannot be imported ({type(e).__name__}: "
            f"{e}); on Raspberry Pi OS the venv must keep numpy below 2 for apt's "
            "picamera2 (docs/install.md, 'CSI cameras and numpy')"
        ]
    try:
        infos: list[dict[str, Any]] = list(Picamera2.global_camera_info())
    except Exception as e:
        return [f"libcamera: cannot list cameras: {e}"]
    if not infos:
        return ["libcamera: no camera detected (ribbon cable seated? camera enabled?)"]
    out = [f"libcamera: {len(infos)} camera(s)"]
    for i, info in enumerate(infos):
        num = info.get("Num", i)
        extra = f", mounted rotated {info['Rotation']}" if info.get("Rotation") else ""
        out.append(f"  csi://{num}: {info.get('Model', '?')}{extra}")
    return out


# -- V4L2 --------------------------------------------------------------------------------------
def _by_id_names() -> dict[str, str]:
    """``/dev/videoN`` -> its stable ``/dev/v4l/by-id/...`` name, when udev made one."""
    names: dict[str, str] = {}
    for link in sorted(glob.glob("/dev/v4l/by-id/*")):
        names.setdefault(os.path.realpath(link), link)
    return names


def _v4l2_lines(video_glob: str, run: Runner | None) -> list[str]:
    devices = sorted(glob.glob(video_glob), key=_natural)
    if not devices:
        return ["v4l2: no /dev/video* devices"]
    runner = run if run is not None else (_run if shutil.which("v4l2-ctl") else None)
    by_id = _by_id_names()
    out = [
        f"v4l2: {len(devices)} device(s)" + ("" if runner else " (install v4l-utils for details)")
    ]
    for dev in devices:
        name = f"{dev} ({by_id[os.path.realpath(dev)]})" if os.path.realpath(dev) in by_id else dev
        if runner is not None:
            info = runner(["v4l2-ctl", "-d", dev, "--info"]) or ""
            card = _field(info, "Card type")
            formats = parse_formats(runner(["v4l2-ctl", "-d", dev, "--list-formats-ext"]) or "")
            label = f" [{card}]" if card else ""
            if formats:
                out.append(f"  {name}{label}: {format_summary(formats)}")
            else:
                out.append(f"  {name}{label}: no capture formats (codec or ISP node)")
        else:
            out.append(f"  {name}: {_cv2_probe(dev)}")
    return out


def _natural(path: str) -> tuple[str, int]:
    m = re.search(r"(\d+)$", path)
    return (path[: m.start()] if m else path, int(m.group(1)) if m else -1)


def _field(text: str, key: str) -> str:
    for line in text.splitlines():
        if line.strip().startswith(key):
            return line.split(":", 1)[1].strip()
    return ""


def parse_formats(text: str) -> dict[str, dict[str, float]]:
    """``v4l2-ctl --list-formats-ext`` -> {fourcc: {"WxH": best fps}} (capture formats only)."""
    formats: dict[str, dict[str, float]] = {}
    fourcc: str | None = None
    size: str | None = None
    for line in text.splitlines():
        if m := _FMT.match(line):
            fourcc = m.group("fourcc")
            formats.setdefault(fourcc, {})
            size = None
        elif fourcc and (m := _SIZE.search(line)):
            size = m.group("size")
            formats[fourcc].setdefault(size, 0.0)
        elif fourcc and size and (m := _FPS.search(line)):
            formats[fourcc][size] = max(formats[fourcc][size], float(m.group("fps")))
    return formats


def format_summary(formats: dict[str, dict[str, float]], limit: int = 4) -> str:
    """``MJPG 1920x1080@30 1280x720@30 ...; YUYV 640x480@30`` — the largest sizes first."""
    parts = []
    for fourcc, sizes in formats.items():
        ordered = sorted(sizes.items(), key=lambda kv: _area(kv[0]), reverse=True)
        shown = " ".join(f"{s}@{fps:g}" if fps else s for s, fps in ordered[:limit])
        more = f" (+{len(ordered) - limit})" if len(ordered) > limit else ""
        parts.append(f"{fourcc} {shown}{more}".rstrip())
    return "; ".join(parts)


def _area(size: str) -> int:
    w, _, h = size.partition("x")
    return int(w) * int(h)


def _cv2_probe(dev: str) -> str:
    try:
        import cv2
    except ImportError:
        return "present (OpenCV missing, cannot probe)"
    cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
    try:
        if not cap.isOpened():
            return "cannot open (busy, no permission, or not a capture node)"
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
        fourcc = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00") or "?"
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = cap.get(cv2.CAP_PROP_FPS)
        return f"opens as {fourcc} {w}x{h}@{fps:g} (default mode)"
    finally:
        cap.release()


# -- what the configuration names --------------------------------------------------------------
def _urls(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        if data.strip().lower().startswith(("rtsp://", "rtsps://")):
            yield data.strip()
    elif isinstance(data, dict):
        for value in data.values():
            yield from _urls(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from _urls(value)


def check_tcp(url: str, timeout: float) -> str:
    """``reachable (3 ms)`` or ``unreachable: <reason>`` for the URL's host and port."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return "invalid URL (no host)"
    try:
        port = parts.port or RTSP_PORTS.get(parts.scheme.lower(), 554)
    except ValueError:
        return "invalid URL (bad port)"
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        return f"unreachable: no answer in {timeout:g}s"
    except OSError as e:
        return f"unreachable: {e.strerror or type(e).__name__}"
    return f"reachable ({(time.monotonic() - t0) * 1000:.0f} ms)"


def _configured_lines(app: AppConfig, timeout: float) -> list[str]:
    out: list[str] = []
    for cid, cam in sorted(app.cameras.items()):
        state = "" if cam.enabled else " (disabled)"
        source = cam.source.strip()
        if source.startswith("/dev/"):
            if os.path.exists(source):
                out.append(f"camera {cid}{state}: {source} present -> {os.path.realpath(source)}")
            else:
                out.append(f"camera {cid}{state}: {source} NOT present (unplugged?)")
        elif source.startswith("csi://"):
            out.append(f"camera {cid}{state}: {source} (see libcamera above)")
        elif "://" not in source or source.startswith("file://"):
            out.append(f"camera {cid}{state}: {source}")
        seen: set[str] = set()
        for url in _urls(cam.model_dump(mode="python")):
            if url in seen:
                continue
            seen.add(url)
            out.append(f"camera {cid}{state}: {redact_url(url)} {check_tcp(url, timeout)}")
    if not app.cameras:
        out.append("no cameras configured")
    return out
