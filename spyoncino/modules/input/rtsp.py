"""Network cameras over RTSP, received and decoded with PyAV (FFmpeg).

Cheap by construction: the luma plane motion reads is a view of the decoder's Y plane
(downscaled once), and the full-size BGR image is converted only when a consumer asks for
``frame.image`` (the detector on motion, a snapshot). ``cv2.VideoCapture`` converts every frame
to BGR whether anyone looks at it or not; that conversion is most of what we save.

Robust by construction: TCP transport by default (no smeared frames from lost UDP packets),
open and read timeouts enforced by FFmpeg's interrupt callback, exponential backoff with
jitter (capped at 30 s) between attempts, and a stall watchdog in the base class. The URL's
credentials never reach a log line, health or the status page: everything shown goes through
``redact_url``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field

from spyoncino.core.config import AppConfig, redact_url
from spyoncino.core.contracts import CameraOptions, ModuleConfig, ModuleConfigError, ModuleContext
from spyoncino.helpers.camera import (
    CameraInput,
    RawFrame,
    SourceError,
    SourceStalled,
    av_frame_to_raw,
)
from spyoncino.helpers.packets import PacketRing

SCHEMES = ("rtsp://", "rtsps://")


class Config(ModuleConfig):
    type: Literal["rtsp"] = "rtsp"
    decoder_threads: int = Field(
        default=0,
        ge=0,
        le=16,
        description=(
            "FFmpeg decoder threads per stream. 0: automatic, one thread up to 1280x720 "
            "(the least CPU per frame; each camera already has its own thread) and two above "
            "(one Pi 4 core cannot decode 1080p H.264 in real time)."
        ),
    )
    thread_type: Literal["SLICE", "FRAME", "AUTO"] = Field(
        default="AUTO",
        description="FFmpeg decoder threading when threads > 1: SLICE, FRAME or AUTO (both).",
    )
    hw_decoder: Literal["off", "auto", "h264_v4l2m2m", "h264_cuvid"] = Field(
        default="off",
        description=(
            "Hardware H.264 decoding: h264_v4l2m2m (Raspberry Pi 4's decoder), h264_cuvid "
            "(NVDEC: Jetson, NVIDIA GPUs), auto (the first that opens). Falls back to the "
            "software decoder when it does not open or fails on a packet. Not measured here."
        ),
    )


class RtspCamera(CameraOptions):
    """``cameras.<id>.rtsp``: per-camera RTSP settings."""

    transport: Literal["tcp", "udp"] = Field(
        default="tcp",
        description="RTP transport. TCP survives lossy Wi-Fi without smeared frames; UDP has "
        "less latency on a clean wired LAN.",
    )
    detect_url: str | None = Field(
        default=None,
        description=(
            "Sub-stream URL (e.g. 640x360) decoded for motion and detection. The camera's "
            "`source` stays the main (record) stream and is not decoded by this input."
        ),
    )
    open_timeout_s: float = Field(
        default=10.0, ge=1.0, le=120.0, description="Seconds to connect and start the stream."
    )
    read_timeout_s: float = Field(
        default=5.0, ge=0.5, le=120.0, description="Seconds without data before a read fails."
    )
    stall_timeout_s: float = Field(
        default=10.0,
        ge=1.0,
        le=600.0,
        description="Seconds without a decoded frame before the stream is reopened.",
    )
    fast_decode: bool = Field(
        default=False,
        description=(
            "Skip H.264's deblocking filter: about 20% less decoding CPU for slightly blockier "
            "pictures (48.7 dB PSNR against the full decode on the sample footage). Worth it "
            "on a detect sub-stream whose pictures are only analysed."
        ),
    )


def explain(exc: Exception, timeout_s: float) -> str:
    """A short, log-safe reason for a PyAV/FFmpeg failure (never the URL, which may hold a
    password: PyAV puts it in ``filename``, so only ``strerror`` is used)."""
    import av

    if isinstance(exc, av.error.HTTPUnauthorizedError):
        return "401 Unauthorized: the camera refused the user name or password"
    if isinstance(exc, av.error.HTTPForbiddenError):
        return "403 Forbidden: the user may not read this stream"
    if isinstance(exc, av.error.HTTPNotFoundError):
        return "404 Not Found: no stream at this path (check the URL's path)"
    if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)):
        return f"no data for {timeout_s:g}s (timed out)"
    if isinstance(exc, av.error.ConnectionRefusedError):
        return "connection refused (camera off or wrong port)"
    if isinstance(exc, av.error.EOFError):
        return "the camera closed the stream"
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    return str(reason)


class CameraUnreachable(SourceError):
    """Nothing answers at the camera's address: waiting can end as soon as its port opens."""


#: seconds between TCP probes while an unreachable camera's backoff runs
PROBE_INTERVAL = 2.0


def _is_unreachable(exc: Exception) -> bool:
    import av

    return isinstance(
        exc, (av.error.ConnectionRefusedError, av.error.ExitError, av.error.TimeoutError)
    ) or getattr(exc, "errno", None) in (101, 110, 111, 113)  # net/host unreachable, timeouts


def _is_timeout(exc: Exception) -> bool:
    import av

    return isinstance(exc, (av.error.ExitError, av.error.TimeoutError))


class RtspInput(CameraInput[Config]):
    """``rtsp://`` and ``rtsps://`` cameras."""

    Config: ClassVar[type[ModuleConfig]] = Config
    Camera: ClassVar[type[CameraOptions] | None] = RtspCamera

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.opts = RtspCamera()
        self.settings = Config()
        self._container: Any = None
        self._packets: Any = None
        self._pending: deque[Any] = deque()
        self._last_decoded = 0.0
        self.stream_size = (0, 0)
        self._time_base = 1 / 90000
        self._decoder: Any = None
        self.decoder_name = ""

    @classmethod
    def accepts(cls, source: str) -> bool:
        return source.strip().lower().startswith(SCHEMES)

    @property
    def url(self) -> str:
        """The stream this input decodes: the detect sub-stream when set, else the source."""
        return self.opts.detect_url or self.cam.source

    def describe_source(self) -> str:
        return redact_url(self.url)

    async def check(self, app: AppConfig) -> None:
        cam = app.cameras[self.camera_id]
        opts = cam.options(self.name or "rtsp", RtspCamera)
        for key, value in (("source", cam.source), ("rtsp.detect_url", opts.detect_url)):
            if value is None:
                continue
            parts = urlsplit(value)
            if not value.lower().startswith(SCHEMES) or not parts.hostname:
                raise ModuleConfigError(
                    f"cameras.{self.camera_id}.{key}: {redact_url(value)!r} is not an "
                    "rtsp://[user:password@]host[:port]/path URL"
                )

    async def configure(self, app: AppConfig) -> None:
        await self.check(app)  # a refused source is never adopted, so never opened
        await super().configure(app)
        self.settings = self.config_of(app)
        self.opts = self.cam.options(self.name or "rtsp", RtspCamera)
        self.stall_timeout = self.opts.stall_timeout_s
        # FFmpeg enforces the open timeout itself; the base's watchdog is the backstop.
        self.open_timeout = self.opts.open_timeout_s + 5.0

    @staticmethod
    def auto_threads(width: int, height: int) -> int:
        return 1 if 0 < width * height <= 1280 * 720 else 2

    # -- blocking parts, on the camera's thread ------------------------------------------------
    def open(self) -> None:
        import av

        opts = self.opts
        container_options = {
            "rtsp_transport": opts.transport,
            # socket I/O timeout, microseconds (FFmpeg >= 5 calls it 'timeout')
            "timeout": str(int(opts.read_timeout_s * 1_000_000)),
            # do not SETUP the audio track: less bandwidth, nothing to demux
            "allowed_media_types": "video",
        }
        if opts.transport == "udp":
            container_options["max_delay"] = "500000"  # reorder window for late UDP packets
            container_options["buffer_size"] = str(1 << 20)
        try:
            container = av.open(
                self.url,
                container_options=container_options,
                timeout=(opts.open_timeout_s, opts.read_timeout_s),
            )
        except av.FFmpegError as e:
            reason = explain(e, opts.open_timeout_s)
            raise (CameraUnreachable if _is_unreachable(e) else SourceError)(
                f"cannot open {self.describe_source()}: {reason}"
            ) from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.describe_source()} has no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        threads = self.settings.decoder_threads or self.auto_threads(ctx.width, ctx.height)
        ctx.thread_count = threads
        ctx.thread_type = self.settings.thread_type
        if opts.fast_decode:
            ctx.options = {"skip_loop_filter": "all"}  # applied when the decoder opens
        self._decoder = self._open_hw_decoder(stream) if ctx.name == "h264" else None
        self._container = container
        self._packets = container.demux(stream)
        self._time_base = float(stream.time_base) if stream.time_base else 1 / 90000
        ring = self.packets or PacketRing()
        ring.budget_bytes = int(self.ctx.app.runtime.camera_buffer_mb * 1_000_000)
        self.packets = ring if ring.reset(stream) else None
        self._pending.clear()
        self._last_decoded = time.monotonic()
        self.log.info(
            "camera_opened",
            camera=self.camera_id,
            source=self.describe_source(),
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            transport=opts.transport,
            decoder=self.decoder_name,
            decoder_threads=threads,
            fast_decode=opts.fast_decode,
        )

    def read(self) -> RawFrame:
        import av

        while not self._pending:
            if self._packets is None:
                raise SourceError("stream is not open")
            try:
                packet = next(self._packets)
            except StopIteration:
                raise SourceError("the camera ended the stream") from None
            except av.FFmpegError as e:
                reason = explain(e, self.opts.read_timeout_s)
                raise (SourceStalled if _is_timeout(e) else SourceError)(reason) from None
            if self.packets is not None:
                self.packets.append(packet)  # kept compressed: clips are remuxed from these
            try:
                if self._decoder is not None:
                    self._pending.extend(self._hw_decode(packet))
                else:
                    self._pending.extend(packet.decode())
            except av.FFmpegError:
                # a damaged packet (lost UDP data): skip it, the next keyframe repairs the picture
                self.decode_errors += 1
            if not self._pending and time.monotonic() - self._last_decoded > self.stall_timeout:
                raise SourceStalled(f"data but no decodable picture for {self.stall_timeout:g}s")
        frame = self._pending.popleft()
        self._last_decoded = time.monotonic()
        return self.to_raw(frame)

    #: hardware decoders ``auto`` tries, in order
    HW_DECODERS: ClassVar[tuple[str, ...]] = ("h264_v4l2m2m", "h264_cuvid")

    def _open_hw_decoder(self, stream: Any) -> Any:
        """A hardware decoder for ``stream`` when configured and it opens, else None (the
        stream's own software decoder). FFmpeg builds list these decoders whether or not the
        board has the hardware, so only opening one tells."""
        import av

        want = self.settings.hw_decoder
        self.decoder_name = stream.codec_context.name
        if want == "off":
            return None
        for name in self.HW_DECODERS if want == "auto" else (want,):
            try:
                dec: Any = av.CodecContext.create(name, "r")
                src = stream.codec_context
                dec.extradata = src.extradata
                dec.width, dec.height = src.width, src.height
                dec.open()
            except Exception as e:  # not built in, no device, refused by the driver
                self.log.info("hw_decoder_unavailable", decoder=name, error=type(e).__name__)
                continue
            self.decoder_name = name
            return dec
        self.log.warning("hw_decoder_fallback", wanted=want, decoder=self.decoder_name)
        return None

    def _hw_decode(self, packet: Any) -> list[Any]:
        """Decode on the hardware decoder; its first failure switches to software for good
        (until the next open): the software decoder starts at the next keyframe."""
        import av

        try:
            return list(self._decoder.decode(packet))
        except av.FFmpegError as e:
            self.log.warning("hw_decoder_failed", decoder=self.decoder_name, error=type(e).__name__)
            self._decoder = None
            self.decoder_name = f"h264 (software; {self.decoder_name} failed)"
            return []

    def to_raw(self, frame: Any) -> RawFrame:
        """Luma from the Y plane now; BGR only when someone calls ``decode``."""
        self.stream_size = (frame.width, frame.height)
        pts_s = None if frame.pts is None else frame.pts * self._time_base
        return av_frame_to_raw(frame, self.cam.luma_width, pts_s=pts_s)

    async def wait_before_retry(self, delay: float, error: SourceError) -> None:
        """Back off, but end the wait when the camera's port accepts connections again.

        Full reopen attempts (RTSP handshake, stream probing) back off up to 30 s; a bare TCP
        connect every ``PROBE_INTERVAL`` seconds costs nothing and brings a camera that was
        off for minutes back within seconds of its return. Only for cameras that did not
        answer at all: a 401 or 404 comes from a camera that is up, so probing would defeat
        the backoff.
        """
        if not isinstance(error, CameraUnreachable):
            await asyncio.sleep(delay)
            return
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = parts.port or (322 if parts.scheme.lower() == "rtsps" else 554)
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(PROBE_INTERVAL, left))
            if time.monotonic() >= deadline:
                return
            try:
                async with asyncio.timeout(1.0):
                    _, writer = await asyncio.open_connection(host, port)
            except (OSError, TimeoutError):
                continue
            writer.close()
            self.log.info("camera_port_open", camera=self.camera_id, source=self.describe_source())
            return

    def close(self) -> None:
        container, self._container = self._container, None
        self._packets = None
        self._decoder = None
        self._pending.clear()
        if container is not None:
            container.close()

    def metrics(self) -> dict[str, float | int | str]:
        out = super().metrics()
        out["transport"] = self.opts.transport
        out["stream"] = "detect" if self.opts.detect_url else "main"
        out["decode_errors"] = self.decode_errors
        if self.decoder_name:
            out["decoder"] = self.decoder_name
        if self.stream_size[0]:
            out["resolution"] = f"{self.stream_size[0]}x{self.stream_size[1]}"
        return out
