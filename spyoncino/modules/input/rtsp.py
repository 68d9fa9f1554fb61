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

Sub-stream and main stream: with ``rtsp.detect_url`` set, the sub-stream is the one decoded
(motion, detection, snapshots) and the main stream (``source``) is opened demux-only by a
``RecordStream`` on a thread of its own: no decoder is ever opened for it, its H.264 packets
go into the packet ring the clip recorder remuxes, so clips have the main stream's resolution
for the cost of receiving it. Each stream reconnects on its own; while the main stream is
down, clips are remuxed from the sub-stream's packets instead (lower resolution, said in
health as ``clip_stream: detect`` and in the log as ``clip_stream_fallback``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
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
    SourceFatal,
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
            "Sub-stream URL (e.g. 640x360) decoded for motion, detection and snapshots. The "
            "camera's `source` is then the main (record) stream: received without decoding, "
            "its packets are remuxed into clips at full resolution (clips fall back to the "
            "sub-stream while the main stream is down)."
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


def open_container(url: str, opts: RtspCamera, shown: str) -> Any:
    """A PyAV input container on ``url`` with our transport and timeouts (nothing decoded);
    failures raise log-safe ``SourceError``s naming the stream as ``shown``."""
    import av

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
            url,
            container_options=container_options,
            timeout=(opts.open_timeout_s, opts.read_timeout_s),
        )
    except av.FFmpegError as e:
        reason = explain(e, opts.open_timeout_s)
        raise (CameraUnreachable if _is_unreachable(e) else SourceError)(
            f"cannot open {shown}: {reason}"
        ) from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"{shown} has no video stream")
    return container


RecordState = Literal["connecting", "streaming", "reconnecting", "unsupported", "stopped"]


class RecordStream:
    """A camera's main stream beside its decoded sub-stream: demuxed, never decoded.

    Runs on a daemon thread of its own (a PyAV container stays on one thread), so it
    connects, stalls and reconnects independently of the sub-stream, with the input's
    exponential backoff. Its H.264 packets go into ``ring``, anchored to the pipeline's
    monotonic clock as they arrive (the sub-stream's frames are stamped when they arrive too,
    so a cut from an event's ``started_mono`` lands on the same moment of both streams, to a
    frame or so). No decoder is opened: ``decoder_open`` reads PyAV's ``is_open`` of the
    stream's codec context, which stays False (FFmpeg's stream probing at connect decodes a
    frame or two in a context of its own, once per connection).
    """

    def __init__(self, owner: RtspInput) -> None:
        self.owner = owner
        self.ring = PacketRing()
        self.state: RecordState = "connecting"
        self.packets = 0
        self.reconnects = 0
        self.last_error = ""
        self.size = (0, 0)
        self.codec = ""
        self.decoder_open = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Event | None = None

    @property
    def live(self) -> bool:
        """Packets flow and are on the frame clock: clips can be cut from ``ring``."""
        return self.state == "streaming" and self.ring.ready

    def start(self) -> None:
        """Start receiving (call on the event loop)."""
        # a fresh flag per run: a thread left behind by a slow stop never sees it cleared
        stop = self._stop = threading.Event()
        self.state = "connecting"
        loop = asyncio.get_running_loop()
        ended = self._ended = asyncio.Event()

        def run() -> None:
            try:
                self._run(stop)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed: the app exits
                    loop.call_soon_threadsafe(ended.set)

        self._thread = threading.Thread(
            target=run, name=f"spyoncino-rec-{self.owner.camera_id}", daemon=True
        )
        self._thread.start()

    async def stop(self, limit: float) -> None:
        """Ask the thread to end and wait up to ``limit`` seconds (it ends at its next packet,
        when its read times out, or once a connection attempt returns); a thread still busy
        then is left behind (a daemon that ends by itself, touching nothing)."""
        self._stop.set()
        self._thread, ended = None, self._ended
        if ended is not None:
            try:
                async with asyncio.timeout(limit):
                    await ended.wait()
            except TimeoutError:
                self.owner.log.warning("record_stream_close_timeout", camera=self.owner.camera_id)
        self.state = "stopped"

    def _run(self, stop: threading.Event) -> None:
        owner = self.owner
        attempt = 0
        while not stop.is_set():
            before = self.packets
            try:
                self._receive(stop)
                return  # asked to stop
            except SourceFatal as exc:
                self.state, self.last_error = "unsupported", str(exc)
                owner.log.warning(
                    "record_stream_unsupported", camera=owner.camera_id, error=self.last_error
                )
                return
            except SourceError as exc:
                if stop.is_set():
                    return
                self.last_error = owner.redact(str(exc))
            self.state = "reconnecting"
            attempt = 1 if self.packets > before else attempt + 1
            self.reconnects += 1
            delay = owner.backoff_delay(attempt)
            owner.log.warning(
                "record_stream_reconnecting",
                camera=owner.camera_id,
                source=owner.describe_record(),
                attempt=attempt,
                retry_in_s=round(delay, 2),
                error=self.last_error,
            )
            stop.wait(delay)

    def _receive(self, stop: threading.Event) -> None:
        """Open the main stream and put its packets in the ring until asked to stop."""
        import av

        owner = self.owner
        container = open_container(owner.cam.source, owner.opts, owner.describe_record())
        try:
            if stop.is_set():
                return  # stopped while connecting: leave the ring alone
            stream = container.streams.video[0]
            ctx = stream.codec_context
            self.codec, self.size = ctx.name, (ctx.width, ctx.height)
            ring = owner.budgeted_ring(self.ring)
            if not ring.reset(stream):
                raise SourceFatal(
                    f"the main stream is {ctx.name}, not H.264: clips come from the sub-stream"
                )
            tb = float(stream.time_base) if stream.time_base else 1 / 90000
            clock = owner.ctx.clock
            owner.log.info(
                "camera_record_opened",
                camera=owner.camera_id,
                source=owner.describe_record(),
                codec=ctx.name,
                width=ctx.width,
                height=ctx.height,
            )
            packets = container.demux(stream)
            while not stop.is_set():
                try:
                    packet = next(packets)
                except StopIteration:
                    raise SourceError("the camera ended the stream") from None
                except av.FFmpegError as e:
                    raise SourceError(explain(e, owner.opts.read_timeout_s)) from None
                if stop.is_set():
                    return
                if packet.pts is None or packet.size == 0:
                    continue
                ring.append(packet)  # compressed, as it came: never decoded
                ring.anchor(packet.pts * tb, clock.monotonic())
                self.packets += 1
                self.decoder_open = self.decoder_open or bool(ctx.is_open)
                if self.state != "streaming" and ring.ready:
                    self.state = "streaming"
                    owner.log.info(
                        "camera_record_streaming",
                        camera=owner.camera_id,
                        source=owner.describe_record(),
                    )
        finally:
            container.close()


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
        #: the main stream, received for clips, when a detect sub-stream is the one decoded
        self.record: RecordStream | None = None
        #: which stream the clips of the last frame were cut from: "main" or "detect"
        self.clip_stream = ""
        self._health_key: tuple[str, str] = ("", "")

    @classmethod
    def accepts(cls, source: str) -> bool:
        return source.strip().lower().startswith(SCHEMES)

    @property
    def url(self) -> str:
        """The stream this input decodes: the detect sub-stream when set, else the source."""
        return self.opts.detect_url or self.cam.source

    def describe_source(self) -> str:
        return redact_url(self.url)

    def describe_record(self) -> str:
        """The main (record) stream, log-safe."""
        return redact_url(self.cam.source)

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
        self.record = RecordStream(self) if self.opts.detect_url else None

    async def start(self) -> None:
        await super().start()
        if self.record is not None:
            self.record.start()

    async def stop(self) -> None:
        await super().stop()
        if self.record is not None:
            await self.record.stop(self.abandon_after)

    def clip_packets(self) -> PacketRing | None:
        """The main stream's packets while it streams, else the decoded stream's own.

        Called on the event loop for each frame published. The sub-stream's ring keeps as
        much as the clip recorder asked of the main one, so a fallback has its pre-roll.
        """
        rec = self.record
        if rec is None:
            return self.packets
        ring = rec.ring if rec.live else self.packets
        if ring is rec.ring and self.packets is not None:
            self.packets.retain(rec.ring.keep_s)
        stream = "main" if ring is rec.ring else "detect"
        if stream != self.clip_stream:
            if stream == "detect" and ring is not None and self.clip_stream == "main":
                self.log.warning(
                    "clip_stream_fallback",
                    camera=self.camera_id,
                    record_state=rec.state,
                    width=ring.width,
                    height=ring.height,
                )
            elif stream == "main":
                self.log.info("clip_stream_main", camera=self.camera_id, size=rec.size)
            self.clip_stream = stream
        key = (self.cam_state, rec.state)
        if key != self._health_key:
            self._health_key = key
            if self.cam_state == "streaming":
                if rec.live:
                    self.set_state("ok", "streaming")
                elif rec.state == "connecting":  # the first connection, not a failure yet
                    self.set_state("ok", "streaming; main stream connecting")
                else:
                    detail = f"streaming; main stream {rec.state}: clips from the sub-stream"
                    self.set_state("degraded", detail, rec.last_error or None)
        return ring

    @staticmethod
    def auto_threads(width: int, height: int) -> int:
        return 1 if 0 < width * height <= 1280 * 720 else 2

    # -- blocking parts, on the camera's thread ------------------------------------------------
    def open(self) -> None:
        opts = self.opts
        container = open_container(self.url, opts, self.describe_source())
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
        ring = self.budgeted_ring(self.packets)
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
        return av_frame_to_raw(frame, None, pts_s=pts_s)  # shrunk on keeping (prepare)

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
        rec = self.record
        if rec is not None:
            # the decoded stream is the sub-stream; the main one is only received, for clips
            out["record_source"] = self.describe_record()
            out["record_state"] = rec.state
            out["record_packets"] = rec.packets
            out["record_reconnects"] = rec.reconnects
            out["record_decoder_open"] = int(rec.decoder_open)
            out["record_last_error"] = rec.last_error
            if rec.size[0]:
                out["record_resolution"] = f"{rec.size[0]}x{rec.size[1]}"
            out["clip_stream"] = self.clip_stream or "none"
        out["decode_errors"] = self.decode_errors
        if self.decoder_name:
            out["decoder"] = self.decoder_name
        if self.stream_size[0]:
            out["resolution"] = f"{self.stream_size[0]}x{self.stream_size[1]}"
        return out
