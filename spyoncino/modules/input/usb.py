"""USB webcams through V4L2 (OpenCV's ``CAP_V4L2`` backend, or PyAV's ``v4l2`` demuxer for
H.264, each behind a tiny adapter).

H.264 is taken when the camera offers it (``format: auto`` or ``h264``): FFmpeg's V4L2
demuxer (``format="v4l2"``, ``input_format=h264``, ``video_size``, ``framerate``) hands over
the camera's compressed access units, which go into the packet ring as they come (clips are
remuxed from them, nothing is encoded) and are decoded for motion exactly like an RTSP
stream's: luma from the decoder's Y plane, colour only on demand. V4L2 timestamps them with
the kernel's monotonic clock, in microseconds. Cameras without H.264 (the EINVAL FFmpeg
returns when no format matches) go the OpenCV way below, and the answer is remembered until
the device is unplugged.

MJPEG is negotiated otherwise, when the camera offers it: a 720p YUYV stream needs ~440 Mbit/s
at 30 fps and does not fit USB 2.0 beside a second camera, MJPEG does. We ask OpenCV for the
raw JPEG bytes (``CAP_PROP_CONVERT_RGB`` off) so the luma plane comes from a reduced-size
greyscale decode (libjpeg skips most of the IDCT work at 1/2, 1/4, 1/8 scale) and the full
colour image is decoded only when a consumer asks.

Unplugging is normal life for a USB camera: a vanished device makes the read fail, the camera
goes ``reconnecting`` (module health ``degraded``), the base retries with a short backoff and
the stream comes back when the device does. ``/dev/v4l/by-id/...`` paths survive renumbering.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from typing import Any, ClassVar, Literal

from pydantic import Field

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import CameraOptions, ModuleConfig, ModuleConfigError, ModuleContext
from spyoncino.helpers.camera import CameraInput, RawFrame, SourceError, av_frame_to_raw

PREFIXES = ("/dev/video", "/dev/v4l/")
#: greyscale decode flags by downscale factor, largest first
_REDUCED = (
    (8, "IMREAD_REDUCED_GRAYSCALE_8"),
    (4, "IMREAD_REDUCED_GRAYSCALE_4"),
    (2, "IMREAD_REDUCED_GRAYSCALE_2"),
)
_CORRUPT_RETRIES = 5
#: what FFmpeg's V4L2 demuxer answers for a camera without H.264: EINVAL (no format matches
#: input_format), ENOTTY (not a V4L2 capture node)
_NO_H264 = (errno.EINVAL, errno.ENOTTY)


class Config(ModuleConfig):
    type: Literal["usb"] = "usb"


class UsbCamera(CameraOptions):
    """``cameras.<id>.usb``: what to ask the camera for."""

    width: int = Field(default=1280, ge=16, le=7680, description="Requested frame width.")
    height: int = Field(default=720, ge=16, le=4320, description="Requested frame height.")
    fps: float = Field(default=15.0, gt=0.0, le=120.0, description="Requested frame rate.")
    format: Literal["auto", "h264", "mjpeg", "yuyv"] = Field(
        default="auto",
        description=(
            "Pixel format. auto: H.264 when the camera offers it (clips remuxed from its "
            "packets, no encoding), else MJPEG, else what it gives; h264 / mjpeg: insist "
            "(fail when unsupported); yuyv: uncompressed (USB bandwidth-hungry)."
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


def open_h264(path: str, opts: UsbCamera) -> Any:
    """The H.264 hardware boundary: a PyAV input container on the V4L2 node, asking the
    camera for its H.264 stream (FFmpeg's v4l2 demuxer options ``input_format``,
    ``video_size``, ``framerate``). Nothing is decoded here.

    It has PyAV's container shape (``streams.video``, ``demux``, ``close``); tests replace
    this function with one opening an H.264 elementary stream through the same demuxing path.
    """
    import av

    options = {
        "input_format": "h264",
        "video_size": f"{opts.width}x{opts.height}",
        "framerate": f"{opts.fps:g}",
    }
    return av.open(path, format="v4l2", options=options)


class H264Camera:
    """A camera's H.264 stream: packets demuxed (kept for clips), decoded for motion."""

    fourcc = "H264"

    def __init__(self, container: Any) -> None:
        self.container = container
        self.stream = container.streams.video[0]
        ctx = self.stream.codec_context
        ctx.thread_count = 1  # one picture at a time: the least CPU, each camera has a thread
        self.width, self.height = ctx.width, ctx.height
        rate = self.stream.average_rate
        self.fps = float(rate) if rate else 0.0
        self.time_base = self.stream.time_base
        self.packets = container.demux(self.stream)
        self.pending: deque[Any] = deque()

    def release(self) -> None:
        self.pending.clear()
        self.container.close()


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
        self.h264: H264Camera | None = None
        #: the camera answered that it has no H.264 (format auto): not asked again until the
        #: device is unplugged
        self._no_h264 = False
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
            self._no_h264 = False  # whatever comes back may be another camera
            raise SourceError(f"{path} is not present (unplugged?)")
        real = os.path.realpath(path)
        if self.opts.format == "h264" or (self.opts.format == "auto" and not self._no_h264):
            h264 = self._open_h264(path, real)
            if h264 is not None:
                self.h264 = h264
                ring = self.budgeted_ring(self.packets)
                self.packets = ring if ring.reset(h264.stream) else None
                self._log_opened(path, real, h264.fourcc, h264.width, h264.height, h264.fps)
                return
            if self.opts.format == "h264":
                raise SourceError(f"{path} does not offer H.264")
        cap = open_capture(real)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {path} (busy, or not a capture device)")
        device = V4L2Camera.negotiate(cap, self.opts)
        if self.opts.format == "mjpeg" and device.fourcc != "MJPG":
            cap.release()
            raise SourceError(f"{path} does not offer MJPEG (it gave {device.fourcc or '?'})")
        self.device = device
        self.packets = None  # frames only: the clip recorder encodes
        self._log_opened(path, real, device.fourcc, device.width, device.height, device.fps)

    def _log_opened(
        self, path: str, real: str, fourcc: str, width: int, height: int, fps: float
    ) -> None:
        self.log.info(
            "camera_opened",
            camera=self.camera_id,
            source=path,
            device=real,
            fourcc=fourcc,
            width=width,
            height=height,
            fps=fps,
        )

    def _open_h264(self, path: str, real: str) -> H264Camera | None:
        """The camera's H.264 stream, or None when it has none."""
        import av

        try:
            container = open_h264(real, self.opts)
        except av.FFmpegError as e:
            if getattr(e, "errno", None) not in _NO_H264:
                reason = getattr(e, "strerror", None) or type(e).__name__
                raise SourceError(f"cannot open {path}: {reason}") from None
            container = None
        except ValueError:  # a PyAV without FFmpeg's v4l2 demuxer
            container = None
        if container is not None and (
            not container.streams.video or container.streams.video[0].codec_context.name != "h264"
        ):
            container.close()
            container = None
        if container is None:
            if self.opts.format == "auto":
                self._no_h264 = True
                self.log.info("usb_no_h264", camera=self.camera_id, source=path)
            return None
        return H264Camera(container)

    def _read_h264(self, cam: H264Camera) -> RawFrame:
        import av

        while not cam.pending:
            try:
                packet = next(cam.packets)
            except StopIteration:
                raise SourceError(f"{self.cam.source}: the stream ended") from None
            except av.FFmpegError as e:
                if not os.path.exists(self.cam.source):
                    raise SourceError(f"{self.cam.source} disappeared (unplugged)") from None
                reason = getattr(e, "strerror", None) or type(e).__name__
                raise SourceError(f"{self.cam.source}: read failed ({reason})") from None
            if packet.size == 0:
                continue
            if self.packets is not None:
                self.packets.append(packet)  # kept compressed: clips are remuxed from these
            try:
                cam.pending.extend(packet.decode())
            except av.FFmpegError:
                self.decode_errors += 1  # a damaged access unit: the next keyframe repairs it
        frame = cam.pending.popleft()
        tb = frame.time_base or cam.time_base
        pts_s = None if frame.pts is None or tb is None else float(frame.pts * tb)
        return av_frame_to_raw(frame, None, pts_s=pts_s)  # shrunk on keeping (prepare)

    def read(self) -> RawFrame:
        if self.h264 is not None:
            return self._read_h264(self.h264)
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
        h264, self.h264 = self.h264, None
        if h264 is not None:
            h264.release()

    def metrics(self) -> dict[str, float | int | str]:
        out = super().metrics()
        out["corrupt_frames"] = self.corrupt_frames
        dev = self.h264 or self.device
        if dev is not None:
            out["format"] = dev.fourcc
            out["resolution"] = f"{dev.width}x{dev.height}"
        out["clips"] = "remux" if self.packets is not None else "encode"
        return out
