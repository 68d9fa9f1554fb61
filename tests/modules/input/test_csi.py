"""CSI (picamera2) input against a fake with the subset of the Picamera2 API it uses."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from spyoncino.core.contracts import ModuleConfigError
from spyoncino.modules.input import csi
from spyoncino.modules.input.csi import Backend, CsiInput, i420_to_bgr


class FakeTransform:
    def __init__(self, hflip: int = 0, vflip: int = 0) -> None:
        self.hflip = hflip
        self.vflip = vflip


def scene(w: int, h: int) -> np.ndarray:
    """A dark picture with a bright block in the top-left corner and a red bar at the bottom."""
    img = np.full((h, w, 3), 30, np.uint8)
    img[: h // 4, : w // 4] = 230
    img[-h // 8 :, :] = (0, 0, 200)
    return img


def to_i420(img: np.ndarray, stride: int) -> np.ndarray:
    """BGR -> YUV420 laid out like a libcamera buffer whose rows are ``stride`` bytes."""
    h, w = img.shape[:2]
    i420 = cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    if stride == w:
        return i420.reshape(h * 3 // 2, w)
    y = i420[: w * h].reshape(h, w)
    u = i420[w * h : w * h + w * h // 4].reshape(h // 2, w // 2)
    v = i420[w * h + w * h // 4 :].reshape(h // 2, w // 2)
    ys = np.zeros((h, stride), np.uint8)
    ys[:, :w] = y
    us = np.zeros((h // 2, stride // 2), np.uint8)
    us[:, : w // 2] = u
    vs = np.zeros((h // 2, stride // 2), np.uint8)
    vs[:, : w // 2] = v
    return np.concatenate([ys.reshape(-1), us.reshape(-1), vs.reshape(-1)]).reshape(
        h * 3 // 2, stride
    )


class FakeRequest:
    def __init__(self, cam: FakePicamera2) -> None:
        self.cam = cam
        self.released = False

    def _image(self, name: str) -> np.ndarray:
        cfg = self.cam.camera_config[name]
        w, h = cfg["size"]
        img = scene(w, h)
        t = self.cam.transform
        if t.hflip:
            img = img[:, ::-1]
        if t.vflip:
            img = img[::-1]
        return to_i420(np.ascontiguousarray(img), cfg["stride"])

    def make_array(self, name: str) -> np.ndarray:
        assert not self.released, "used after release"
        return self._image(name)  # picamera2: (h*3/2, stride) for YUV420

    def make_buffer(self, name: str) -> np.ndarray:
        assert not self.released, "used after release"
        return self._image(name).reshape(-1)

    def release(self) -> None:
        self.released = True
        self.cam.outstanding -= 1


class FakePicamera2:
    """create_video_configuration (main + lores), configure, start, capture_request, stop."""

    instances: list[FakePicamera2] = []
    cameras = 1

    def __init__(self, camera_num: int = 0) -> None:
        if camera_num >= self.cameras:
            raise IndexError("list index out of range")
        self.camera_num = camera_num
        self.camera_config: dict[str, Any] = {}
        self.transform = FakeTransform()
        self.started = False
        self.stopped = False
        self.closed = False
        self.outstanding = 0
        self.created: dict[str, Any] = {}
        FakePicamera2.instances.append(self)

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [{"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/...", "Num": 0}]

    def create_video_configuration(self, main: dict[str, Any], lores: dict[str, Any], **kw: Any):
        self.created = {"main": dict(main), "lores": dict(lores), **kw}
        return {"main": dict(main), "lores": dict(lores), **kw}

    def configure(self, config: dict[str, Any]) -> None:
        main, lores = dict(config["main"]), dict(config["lores"])
        main["stride"] = main["size"][0]
        lores["stride"] = (lores["size"][0] + 63) // 64 * 64  # libcamera pads rows
        self.camera_config = {"main": main, "lores": lores}
        self.transform = config["transform"]

    def start(self) -> None:
        self.started = True

    def capture_request(self, wait: float | None = None) -> FakeRequest:
        assert self.started
        assert wait is not None, "a wait without timeout could hang the camera thread"
        time.sleep(1 / 30)
        self.outstanding += 1
        return FakeRequest(self)

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


FAKE_CONTROLS = SimpleNamespace(
    AeExposureModeEnum=SimpleNamespace(Normal="ae-normal", Short="ae-short", Long="ae-long"),
    AwbModeEnum=SimpleNamespace(
        Auto="awb-auto",
        Incandescent="awb-inc",
        Tungsten="awb-tun",
        Fluorescent="awb-flu",
        Indoor="awb-ind",
        Daylight="awb-day",
        Cloudy="awb-cloud",
    ),
)


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    FakePicamera2.instances = []
    FakePicamera2.cameras = 1
    backend = Backend(Picamera2=FakePicamera2, Transform=FakeTransform, controls=FAKE_CONTROLS)
    monkeypatch.setattr(csi, "load_backend", lambda: backend)
    return FakePicamera2


def test_accepts_csi_urls() -> None:
    assert CsiInput.accepts("csi://0")
    assert CsiInput.accepts("csi://1")
    assert not CsiInput.accepts("csi://front")
    assert not CsiInput.accepts("/dev/video0")


async def test_main_and_lores_configured_together_and_lores_luma_used(
    fake_picamera2, camera_input
) -> None:
    h = await camera_input(
        CsiInput,
        "csi://0",
        "csi",
        options={"width": 1536, "height": 864, "fps": 30, "exposure": "short", "awb": "daylight"},
    )
    await h.wait_frames(5, timeout=10)
    cam = fake_picamera2.instances[0]
    assert cam.created["main"] == {"size": (1536, 864), "format": "YUV420"}
    assert cam.created["lores"] == {"size": (320, 180), "format": "YUV420"}
    assert cam.created["controls"] == {
        "FrameRate": 30.0,
        "AeExposureMode": "ae-short",
        "AwbMode": "awb-day",
    }
    frame = h.frames[-1][1]
    assert (frame.width, frame.height) == (1536, 864)
    # the lores Y plane, padding (stride 320 -> 320, here 320 is 64-aligned) stripped
    assert frame.luma.shape == (180, 320)
    assert frame.luma[10, 10] > 200  # bright block top-left
    assert frame.luma[170, 300] < 100
    assert frame._image is None
    img = frame.image  # lazily converted from the main YUV420 copy
    assert img.shape == (864, 1536, 3)
    assert img[5, 5].min() > 200
    assert img[-5, 700, 2] > 150  # red bar at the bottom
    assert cam.outstanding == 0  # every request went back to libcamera


async def test_rotation_180_flips_both_axes_in_the_isp(fake_picamera2, camera_input) -> None:
    h = await camera_input(
        CsiInput, "csi://0", "csi", options={"width": 640, "height": 480, "rotation": 180}
    )
    await h.wait_frames(2, timeout=10)
    cam = fake_picamera2.instances[0]
    t = cam.created["transform"]
    assert (t.hflip, t.vflip) == (1, 1)
    luma = h.frames[-1][1].luma
    assert luma.shape == (240, 320)
    assert luma[-5, -5] > 200  # the top-left block is now bottom-right
    assert luma[5, 5] < 100


async def test_hflip_with_rotation_cancels_out(fake_picamera2, camera_input) -> None:
    h = await camera_input(
        CsiInput,
        "csi://0",
        "csi",
        options={"width": 640, "height": 480, "rotation": 180, "hflip": True},
    )
    await h.wait_frames(1, timeout=10)
    t = fake_picamera2.instances[0].created["transform"]
    assert (t.hflip, t.vflip) == (0, 1)


async def test_second_connector_and_missing_camera(fake_picamera2, camera_input) -> None:
    fake_picamera2.cameras = 2
    h = await camera_input(CsiInput, "csi://1", "csi", options={"width": 640, "height": 480})
    await h.wait_frames(1, timeout=10)
    assert fake_picamera2.instances[0].camera_num == 1

    fake_picamera2.cameras = 1
    gone = await camera_input(CsiInput, "csi://1", "csi")
    await gone.wait_state(("reconnecting",), timeout=5)
    assert "no camera on csi://1" in (gone.module.health().last_error or "")


async def test_stop_releases_the_camera(fake_picamera2, camera_input) -> None:
    h = await camera_input(CsiInput, "csi://0", "csi", options={"width": 640, "height": 480})
    await h.wait_frames(1, timeout=10)
    await h.module.stop()
    cam = fake_picamera2.instances[0]
    assert cam.stopped
    assert cam.closed


async def test_without_picamera2_the_module_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, camera_input
) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails like on a PC
    monkeypatch.setitem(sys.modules, "libcamera", None)
    h = await camera_input(CsiInput, "csi://0", "csi", start=False)
    with pytest.raises(ModuleConfigError, match=r"apt install python3-picamera2") as err:
        await h.module.start()
    assert "--system-site-packages" in str(err.value)
    assert "constraints/picamera2.txt" in str(err.value)  # numpy 1 for apt's picamera2


def test_i420_with_padded_rows_converts_like_unpadded() -> None:
    img = scene(100, 60)
    plain = i420_to_bgr(to_i420(img, 100), 100, 60, 100)
    padded = i420_to_bgr(to_i420(img, 128), 100, 60, 128)
    assert np.array_equal(plain, padded)
