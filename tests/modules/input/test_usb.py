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


class FakeH264Device:
    """PyAV's container shape (``streams``, ``demux``, ``close``) as FFmpeg's v4l2 demuxer
    gives it for a camera's H.264: an Annex B elementary stream demuxed by PyAV's own h264
    demuxer, paced like a sensor, each access unit stamped like V4L2 does (microseconds of the
    monotonic clock, time base 1/1000000). A read on a vanished node fails with ENODEV, as the
    kernel's VIDIOC_DQBUF does."""

    def __init__(self, node: str, path: Path, fps: int) -> None:
        import av

        self.node = node
        self.container = av.open(str(path), format="h264", options={"framerate": str(fps)})
        self.streams = self.container.streams
        self.fps = fps
        self.closed = False

    def demux(self, stream: Any) -> Any:
        import errno
        from fractions import Fraction

        import av

        t0 = time.monotonic()
        for i, packet in enumerate(self.container.demux(stream)):
            wait = t0 + i / self.fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the camera thread waits for the sensor
            if not os.path.exists(self.node):
                raise av.error.FFmpegError(errno.ENODEV, "No such device")
            if packet.size:
                packet.pts = packet.dts = time.monotonic_ns() // 1000
                packet.time_base = Fraction(1, 1_000_000)
            yield packet

    def close(self) -> None:
        self.closed = True
        self.container.close()


@pytest.fixture
def fake_v4l2(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the hardware boundary; returns the knobs and the captures opened.

    ``h264``: the elementary stream the camera's H.264 format gives, or None: a camera without
    H.264 (FFmpeg's v4l2 demuxer then fails with EINVAL, no format matching ``input_format``).
    """
    state: dict[str, Any] = {
        "formats": ("YUYV", "MJPG"),
        "size": (1280, 720),
        "opened": [],
        "h264": None,
        "h264_asked": [],
    }

    def open_capture(path: str) -> FakeVideoCapture:
        cap = FakeVideoCapture(path, state["formats"], state["size"])
        state["opened"].append(cap)
        return cap

    def open_h264(path: str, opts: usb.UsbCamera) -> FakeH264Device:
        import errno

        import av

        state["h264_asked"].append((path, opts.width, opts.height, opts.fps))
        if state["h264"] is None:
            raise av.error.FFmpegError(errno.EINVAL, "Invalid argument")
        dev = FakeH264Device(path, state["h264"], 10)
        state["opened"].append(dev)
        return dev

    monkeypatch.setattr(usb, "open_capture", open_capture)
    monkeypatch.setattr(usb, "open_h264", open_h264)
    return state


@pytest.fixture(scope="session")
def h264_stream() -> Path:
    """The footage at 640x360 as an H.264 elementary stream (cached)."""
    from tests.modules.input.conftest import clip
    from tests.support.media import scaled_h264

    return scaled_h264(clip(), 640, 360, 20.0, fmt="h264")


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


# -- cameras that send H.264 -------------------------------------------------------------------
async def test_h264_camera_feeds_the_packet_ring_and_clips_are_remuxed(
    fake_v4l2, device, h264_stream, camera_input, tmp_path
) -> None:
    from tests.modules.input.test_rtsp import clip_module, one_event

    fake_v4l2["h264"] = h264_stream
    h = await camera_input(
        UsbInput, str(device), "usb", options={"width": 640, "height": 360, "fps": 10}
    )
    clips, out = await clip_module(h, tmp_path, preroll_s=1.0, postroll_s=0.5)
    await h.wait_frames(25, timeout=20)
    assert fake_v4l2["h264_asked"] == [(str(device.resolve()), 640, 360, 10.0)]
    frame = h.frames[-1][1]
    assert (frame.width, frame.height) == (640, 360)
    assert frame.luma.shape == (180, 320)  # from the decoder's Y plane
    assert frame._image is None and frame.image.shape == (360, 640, 3)  # colour on demand
    ring = frame.source_packets
    assert ring is not None and ring.ready and (ring.width, ring.height) == (640, 360)
    m = h.module.metrics()
    assert m["format"] == "H264" and m["resolution"] == "640x360" and m["clips"] == "remux"

    (art,) = await one_event(h, out, frame.mono_ts, 1.5)
    assert (art.width, art.height) == (640, 360)
    assert clips.frames_encoded == 0 and clips.metrics()["clips_remuxed"] == 1
    # pre-roll 1 s from the keyframe before it (GOP 1 s) + 1.5 s + 0.5 s post-roll
    assert 2.8 <= art.duration_s <= 4.3, art.duration_s
    import av

    with av.open(art.path) as c:
        assert sum(1 for _ in c.decode(video=0)) >= 28  # every picture decodes
    await clips.stop()


async def test_camera_without_h264_gets_mjpeg_and_is_not_asked_again(
    fake_v4l2, device, camera_input
) -> None:
    h = await camera_input(UsbInput, str(device), "usb")
    await h.wait_frames(3, timeout=10)
    assert h.module.metrics()["format"] == "MJPG"
    assert h.frames[-1][1].source_packets is None  # frames only: the clip recorder encodes
    assert h.module.metrics()["clips"] == "encode"
    fake_v4l2["opened"][0].released = True  # a read fails: the input reopens the device
    await until(lambda: len(fake_v4l2["opened"]) >= 2, 10, "device reopened")
    await h.wait_frames(len(h.frames) + 3, timeout=10)
    assert len(fake_v4l2["h264_asked"]) == 1  # remembered until the device is unplugged


async def test_insisting_on_h264_reports_a_clear_error(fake_v4l2, device, camera_input) -> None:
    h = await camera_input(UsbInput, str(device), "usb", options={"format": "h264"})
    await h.wait_state(("reconnecting",), timeout=5)
    assert "does not offer H.264" in (h.module.health().last_error or "")
    assert not any(isinstance(c, FakeVideoCapture) for c in fake_v4l2["opened"])


async def test_unplugged_h264_camera_reconnects(fake_v4l2, device, h264_stream, camera_input):
    fake_v4l2["h264"] = h264_stream
    h = await camera_input(UsbInput, str(device), "usb")
    await h.wait_frames(3, timeout=10)
    device.unlink()  # unplugged: the next read fails
    await h.wait_state(("reconnecting",), timeout=10)
    assert "unplugged" in (h.module.health().last_error or "")
    device.write_bytes(b"")
    await h.wait_frames(len(h.frames) + 3, timeout=15)
    assert h.module.metrics()["format"] == "H264" and len(fake_v4l2["opened"]) >= 2
