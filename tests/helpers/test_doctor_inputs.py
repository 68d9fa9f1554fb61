"""``spyoncino doctor``'s camera report: libcamera, /dev/video* formats, RTSP reachability."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from spyoncino.core.config import build_app_model
from spyoncino.helpers.doctor import format_summary, inputs_report, parse_formats
from spyoncino.modules.input.rtsp import RtspInput

V4L2_FORMATS = """\
ioctl: VIDIOC_ENUM_FMT
\tType: Video Capture

\t[0]: 'MJPG' (Motion-JPEG, compressed)
\t\tSize: Discrete 1920x1080
\t\t\tInterval: Discrete 0.033s (30.000 fps)
\t\t\tInterval: Discrete 0.067s (15.000 fps)
\t\tSize: Discrete 1280x720
\t\t\tInterval: Discrete 0.033s (30.000 fps)
\t[1]: 'YUYV' (YUYV 4:2:2)
\t\tSize: Discrete 640x480
\t\t\tInterval: Discrete 0.033s (30.000 fps)
\t\tSize: Discrete 1920x1080
\t\t\tInterval: Discrete 0.200s (5.000 fps)
"""
V4L2_INFO = "Driver Info:\n\tDriver name      : uvcvideo\n\tCard type        : HD Pro Webcam C920\n"


def test_parse_formats_keeps_the_best_fps_per_size() -> None:
    formats = parse_formats(V4L2_FORMATS)
    assert formats == {
        "MJPG": {"1920x1080": 30.0, "1280x720": 30.0},
        "YUYV": {"640x480": 30.0, "1920x1080": 5.0},
    }
    assert format_summary(formats) == "MJPG 1920x1080@30 1280x720@30; YUYV 1920x1080@5 640x480@30"


def test_report_lists_devices_and_checks_rtsp_without_leaking_credentials(tmp_path: Path) -> None:
    for n in (0, 1, 10):
        (tmp_path / f"video{n}").write_bytes(b"")

    def runner(argv: list[str]) -> str | None:
        dev = argv[2]
        if dev.endswith("video10"):  # a codec node: no capture formats
            return (
                "Driver Info:\n\tCard type        : bcm2835-codec-decode\n"
                if "--info" in argv
                else ""
            )
        return V4L2_INFO if "--info" in argv else V4L2_FORMATS

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    open_port = listener.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()

    model = build_app_model({"rtsp": RtspInput})
    app = model.model_validate(
        {
            "cameras": {
                "front": {
                    "source": f"rtsp://admin:Hunter2pw@127.0.0.1:{open_port}/main",
                    "rtsp": {"detect_url": f"rtsp://admin:Hunter2pw@127.0.0.1:{closed_port}/sub"},
                },
                "porch": {"source": "/dev/v4l/by-id/usb-Missing_Cam-video-index0"},
            }
        }
    )
    try:
        lines = inputs_report(app, video_glob=str(tmp_path / "video*"), run=runner)
    finally:
        listener.close()
    text = "\n".join(lines)
    assert "Hunter2pw" not in text
    assert "admin" not in text
    assert "v4l2: 3 device(s)" in text
    assert f"{tmp_path}/video0 [HD Pro Webcam C920]: MJPG 1920x1080@30 1280x720@30" in text
    assert "video10 [bcm2835-codec-decode]: no capture formats" in text
    assert text.index("video1 ") < text.index("video10")  # natural order
    assert f"rtsp://***@127.0.0.1:{open_port}/main reachable" in text
    assert f"rtsp://***@127.0.0.1:{closed_port}/sub unreachable: Connection refused" in text
    assert "usb-Missing_Cam-video-index0 NOT present (unplugged?)" in text
    assert "libcamera:" in text


def test_report_without_devices_or_cameras(tmp_path: Path) -> None:
    app = build_app_model({}).model_validate({})
    lines = inputs_report(app, video_glob=str(tmp_path / "video*"))
    assert "  v4l2: no /dev/video* devices" in lines
    assert "  no cameras configured" in lines


def test_a_picamera2_that_breaks_at_import_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pi OS's picamera2 with pip's numpy 2 fails at import with a ValueError, not ImportError
    (raspberrypi/picamera2#1088): doctor must say so and go on."""
    (tmp_path / "picamera2.py").write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    app = build_app_model({"rtsp": RtspInput})(cameras={})
    lines = inputs_report(app, video_glob=str(tmp_path / "video*"))
    libcamera = next(line for line in lines if "libcamera" in line)
    assert "picamera2 is installed but cannot be imported" in libcamera
    assert "binary incompatibility" in libcamera
