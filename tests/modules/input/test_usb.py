"""USB (V4L2) input against a fake with cv2.VideoCapture's shape (no /dev/video* here)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from spyoncino.modules.input import usb
from spyoncino.modules.input.usb import UsbInput, fourcc_code, fourcc_text
from tests.support.wait import until


class FakeVideoCapture:
    """The subset of ``cv2.VideoCapture`` (V4L2 backend) the adapter uses, over a fake node.

    Like the real backend: FOURCC requests the driver does not support are ignored, with
    ``CAP_PROP_CONVERT_RGB`` off an MJPEG stream is returned as a 1xN byte array, and a read
    on a vanished device fails.
    """

    def __init__(self, path: str, formats: tuple[str, ...], size: tuple[int, int]) -> None:
        self.path = path
        self.formats = formats
        self.size = size
        self.opened = os.path.exists(path)
        self.fourcc = formats[-1]
        self.convert_rgb = True
        self.fps = 30.0
        self.n = 0
        self.released = False
        self.sets: list[tuple[int, float]] = []

    def isOpened(self) -> bool:
        return self.opened

    def set(self, prop: int, value: float) -> bool:
        self.sets.append((prop, value))
        if prop == cv2.CAP_PROP_FOURCC:
            if fourcc_text(value) not in self.formats:
                return False
            self.fourcc = fourcc_text(value)
        elif prop == cv2.CAP_PROP_CONVERT_RGB:
            self.convert_rgb = bool(value)
        elif prop == cv2.CAP_PROP_FPS:
            self.fps = min(float(value), 30.0)
        return True

    def get(self, prop: int) -> float:
        return {
            cv2.CAP_PROP_FOURCC: float(fourcc_code(self.fourcc)),
            cv2.CAP_PROP_FRAME_WIDTH: float(self.size[0]),
            cv2.CAP_PROP_FRAME_HEIGHT: float(self.size[1]),
            cv2.CAP_PROP_FPS: self.fps,
        }.get(prop, 0.0)

    def image(self) -> np.ndarray:
        w, h = self.size
        img = np.full((h, w, 3), 40, np.uint8)
        x = (self.n * 16) % (w - 100)
        img[100:200, x : x + 100] = (0, 0, 255)  # a red square moving right
        return img

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(0.02)  # ~50 fps, like a driver waiting for the sensor
        if self.released or not os.path.exists(self.path):
            return False, None
        self.n += 1
        img = self.image()
        if self.fourcc == "MJPG" and not self.convert_rgb:
            ok, jpeg = cv2.imencode(".jpg", img)
            assert ok
            return True, jpeg.reshape(1, -1)
        return True, img

    def release(self) -> None:
        self.released = True


@pytest.fixture
def fake_v4l2(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the hardware boundary; returns the knobs and the captures opened."""
    state: dict[str, Any] = {"formats": ("YUYV", "MJPG"), "size": (1280, 720), "opened": []}

    def open_capture(path: str) -> FakeVideoCapture:
        cap = FakeVideoCapture(path, state["formats"], state["size"])
        state["opened"].append(cap)
        return cap

    monkeypatch.setattr(usb, "open_capture", open_capture)
    return state


@pytest.fixture
def device(tmp_path: Path) -> Path:
    node = tmp_path / "video0"
    node.write_bytes(b"")
    return node


def test_accepts_device_paths_only() -> None:
    assert UsbInput.accepts("/dev/video0")
    assert UsbInput.accepts("/dev/v4l/by-id/usb-046d_C920-video-index0")
    assert not UsbInput.accepts("rtsp://cam/x")
    assert not UsbInput.accepts("csi://0")
    assert not UsbInput.accepts("clip.mp4")


async def test_mjpeg_is_negotiated_and_decoded_lazily(fake_v4l2, device, camera_input) -> None:
    h = await camera_input(UsbInput, str(device), "usb", options={"width": 1280, "height": 720})
    await h.wait_frames(5, timeout=10)
    cap = fake_v4l2["opened"][0]
    assert cap.fourcc == "MJPG"
    assert (cv2.CAP_PROP_CONVERT_RGB, 0) in cap.sets
    frame = h.frames[-1][1]
    assert (frame.width, frame.height) == (1280, 720)
    assert frame.luma.shape == (180, 320)  # a 1/4-scale greyscale JPEG decode
    assert frame._image is None  # nothing decoded in colour yet
    img = frame.image
    assert img.shape == (720, 1280, 3)
    assert img[150, :, 2].max() > 200  # the red square survived the JPEG round trip
    m = h.module.metrics()
    assert m["format"] == "MJPG"
    assert m["camera_state"] == "streaming"
    assert float(m["fps"]) > 10


async def test_yuyv_only_camera_falls_back_in_auto(fake_v4l2, device, camera_input) -> None:
    fake_v4l2["formats"] = ("YUYV",)
    fake_v4l2["size"] = (640, 480)
    h = await camera_input(UsbInput, str(device), "usb")
    await h.wait_frames(3, timeout=10)
    frame = h.frames[-1][1]
    assert frame.has_image
    assert frame._image is not None
    assert frame.luma.shape == (240, 320)
    assert h.module.metrics()["format"] == "YUYV"


async def test_insisting_on_mjpeg_reports_a_clear_error(fake_v4l2, device, camera_input) -> None:
    fake_v4l2["formats"] = ("YUYV",)
    h = await camera_input(UsbInput, str(device), "usb", options={"format": "mjpeg"})
    await h.wait_state(("reconnecting",), timeout=5)
    assert "does not offer MJPEG" in (h.module.health().last_error or "")
    assert all(c.released for c in fake_v4l2["opened"])


async def test_unplug_degrades_retries_and_recovers_on_replug(
    fake_v4l2, device, camera_input
) -> None:
    h = await camera_input(UsbInput, str(device), "usb")
    await h.wait_frames(3, timeout=10)

    device.unlink()  # unplugged
    await h.wait_state(("reconnecting",), timeout=5)
    health = h.module.health()
    assert health.state == "degraded"
    assert "unplugged" in (health.last_error or "")
    time.sleep(0)  # nothing else: the loop must keep retrying on its own
    await until(lambda: h.module.reconnects >= 2, 10)

    device.write_bytes(b"")  # plugged back in
    before = len(h.frames)
    await h.wait_frames(before + 3, timeout=10)  # backoff is capped at 5 s for USB
    assert h.module.health().state == "ok"
    assert h.module.metrics()["camera_state"] == "streaming"
    assert len(fake_v4l2["opened"]) >= 2


async def test_by_id_symlink_opens_the_real_node(fake_v4l2, device, tmp_path, camera_input) -> None:
    link = tmp_path / "usb-Acme_Cam-video-index0"
    link.symlink_to(device)
    h = await camera_input(UsbInput, str(link), "usb")
    await h.wait_frames(1, timeout=10)
    assert fake_v4l2["opened"][0].path == str(device.resolve())
