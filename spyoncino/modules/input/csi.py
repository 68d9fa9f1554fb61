"""Raspberry Pi camera modules (CSI ribbon) through picamera2 / libcamera, natively.

No ``libcamerify``, no ``rpicam-vid`` pipe: two ISP outputs are configured together, ``main``
(full size, for snapshots, clips and the detector) and ``lores`` (a few hundred pixels wide).
Both are YUV420, so the lores Y plane *is* the luma plane motion reads: no colour conversion, no
decoding, no resize on the CPU — the ISP scaled it. ``main`` is copied out of the camera
buffer (the buffer must go back to libcamera at once) and converted to BGR only when a
consumer asks for ``frame.image``.

**Clips from the hardware encoder.** On a board with the VideoCore H.264 encoder
(``bcm2835-codec`` at ``/dev/video11``: Pi 4 and earlier) picamera2's ``H264Encoder`` encodes
the ``main`` stream continuously, in hardware, with SPS/PPS repeated on every keyframe. Its
output (``Output.outputframe``: one Annex B access unit, a keyframe flag, microseconds since
the encoder's first frame on the sensor clock) goes into the same ``PacketRing`` an RTSP
camera fills, so the clip recorder cuts and remuxes clips from it: no per-frame work while no
event is open and no libx264. The frames carry their ``SensorTimestamp`` as ``pts_s`` so the
ring maps the sensor clock onto the frames' monotonic clock. Where there is no such encoder
(Pi 5's PiSP has none; picamera2's ``H264Encoder`` there is libx264 in software, which would
run on every frame), when it fails to start or goes silent, or with ``hw_encoder: off``, the
frames stay raw and the clip recorder encodes them during events only, as before; a log line
and the ``clip_source`` metric say which path runs and why. The hardware path is tested
against a fake of picamera2's API (tests/modules/input/test_csi.py), not on a Pi.

picamera2 is imported lazily; without it this module is quarantined with a message saying what
to install, and the rest of the app runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import CameraOptions, ModuleConfig, ModuleConfigError, ModuleContext
from spyoncino.helpers.camera import CameraInput, RawFrame, SourceError, shrink_luma
from spyoncino.helpers.packets import PacketRing

if TYPE_CHECKING:
    from spyoncino.platform.profiles import Profile

SOURCE = re.compile(r"^csi://(\d+)\Z")
INSTALL_HINT = (
    "the CSI camera input needs picamera2 and libcamera: on Raspberry Pi OS "
    "`sudo apt install python3-picamera2`, then create the venv with --system-site-packages "
    "and install with -c spyoncino/data/constraints/picamera2.txt (docs/install.md)"
)

#: the VideoCore codec's encoder node, which picamera2's V4L2 ``H264Encoder`` opens
ENCODER_DEVICE = "/dev/video11"
#: the largest picture the VideoCore H.264 encoder takes (level 4.x)
ENCODER_MAX = (1920, 1088)
#: seconds of frames without an encoded packet before the hardware path is given up
ENCODER_SILENT_S = 5.0
#: picamera2's encoder timestamps: microseconds
US = Fraction(1, 1_000_000)

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


#: the main stream sizes libcamera takes, for the board's default and a camera's own
MIN_SIDE, MAX_WIDTH, MAX_HEIGHT = 64, 9152, 6944


class Config(ModuleConfig):
    type: Literal["csi"] = "csi"

    @classmethod
    def profile_defaults(cls, profile: Profile) -> dict[str, Any]:
        w, h = profile.camera.detect_resolution  # what the board's detector and snapshots see
        return {"width": w, "height": h}

    width: int = Field(
        default=1920,
        ge=MIN_SIDE,
        le=MAX_WIDTH,
        description="Main stream width of a camera that sets none, from the hardware profile "
        "(Pi Zero 2 W 640x480, Pi 3 and 4 1280x720, Pi 5 1920x1080).",
    )
    height: int = Field(
        default=1080,
        ge=MIN_SIDE,
        le=MAX_HEIGHT,
        description="Main stream height of a camera that sets none.",
    )


class CsiCamera(CameraOptions):
    """``cameras.<id>.csi``: sensor mode, orientation and automatic exposure/white balance."""

    width: int | None = Field(
        default=None,
        ge=MIN_SIDE,
        le=MAX_WIDTH,
        description="Main stream width; unset: csi.width (the board's).",
    )
    height: int | None = Field(
        default=None,
        ge=MIN_SIDE,
        le=MAX_HEIGHT,
        description="Main stream height; unset: csi.height.",
    )
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
    hw_encoder: Literal["auto", "off"] = Field(
        default="auto",
        description=(
            "auto: where the board has the hardware H.264 encoder (Pi 4 and earlier; not Pi 5) "
            "picamera2 encodes the main stream continuously and clips are remuxed from its "
            "packets (no per-frame work, no libx264). off, or no such encoder: the clip "
            "recorder encodes raw frames during events. Tested against a fake, not on a Pi."
        ),
    )
    bitrate_kbps: int = Field(
        default=2500, ge=200, le=25000, description="Hardware encoder bitrate (kbit/s)."
    )
    keyframe_s: float = Field(
        default=1.0,
        ge=0.25,
        le=10.0,
        description="Hardware encoder keyframe interval: how exactly clips are cut.",
    )

    @model_validator(mode="after")
    def _whole_size(self) -> CsiCamera:
        if (self.width is None) != (self.height is None):
            raise ValueError(
                "set width and height together (or neither: the board's size, csi.width and "
                "csi.height)"
            )
        return self


@dataclass(frozen=True)
class Backend:
    """What we use of picamera2 and libcamera; a fake of the same shape stands in for tests."""

    Picamera2: Any
    Transform: Any
    controls: Any
    #: picamera2's V4L2 (hardware) ``H264Encoder`` and its ``Output`` base; None: the board
    #: has no hardware encoder, ``no_encoder`` says why
    H264Encoder: Any = None
    Output: Any = None
    no_encoder: str = ""


def load_backend() -> Backend:
    """Import picamera2 and libcamera, or say exactly what to install."""
    try:
        from libcamera import Transform, controls
        from picamera2 import Picamera2
    except ImportError as e:
        raise ModuleConfigError(f"{INSTALL_HINT} ({e})") from e
    backend = Backend(Picamera2=Picamera2, Transform=Transform, controls=controls)
    try:
        from picamera2.platform import Platform, get_platform

        vc4 = get_platform() == Platform.VC4
    except ImportError:  # picamera2 from before the Pi 5 ran on VideoCore boards only
        vc4 = True
    if not vc4:
        # picamera2.encoders.H264Encoder is libx264 there: never run it on every frame
        return _without(backend, "this board (PiSP: Pi 5) has no hardware H.264 encoder")
    if not os.path.exists(ENCODER_DEVICE):
        return _without(backend, f"no hardware H.264 encoder ({ENCODER_DEVICE} missing)")
    try:
        # the V4L2 one by name: picamera2.encoders.H264Encoder is whichever the platform has
        from picamera2.encoders.h264_encoder import H264Encoder
        from picamera2.outputs import Output
    except ImportError as e:
        return _without(backend, f"picamera2 has no hardware H.264 encoder API ({e})")
    return Backend(Picamera2, Transform, controls, H264Encoder=H264Encoder, Output=Output)


def _without(backend: Backend, why: str) -> Backend:
    return Backend(backend.Picamera2, backend.Transform, backend.controls, no_encoder=why)


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


@dataclass(frozen=True, slots=True)
class EncodedUnit:
    """One access unit from picamera2's encoder, shaped like the PyAV packet ``PacketRing``
    takes: Annex B bytes, timestamps in microseconds of the sensor clock, no B-frames."""

    pts: int
    is_keyframe: bool
    data: bytes

    time_base: ClassVar[Fraction] = US

    @property
    def dts(self) -> int:
        return self.pts

    @property
    def size(self) -> int:
        return len(self.data)

    def __bytes__(self) -> bytes:
        return self.data


def encoded_stream(width: int, height: int, fps: float) -> Any:
    """What ``PacketRing.reset`` reads of a PyAV stream, for the encoder's output: H.264,
    no extradata (SPS/PPS come in-band on every keyframe: ``repeat=True``)."""
    codec = SimpleNamespace(name="h264", width=width, height=height, extradata=b"")
    rate = Fraction(fps).limit_denominator(1000)
    return SimpleNamespace(codec_context=codec, average_rate=rate, guessed_rate=rate, time_base=US)


class RingSink:
    """Where picamera2's encoder output goes (its thread): each access unit into the ring.

    picamera2 stamps a unit with microseconds since the encoder's first frame
    (``encoder.firsttimestamp``, sensor clock); adding that back gives the sensor time the
    frames carry as ``pts_s``, so the ring's anchor lines both up.
    """

    def __init__(self, ring: PacketRing, encoder: Any) -> None:
        self.ring = ring
        self.encoder = encoder
        self.units = 0
        self.last_unit = time.monotonic()
        self._lock = threading.Lock()

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        if audio or frame is None or timestamp is None:
            return
        first = getattr(self.encoder, "firsttimestamp", None) or 0
        self.ring.append(EncodedUnit(int(timestamp) + int(first), bool(keyframe), bytes(frame)))
        with self._lock:
            self.units += 1
            self.last_unit = time.monotonic()

    def arm(self) -> None:
        with self._lock:
            self.last_unit = time.monotonic()

    def silent_for(self) -> float:
        with self._lock:
            return time.monotonic() - self.last_unit


def make_output(base: Any, sink: RingSink) -> Any:
    """A ``picamera2.outputs.Output`` (encoders accept only those) forwarding to ``sink``."""

    def outputframe(self: Any, *args: Any, **kwargs: Any) -> None:
        sink.outputframe(*args, **kwargs)

    return type("SpyoncinoRingOutput", (base,), {"outputframe": outputframe})()


class CsiInput(CameraInput[Config]):
    """``csi://N``: the camera on connector N (0 on most boards; 0 or 1 on Pi 5 and CM4)."""

    Config: ClassVar[type[ModuleConfig]] = Config
    Camera: ClassVar[type[CameraOptions] | None] = CsiCamera
    #: frames without an encoded packet for this long: the hardware path is given up
    encoder_silent_s: ClassVar[float] = ENCODER_SILENT_S

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.opts = CsiCamera()
        #: the main stream size asked for: the camera's own, else the board's (``csi.width``)
        self.size = (1920, 1080)
        self.backend: Backend | None = None
        self.picam: Any = None
        self.index = 0
        self.main_size = (0, 0)
        self.main_stride = 0
        self.lores_size = (0, 0)
        self._ring: PacketRing | None = None
        self._sink: RingSink | None = None
        #: which path clips take: "hw_encoder" (remuxed) or "raw" (the clip recorder encodes)
        self.clip_source = "raw"
        self.encoder_note = ""
        self._armed = False

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
        section = self.config
        self.size = (self.opts.width or section.width, self.opts.height or section.height)
        self.index = camera_index(self.cam.source)
        self.stall_timeout = self.opts.read_timeout_s + 2.0  # picamera2's own timeout first
        self.open_timeout = 20.0

    async def start(self) -> None:
        if self.backend is None:
            self.backend = load_backend()  # ModuleConfigError -> quarantined, app keeps running
        await super().start()

    def lores_request(self) -> tuple[int, int]:
        """Lores size: ``luma_width`` wide, the main stream's aspect ratio, even numbers."""
        width, height = self.size
        w = min(self.cam.luma_width, width) & ~1
        h = max(2, round(w * height / width)) & ~1
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
                main={"size": self.size, "format": "YUV420"},
                lores={"size": self.lores_request(), "format": "YUV420"},
                transform=transform,
                controls=controls,
                # the encoder holds a buffer or two while it works: picamera2's video default
                buffer_count=opts.buffer_count
                if self._refusal(*self.size)
                else max(opts.buffer_count, 6),
            )
            picam.configure(config)
        except Exception as e:
            self._stop_quietly(picam)
            raise SourceError(f"csi://{self.index}: cannot configure: {e}") from None
        actual = getattr(picam, "camera_config", None) or config
        main, lores = actual["main"], actual["lores"]
        self.main_size = tuple(main["size"])
        self.main_stride = int(main.get("stride") or self.main_size[0])
        self.lores_size = tuple(lores["size"])
        self._start_encoder(picam)
        try:
            picam.start()
        except Exception as e:
            self._stop_quietly(picam)
            self.packets, self._sink = None, None
            raise SourceError(f"csi://{self.index}: cannot start: {e}") from None
        self.picam = picam
        self.log.info(
            "camera_opened",
            camera=self.camera_id,
            source=self.cam.source,
            main=f"{self.main_size[0]}x{self.main_size[1]}",
            lores=f"{self.lores_size[0]}x{self.lores_size[1]}",
            fps=opts.fps,
            rotation=opts.rotation,
            clip_source=self.clip_source,
        )

    def _start_encoder(self, picam: Any) -> None:
        """The hardware H.264 encoder on ``main`` into the packet ring, or say why not."""
        self.packets, self._sink = None, None
        self.clip_source = "raw"
        backend, opts = self.backend, self.opts
        assert backend is not None
        w, h = self.main_size
        why = self._refusal(w, h)
        if not why:
            ring = self._ring = self.budgeted_ring(self._ring)
            ring.reset(encoded_stream(w, h, opts.fps))
            try:
                encoder = backend.H264Encoder(
                    bitrate=opts.bitrate_kbps * 1000,
                    repeat=True,  # SPS/PPS on every keyframe: each one can start a clip
                    iperiod=max(1, round(opts.fps * opts.keyframe_s)),
                )
                sink = RingSink(ring, encoder)
                picam.start_encoder(encoder, make_output(backend.Output, sink), name="main")
            except Exception as e:
                why = f"hardware encoder failed to start: {type(e).__name__}: {e}"
                with contextlib.suppress(Exception):
                    picam.stop_encoder()
            else:
                self.packets, self._sink, self._armed = ring, sink, False
                self.clip_source = "hw_encoder"
        self.encoder_note = why or f"hardware H.264 encoder on main {w}x{h}"
        self.log.info(
            "csi_clip_source",
            camera=self.camera_id,
            clip_source=self.clip_source,
            reason=self.encoder_note,
        )

    def _refusal(self, width: int, height: int) -> str:
        """Why the hardware encoder does not run for a main stream of this size ("": it does)."""
        backend = self.backend
        if self.opts.hw_encoder == "off":
            return "csi.hw_encoder is off"
        if backend is None or backend.H264Encoder is None or backend.Output is None:
            return (backend.no_encoder if backend else "") or "no hardware H.264 encoder"
        if width > ENCODER_MAX[0] or height > ENCODER_MAX[1]:
            return f"main stream {width}x{height} is larger than the hardware encoder's 1920x1080"
        return ""

    def _give_up_encoder(self, why: str) -> None:
        """The encoder stopped delivering: raw frames from now on (until the next open)."""
        self.packets, self._sink = None, None
        self.clip_source = "raw"
        self.encoder_note = why
        self.log.warning("csi_hw_encoder_failed", camera=self.camera_id, reason=why)
        with contextlib.suppress(Exception):
            self.picam.stop_encoder()

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
        pts_s = None
        try:
            lores = request.make_array("lores")  # (h*3/2, stride) YUV420: Y plane on top
            main = request.make_buffer("main")  # a copy: the buffer goes back to libcamera now
            sink = self._sink
            if sink is not None:
                if not self._armed:  # silence counts from the first frame, not from open
                    sink.arm()
                    self._armed = True
                ns = request.get_metadata().get("SensorTimestamp")
                pts_s = ns / 1e9 if ns else None  # the encoder's clock, for the ring's anchor
        finally:
            request.release()
        if self._sink is not None and self._sink.silent_for() > self.encoder_silent_s:
            self._give_up_encoder(f"no encoded packet for {self.encoder_silent_s:g}s")
            pts_s = None
        lw, lh = self.lores_size
        luma = lores[:lh, :lw]
        w, h = self.main_size
        stride = self.main_stride

        def decode(buf: Any = main) -> Any:
            return i420_to_bgr(buf, w, h, stride)

        return RawFrame(
            width=w,
            height=h,
            luma=shrink_luma(luma, self.cam.luma_width),
            decode=decode,
            pts_s=pts_s,
        )

    def close(self) -> None:
        picam, self.picam = self.picam, None
        self.packets, self._sink = None, None
        if picam is not None:
            self._stop_quietly(picam)

    @staticmethod
    def _stop_quietly(picam: Any) -> None:
        for step in ("stop", "stop_encoder", "close"):  # picamera2's stop_recording order
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
            out["clip_source"] = self.clip_source
            out["clip_source_reason"] = self.encoder_note
        sink = self._sink
        if sink is not None:
            out["encoded_packets"] = sink.units
            out["preroll_bytes"] = self.packets.nbytes if self.packets is not None else 0
        return out
