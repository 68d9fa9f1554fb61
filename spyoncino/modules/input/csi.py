"""Raspberry Pi camera modules (CSI ribbon) through picamera2 / libcamera, natively.

No ``libcamerify``, no ``rpicam-vid`` pipe: two ISP outputs are configured together, ``main``
(full size, for snapshots, clips and the detector) and ``lores`` (a few hundred pixels wide).
Both are YUV420, so the lores Y plane *is* the luma plane motion reads: no colour conversion, no
decoding, no resize on the CPU — the ISP scaled it. ``main`` is copied out of the camera
buffer (the buffer must go back to libcamera at once) and converted to BGR only when a
consumer asks for ``frame.image``.

picamera2 is imported lazily; without it this module is quarantined with a message saying what
to install, and the rest of the app runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import CameraOptions, ModuleConfig, ModuleConfigError, ModuleContext
from spyoncino.helpers.camera import CameraInput, RawFrame, SourceError, shrink_luma

SOURCE = re.compile(r"^csi://(\d+)\Z")
INSTALL_HINT = (
    "the CSI camera input needs picamera2 and libcamera: on Raspberry Pi OS "
    "`sudo apt install python3-picamera2`, then create the venv with --system-site-packages "
    "and install with -c spyoncino/data/constraints/picamera2.txt (docs/install.md)"
)

_EXPOSURE = {"normal": "Normal", "short": "Short", "long": "Long"}
_AWB = {
    "auto": "Auto",
    "incandescent": "Incandescent",
    "tungsten": "Tungsten",
    "fluorescent": "Fluorescent",
    "indoor": "Indoor",
    "daylight": "Daylight",
    "cloudy": "Cloudy",
}


class Config(ModuleConfig):
    type: Literal["csi"] = "csi"


class CsiCamera(CameraOptions):
    """``cameras.<id>.csi``: sensor mode, orientation and automatic exposure/white balance."""

    width: int = Field(default=1920, ge=64, le=9152, description="Main stream width.")
    height: int = Field(default=1080, ge=64, le=6944, description="Main stream height.")
    fps: float = Field(default=15.0, ge=0.5, le=120.0, description="Sensor frame rate.")
    rotation: Literal[0, 180] = Field(
        default=0, description="Rotate the image (the ISP does 0 and 180 at no cost)."
    )
    hflip: bool = Field(default=False, description="Mirror left-right.")
    vflip: bool = Field(default=False, description="Mirror top-bottom.")
    exposure: Literal["normal", "short", "long"] = Field(
        default="normal",
        description="Auto-exposure mode: short favours sharp motion, long favours low noise.",
    )
    awb: Literal[
        "auto", "incandescent", "tungsten", "fluorescent", "indoor", "daylight", "cloudy"
    ] = Field(default="auto", description="Auto white balance mode.")
    buffer_count: int = Field(
        default=4, ge=2, le=12, description="Camera buffers (each holds one main + lores frame)."
    )
    read_timeout_s: float = Field(
        default=5.0, ge=0.5, le=60.0, description="Seconds to wait for a frame before failing."
    )


@dataclass(frozen=True)
class Backend:
    """What we use of picamera2 and libcamera; a fake of the same shape stands in for tests."""

    Picamera2: Any
    Transform: Any
    controls: Any


def load_backend() -> Backend:
    """Import picamera2 and libcamera, or say exactly what to install."""
    try:
        from libcamera import Transform, controls
        from picamera2 import Picamera2
    except ImportError as e:
        raise ModuleConfigError(f"{INSTALL_HINT} ({e})") from e
    return Backend(Picamera2=Picamera2, Transform=Transform, controls=controls)


def camera_index(source: str) -> int:
    m = SOURCE.match(source.strip())
    if m is None:
        raise ValueError(source)
    return int(m.group(1))


def i420_to_bgr(buf: Any, width: int, height: int, stride: int) -> Any:
    """A YUV420 (I420) buffer with ``stride``-byte rows -> BGR. Strips row padding first."""
    import cv2
    import numpy as np

    flat = buf.reshape(-1)
    if stride != width:
        cs = stride // 2
        y = flat[: height * stride].reshape(height, stride)[:, :width]
        u_at = height * stride
        v_at = u_at + (height // 2) * cs
        u = flat[u_at:v_at].reshape(height // 2, cs)[:, : width // 2]
        v = flat[v_at : v_at + (height // 2) * cs].reshape(height // 2, cs)[:, : width // 2]
        flat = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)])
    i420 = flat[: width * height * 3 // 2].reshape(height * 3 // 2, width)
    return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)


class CsiInput(CameraInput[Config]):
    """``csi://N``: the camera on connector N (0 on most boards; 0 or 1 on Pi 5 and CM4)."""

    Config: ClassVar[type[ModuleConfig]] = Config
    Camera: ClassVar[type[CameraOptions] | None] = CsiCamera

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.opts = CsiCamera()
        self.backend: Backend | None = None
        self.picam: Any = None
        self.index = 0
        self.main_size = (0, 0)
        self.main_stride = 0
        self.lores_size = (0, 0)

    @classmethod
    def accepts(cls, source: str) -> bool:
        return SOURCE.match(source.strip()) is not None

    async def check(self, app: AppConfig) -> None:
        source = app.cameras[self.camera_id].source
        try:
            camera_index(source)
        except ValueError as e:
            raise ModuleConfigError(
                f"cameras.{self.camera_id}.source: {source!r} is not csi://<number>"
            ) from e

    async def configure(self, app: AppConfig) -> None:
        await self.check(app)  # a refused source is never adopted, so never opened
        await super().configure(app)
        self.opts = self.cam.options(self.name or "csi", CsiCamera)
        self.index = camera_index(self.cam.source)
        self.stall_timeout = self.opts.read_timeout_s + 2.0  # picamera2's own timeout first
        self.open_timeout = 20.0

    async def start(self) -> None:
        if self.backend is None:
            self.backend = load_backend()  # ModuleConfigError -> quarantined, app keeps running
        await super().start()

    def lores_request(self) -> tuple[int, int]:
        """Lores size: ``luma_width`` wide, the main stream's aspect ratio, even numbers."""
        w = min(self.cam.luma_width, self.opts.width) & ~1
        h = max(2, round(w * self.opts.height / self.opts.width)) & ~1
        return (w, h)

    # -- blocking parts, on the camera's thread ------------------------------------------------
    def open(self) -> None:
        backend = self.backend
        if backend is None:
            raise SourceError("picamera2 backend not loaded")
        opts = self.opts
        flip = opts.rotation == 180
        transform = backend.Transform(hflip=int(opts.hflip ^ flip), vflip=int(opts.vflip ^ flip))
        ctl = backend.controls
        controls = {
            "FrameRate": opts.fps,
            "AeExposureMode": getattr(ctl.AeExposureModeEnum, _EXPOSURE[opts.exposure]),
            "AwbMode": getattr(ctl.AwbModeEnum, _AWB[opts.awb]),
        }
        try:
            picam = backend.Picamera2(self.index)
        except IndexError:
            raise SourceError(f"no camera on csi://{self.index} (check the ribbon cable)") from None
        except RuntimeError as e:
            raise SourceError(f"csi://{self.index} is busy or failed to start: {e}") from None
        try:
            config = picam.create_video_configuration(
                main={"size": (opts.width, opts.height), "format": "YUV420"},
                lores={"size": self.lores_request(), "format": "YUV420"},
                transform=transform,
                controls=controls,
                buffer_count=opts.buffer_count,
            )
            picam.configure(config)
            picam.start()
        except Exception as e:
            self._stop_quietly(picam)
            raise SourceError(f"csi://{self.index}: cannot configure: {e}") from None
        self.picam = picam
        actual = getattr(picam, "camera_config", None) or config
        main, lores = actual["main"], actual["lores"]
        self.main_size = tuple(main["size"])
        self.main_stride = int(main.get("stride") or self.main_size[0])
        self.lores_size = tuple(lores["size"])
        self.log.info(
            "camera_opened",
            camera=self.camera_id,
            source=self.cam.source,
            main=f"{self.main_size[0]}x{self.main_size[1]}",
            lores=f"{self.lores_size[0]}x{self.lores_size[1]}",
            fps=opts.fps,
            rotation=opts.rotation,
        )

    def read(self) -> RawFrame:
        picam = self.picam
        if picam is None:
            raise SourceError("camera is not open")
        try:
            request = picam.capture_request(wait=self.opts.read_timeout_s)
        except TimeoutError:
            raise SourceError(
                f"csi://{self.index}: no frame for {self.opts.read_timeout_s:g}s"
            ) from None
        try:
            lores = request.make_array("lores")  # (h*3/2, stride) YUV420: Y plane on top
            main = request.make_buffer("main")  # a copy: the buffer goes back to libcamera now
        finally:
            request.release()
        lw, lh = self.lores_size
        luma = lores[:lh, :lw]
        w, h = self.main_size
        stride = self.main_stride

        def decode(buf: Any = main) -> Any:
            return i420_to_bgr(buf, w, h, stride)

        return RawFrame(
            width=w, height=h, luma=shrink_luma(luma, self.cam.luma_width), decode=decode
        )

    def close(self) -> None:
        picam, self.picam = self.picam, None
        if picam is not None:
            self._stop_quietly(picam)

    @staticmethod
    def _stop_quietly(picam: Any) -> None:
        for step in ("stop", "close"):
            fn = getattr(picam, step, None)
            if fn is None:
                continue
            try:
                fn()
            except Exception:  # noqa: S112 - closing a failed camera must not raise
                continue

    def metrics(self) -> dict[str, float | int | str]:
        out = super().metrics()
        if self.main_size[0]:
            out["resolution"] = f"{self.main_size[0]}x{self.main_size[1]}"
            out["lores"] = f"{self.lores_size[0]}x{self.lores_size[1]}"
        return out
