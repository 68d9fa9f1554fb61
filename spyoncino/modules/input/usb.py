"""USB webcams through V4L2 (OpenCV's ``CAP_V4L2`` backend behind a tiny adapter).

MJPEG is negotiated when the camera offers it: a 720p YUYV stream needs ~440 Mbit/s at 30 fps
and does not fit USB 2.0 beside a second camera, MJPEG does. We ask OpenCV for the raw JPEG
bytes (``CAP_PROP_CONVERT_RGB`` off) so the luma plane comes from a reduced-size greyscale
decode (libjpeg skips most of the IDCT work at 1/2, 1/4, 1/8 scale) and the full colour image
is decoded only when a consumer asks.

Unplugging is normal life for a USB camera: a vanished device makes the read fail, the camera
goes ``reconnecting`` (module health ``degraded``), the base retries with a short backoff and
the stream comes back when the device does. ``/dev/v4l/by-id/...`` paths survive renumbering.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import Field

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import CameraOptions, ModuleConfig, ModuleConfigError, ModuleContext
from spyoncino.helpers.camera import CameraInput, RawFrame, SourceError

PREFIXES = ("/dev/video", "/dev/v4l/")
#: greyscale decode flags by downscale factor, largest first
_REDUCED = (
    (8, "IMREAD_REDUCED_GRAYSCALE_8"),
    (4, "IMREAD_REDUCED_GRAYSCALE_4"),
    (2, "IMREAD_REDUCED_GRAYSCALE_2"),
)
_CORRUPT_RETRIES = 5


class Config(ModuleConfig):
    type: Literal["usb"] = "usb"


class UsbCamera(CameraOptions):
    """``cameras.<id>.usb``: what to ask the camera for."""

    width: int = Field(default=1280, ge=16, le=7680, description="Requested frame width.")
    height: int = Field(default=720, ge=16, le=4320, description="Requested frame height.")
    fps: float = Field(default=15.0, gt=0.0, le=120.0, description="Requested frame rate.")
    format: Literal["auto", "mjpeg", "yuyv"] = Field(
        default="auto",
        description=(
            "Pixel format. auto: MJPEG when the camera offers it, else what it gives; mjpeg: "
            "insist (fail when unsupported); yuyv: uncompressed (USB bandwidth-hungry)."
        ),
    )
    stall_timeout_s: float = Field(
        default=10.0, ge=1.0, le=600.0, description="Seconds without a frame before reopening."
    )


def open_capture(path: str) -> Any:
    """The hardware boundary: everything else talks to what this returns.

    It has ``cv2.VideoCapture``'s shape (isOpened, read, set, get, release); tests replace
    this function with a fake of the same shape.
    """
    import cv2

    return cv2.VideoCapture(path, cv2.CAP_V4L2)


def fourcc_code(text: str) -> int:
    return sum(ord(c) << (8 * i) for i, c in enumerate(text))


def fourcc_text(code: float) -> str:
    value = int(code)
    return "".join(chr((value >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00")


class V4L2Camera:
    """A negotiated V4L2 capture: what was asked, what the driver granted, and frame reading."""

    def __init__(self, cap: Any, width: int, height: int, fourcc: str, fps: float) -> None:
        self.cap = cap
        self.width = width
        self.height = height
        self.fourcc = fourcc
        self.fps = fps

    @classmethod
    def negotiate(cls, cap: Any, opts: UsbCamera) -> V4L2Camera:
        import cv2

        if opts.format in ("auto", "mjpeg"):
            cap.set(cv2.CAP_PROP_FOURCC, fourcc_code("MJPG"))
        else:
            cap.set(cv2.CAP_PROP_FOURCC, fourcc_code("YUYV"))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, opts.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, opts.height)
        cap.set(cv2.CAP_PROP_FPS, opts.fps)
        # two buffers: the newest frame, not one that waited in a queue
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 2)
        timeout_prop = getattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC", None)  # OpenCV >= 4.7
        if timeout_prop is not None:
            cap.set(timeout_prop, int(opts.stall_timeout_s * 1000))
        fourcc = fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))
        if fourcc == "MJPG":
            # hand us the JPEG bytes; we decode what is needed, when it is needed
            cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        return cls(
            cap,
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or opts.width,
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or opts.height,
            fourcc,
            float(cap.get(cv2.CAP_PROP_FPS)) or opts.fps,
        )


def jpeg_frame(buf: Any, width: int, height: int, luma_width: int) -> RawFrame | None:
    """A raw JPEG buffer -> luma by reduced greyscale decode; colour decoded lazily."""
    import cv2

    data = buf.reshape(-1)
    flag = cv2.IMREAD_GRAYSCALE
    for factor, name in _REDUCED:
        if width // factor >= luma_width:
            flag = getattr(cv2, name)
            break
    luma: Any = cv2.imdecode(data, flag)
    if luma is None:
        return None

    def decode(d: Any = data) -> Any:
        img = cv2.imdecode(d, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError("corrupt JPEG frame")
        return img

    h, w = luma.shape[:2]
    # the camera's real size, from the reduced decode when the driver did not report it
    return RawFrame(width=width or w, height=height or h, luma=luma, decode=decode)


class UsbInput(CameraInput[Config]):
    """``/dev/video*`` and ``/dev/v4l/by-id/...`` cameras."""

    Config: ClassVar[type[ModuleConfig]] = Config
    Camera: ClassVar[type[CameraOptions] | None] = UsbCamera
    # a replugged camera should be back within seconds, and probing a path costs nothing
    backoff_cap: ClassVar[float] = 5.0

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.opts = UsbCamera()
        self.device: V4L2Camera | None = None
        self.corrupt_frames = 0

    @classmethod
    def accepts(cls, source: str) -> bool:
        return source.startswith(PREFIXES)

    async def check(self, app: AppConfig) -> None:
        if not app.cameras[self.camera_id].source.strip():
            raise ModuleConfigError(f"cameras.{self.camera_id}.source: empty device path")

    async def configure(self, app: AppConfig) -> None:
        await self.check(app)  # a refused source is never adopted, so never opened
        await super().configure(app)
        self.opts = self.cam.options(self.name or "usb", UsbCamera)
        self.stall_timeout = self.opts.stall_timeout_s + 2.0  # the driver's timeout fires first
        self.open_timeout = 15.0

    # -- blocking parts, on the camera's thread ------------------------------------------------
    def open(self) -> None:
        path = self.cam.source
        if not os.path.exists(path):
            raise SourceError(f"{path} is not present (unplugged?)")
        real = os.path.realpath(path)
        cap = open_capture(real)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {path} (busy, or not a capture device)")
        device = V4L2Camera.negotiate(cap, self.opts)
        if self.opts.format == "mjpeg" and device.fourcc != "MJPG":
            cap.release()
            raise SourceError(f"{path} does not offer MJPEG (it gave {device.fourcc or '?'})")
        self.device = device
        self.log.info(
            "camera_opened",
            camera=self.camera_id,
            source=path,
            device=real,
            fourcc=device.fourcc,
            width=device.width,
            height=device.height,
            fps=device.fps,
        )

    def read(self) -> RawFrame:
        device = self.device
        if device is None:
            raise SourceError("device is not open")
        for _ in range(_CORRUPT_RETRIES):
            ok, buf = device.cap.read()
            if not ok or buf is None:
                if not os.path.exists(self.cam.source):
                    raise SourceError(f"{self.cam.source} disappeared (unplugged)")
                raise SourceError(f"{self.cam.source}: read failed")
            if buf.ndim == 3:  # the driver (or OpenCV) already gave BGR
                return RawFrame(width=buf.shape[1], height=buf.shape[0], image=buf)
            raw = jpeg_frame(buf, device.width, device.height, self.cam.luma_width)
            if raw is not None:
                return raw
            self.corrupt_frames += 1  # cheap webcams emit the odd truncated JPEG
            self.decode_errors += 1
        raise SourceError(f"{self.cam.source}: {_CORRUPT_RETRIES} corrupt frames in a row")

    def close(self) -> None:
        device, self.device = self.device, None
        if device is not None:
            device.cap.release()

    def metrics(self) -> dict[str, float | int | str]:
        out = super().metrics()
        out["corrupt_frames"] = self.corrupt_frames
        if self.device is not None:
            out["format"] = self.device.fourcc
            out["resolution"] = f"{self.device.width}x{self.device.height}"
        return out
