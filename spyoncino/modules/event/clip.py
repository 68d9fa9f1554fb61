"""MP4 clips (H.264, yuv420p, faststart) that start a few seconds before the event.

**Pre-roll.** Per camera, a ring buffer keeps the last ``preroll_s`` seconds of frames,
sampled at ``fps`` and downscaled to ``width`` (never upscaled), as raw I420 planes (1.5 bytes
per pixel). Its memory is bounded by ``preroll_budget_mb`` and the camera's budget from the
hardware profile (``runtime.camera_buffer_mb``): the stated budget of a camera is
``min(preroll_budget_mb, camera_buffer_mb, (ceil((preroll_s + 0.5) x fps) + 1) x W x H x 1.5)``
with W x H the clip size (the extra half second covers the confirmation delay), e.g. 12.4 MB for the
defaults (3 s, 10 fps, 640 px wide) on a 16:9 camera and 16.6 MB on a 4:3 one, whatever the
camera resolution. Frames
are decoded only at ``fps`` (a 25 fps camera pays for 10 decodes a second), and only frames
the ring keeps.

**Encoding.** Nothing is encoded while no event is open. When one starts, one encoder per
camera (``h264_v4l2m2m`` when the board has it, else ``libx264`` ultrafast/zerolatency, a
keyframe every ``keyframe_s``) encodes the ring, then every sampled frame, into packets.

**Open activities on disk, not in memory.** A session's packets (encoded, or the camera's own
when remuxing) are appended to a file in ``storage.scratch`` in batches of ``FLUSH_BYTES`` as
they come, in files of ``SEGMENT_BYTES``; memory keeps one small index entry per packet and
at most one batch, so a 120 s activity of a 4 Mbit/s camera costs what a 5 s one does
(``runtime.camera_buffer_mb`` bounds the pre-roll; the rest is on disk). A file is deleted as
soon as no clip needs any packet in it (CPython frees it with the last reference).

Events that overlap on a camera share that one encoding: each event's clip is cut
from the packets, from the last keyframe at or before ``start - preroll_s`` to
``end + postroll_s``, and muxed (no re-encode) into an MP4 with ``movflags=+faststart`` so
phones and Telegram play it inline. The file is assembled in ``storage.scratch`` (which can
be a tmpfs) and moved into place crash-safely (``spyoncino.helpers.files.atomic_move``).

**On request.** A ``control.command`` ``clip`` (Telegram's ``/clip [camera] [seconds]``) gets
the last ``duration_s`` seconds (default 10) of that camera, as event ``manual-<request id>``:
what the ring holds is taken from it, and when it holds less the clip records forward from
now until it is that long (bounded by ``max_duration_s``). It goes through the same encoder
(shared with any open event) and the same crash-safe write.

Publishes ``media.clip.ready`` (``MediaArtifact`` with the clip's duration).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import secrets
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import cv2
import numpy as np
from pydantic import Field

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig, ModuleContext
from spyoncino.helpers.files import atomic_move, media_relpath
from spyoncino.helpers.packets import PacketRing, cut_decodable
from spyoncino.schemas import topics
from spyoncino.schemas.control import ControlCommand, manual_event_ids
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Frame, Image
from spyoncino.schemas.media import MediaArtifact

MS = Fraction(1, 1000)
#: an open activity's packets are written to ``storage.scratch`` in batches of this many bytes
#: (what a camera's clip holds in memory beyond its pre-roll), into files of SEGMENT_BYTES; a
#: file goes when no clip needs any packet in it
FLUSH_BYTES = 256_000
SEGMENT_BYTES = 8_000_000
SPOOL_PREFIX = ".clip-packets-"
SPOOL_SUFFIX = ".bin"
#: the ring keeps this much more than the pre-roll: an event is confirmed a few frames after
#: the object was first seen, and the pre-roll counts from the first sighting
CONFIRM_MARGIN_S = 0.5
#: a requested clip's length when the command gives none
MANUAL_DEFAULT_S = 10.0


class Config(ModuleConfig):
    type: Literal["clip"] = "clip"
    preroll_s: float = Field(
        default=3.0, ge=0.0, le=30.0, description="Seconds kept before an event."
    )
    postroll_s: float = Field(
        default=2.0, ge=0.0, le=60.0, description="Seconds recorded after an event ends."
    )
    fps: float = Field(default=10.0, ge=1.0, le=30.0, description="Highest clip frame rate.")
    width: int = Field(
        default=640, ge=160, le=1920, description="Clip width in pixels (never upscaled)."
    )
    preroll_budget_mb: float = Field(
        default=24.0,
        ge=0.5,
        le=512.0,
        description="Memory cap of one camera's pre-roll ring (MB); runtime.camera_buffer_mb "
        "caps it too.",
    )
    max_duration_s: float = Field(
        default=120.0, ge=5.0, le=3600.0, description="Longest clip; a longer event is cut here."
    )
    encoder: Literal["auto", "libx264", "h264_v4l2m2m"] = Field(
        default="auto", description="auto: the Pi's hardware encoder when present, else libx264."
    )
    crf: int = Field(
        default=26, ge=10, le=45, description="libx264 quality (lower: better, bigger)."
    )
    bitrate_kbps: int = Field(
        default=1500, ge=100, le=20000, description="Hardware encoder bitrate (kbit/s)."
    )
    keyframe_s: float = Field(
        default=1.0, ge=0.25, le=10.0, description="Keyframe interval: how exactly clips are cut."
    )
    remux: bool = Field(
        default=True,
        description="Where the camera sends H.264 (RTSP, an .mp4 file), cut the clip from its "
        "own packets (no decode, no encode, full camera resolution) instead of encoding.",
    )
    resume_grace_s: float = Field(
        default=30.0,
        ge=0.0,
        le=600.0,
        description="An event that resumes this soon after its clip was written (the tracker's "
        "cooldown) gets the clip rewritten to cover all of it; keep >= tracker.cooldown_s.",
    )


def clip_size(cfg: Config, width: int, height: int) -> tuple[int, int]:
    """The clip's frame size for a camera of ``width`` x ``height`` (even, never upscaled)."""
    w = min(width, cfg.width)
    h = round(height * w / width)
    return max(2, w - w % 2), max(2, h - h % 2)


def preroll_budget(
    cfg: Config, width: int, height: int, camera_buffer_mb: float | None = None
) -> int:
    """The stated pre-roll memory of one camera, in bytes (within ``runtime.camera_buffer_mb``
    when given)."""
    w, h = clip_size(cfg, width, height)
    frames = math.ceil((cfg.preroll_s + CONFIRM_MARGIN_S) * cfg.fps) + 1
    return min(_cap_bytes(cfg, camera_buffer_mb), frames * w * h * 3 // 2)


def _cap_bytes(cfg: Config, camera_buffer_mb: float | None) -> int:
    cap = (
        cfg.preroll_budget_mb
        if camera_buffer_mb is None
        else min(cfg.preroll_budget_mb, camera_buffer_mb)
    )
    return int(cap * 1_000_000)


class _Segment:
    """One append-only file of an open activity's packet bytes in ``storage.scratch``.

    Closed and deleted when the last packet that refers to it goes (CPython frees it then:
    a trimmed session, a written clip whose event can no longer resume), and at exit.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self.size = 0
        weakref.finalize(self, _drop_segment, self.fd, path)

    def append(self, chunk: bytes) -> int:
        """Write ``chunk`` at the end; returns its offset."""
        off = self.size
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(chunk)
        return off

    def read(self, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)


def _drop_segment(fd: int, path: Path) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()


@dataclass(slots=True)
class _Packet:
    pts: int  # milliseconds of the camera's monotonic clock
    key: bool
    #: the bytes while in memory; None once written to ``seg`` at ``off`` (``size`` bytes)
    data: bytes | None
    dts: int | None = None  # decode order (B-frames of a remuxed source); None: = pts
    seg: _Segment | None = None
    off: int = 0
    size: int = 0

    @property
    def decode_ts(self) -> int:
        return self.pts if self.dts is None else self.dts

    def payload(self) -> bytes:
        data = self.data
        if data is not None:
            return data
        assert self.seg is not None  # set before data is let go (another thread may read)
        return self.seg.read(self.off, self.size)


_serials = itertools.count(1)


@dataclass
class _Session:
    codec: Any
    encoder: str
    size: tuple[int, int]
    packets: list[_Packet] = field(default_factory=list)
    last_pts: int = -1
    serial: int = field(default_factory=lambda: next(_serials))
    #: a remux session: the camera's packet ring, the last packet taken from it, its frame rate
    source: PacketRing | None = None
    source_seq: int = 0
    last_dts: int = -(10**12)
    rate: float = 0.0
    #: where the packets go as they come (None: kept in memory, as a bench does)
    spool_dir: Path | None = None
    segment: _Segment | None = None
    segments: int = 0
    #: packets still in memory, not yet written to the segment, and their bytes
    unwritten: list[_Packet] = field(default_factory=list)
    unwritten_bytes: int = 0
    flushing: bool = False

    def add(self, packet: _Packet) -> None:
        self.packets.append(packet)
        if self.spool_dir is not None:
            self.unwritten.append(packet)
            self.unwritten_bytes += len(packet.data or b"")

    def due(self) -> bool:
        """Enough is in memory to be written (one write per batch, not per packet)."""
        return self.unwritten_bytes >= FLUSH_BYTES and not self.flushing

    def take_unwritten(self) -> list[_Packet]:
        batch, self.unwritten, self.unwritten_bytes = self.unwritten, [], 0
        return batch

    def write(self, batch: list[_Packet]) -> None:
        """Append ``batch`` to the segment file (blocking: a worker thread, or the worker the
        encoder runs on) and let go of its bytes in memory."""
        if not batch or self.spool_dir is None:
            return
        seg = self.segment
        if seg is None or seg.size >= SEGMENT_BYTES:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            self.segments += 1
            name = f"{SPOOL_PREFIX}{os.getpid()}-{self.serial}-{self.segments}{SPOOL_SUFFIX}"
            seg = self.segment = _Segment(self.spool_dir / name)
        chunks = [p.data or b"" for p in batch]
        off = seg.append(b"".join(chunks))
        for p, chunk in zip(batch, chunks, strict=True):
            p.seg, p.off, p.size = seg, off, len(chunk)
            p.data = None  # after seg: a reader on another thread finds one or the other
            off += len(chunk)


@dataclass
class _Clip:
    event_id: str
    started_at: float
    start_mono: float
    end_mono: float | None = None
    #: what was written when the event first ended; kept while the event may still resume
    prefix: list[_Packet] = field(default_factory=list)
    prefix_session: int = 0
    finished_mono: float | None = None
    size: tuple[int, int] = (0, 0)
    #: asked for (``/clip``): exactly ``start_mono``..``end_mono``, no pre-roll nor post-roll
    manual: bool = False

    def needs_from_ms(self, preroll_s: float) -> int:
        """The oldest packet this clip still needs from the camera's session."""
        if self.prefix:
            return self.prefix[-1].pts + 1
        return round((self.start_mono - (0.0 if self.manual else preroll_s)) * 1000)


@dataclass
class _Cam:
    camera_id: str
    ring: deque[tuple[float, Image]] = field(default_factory=deque)
    ring_bytes: int = 0
    last_sample: float = -1e18
    clock: float = 0.0
    clock_real: float = 0.0
    session: _Session | None = None
    clips: dict[str, _Clip] = field(default_factory=dict)
    recent: dict[str, _Clip] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    budget_warned: bool = False
    #: the camera's own H.264 packets, when it sends them: clips are remuxed from these
    source: PacketRing | None = None

    def oldest(self) -> float | None:
        """Frame-clock time of the oldest picture a clip could start at, None: nothing kept."""
        if self.source is not None:
            return self.source.oldest_mono()
        return self.ring[0][0] if self.ring else None

    def now(self, real: float) -> float:
        """The frame clock at ``real`` (the module's clock): the last frame's time advanced by
        the time since it came."""
        if not self.clock_real:
            return self.clock  # no frame yet: time stands still
        return self.clock + (real - self.clock_real)


def open_encoder(name: str, cfg: Config, size: tuple[int, int]) -> Any:
    import av

    codec: Any = av.CodecContext.create(name, "w")
    codec.width, codec.height = size
    codec.pix_fmt = "yuv420p"
    codec.time_base = MS
    codec.framerate = Fraction(cfg.fps).limit_denominator(1000)
    codec.gop_size = max(1, round(cfg.fps * cfg.keyframe_s))
    codec.max_b_frames = 0
    if name == "libx264":
        # zerolatency: a packet out for every frame in, so cuts never wait for a lookahead;
        # SPS/PPS stay in-band, so every keyframe can start a clip
        codec.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": str(cfg.crf)}
    else:
        codec.bit_rate = cfg.bitrate_kbps * 1000
    codec.open()
    return codec


def probe_encoder(cfg: Config) -> str:
    """The encoder to use: the hardware one only when it really opens and encodes."""
    if cfg.encoder != "auto":
        return cfg.encoder
    import av

    try:
        codec = open_encoder("h264_v4l2m2m", cfg, (64, 64))
        frame = av.VideoFrame.from_ndarray(np.zeros((96, 64), np.uint8), format="yuv420p")
        frame.pts, frame.time_base = 0, MS
        codec.encode(frame)
        return "h264_v4l2m2m"
    except Exception:
        return "libx264"


def encode_into(session: _Session, i420: Image, mono: float) -> None:
    import av

    frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
    pts = max(session.last_pts + 1, round(mono * 1000))
    session.last_pts = pts
    frame.pts, frame.time_base = pts, MS
    for p in session.codec.encode(frame):
        session.add(_Packet(int(p.pts), bool(p.is_keyframe), bytes(p)))


def take_source(session: _Session) -> None:
    """Move the packets the camera sent since the last call into a remux session.

    Source timestamps become frame-clock milliseconds (so cuts use the events' clock), kept
    strictly increasing in decode order across a reconnect. A reopened stream of another size
    cannot continue the same file: the session stops taking packets.
    """
    src = session.source
    assert src is not None
    _, off, fresh = src.after(session.source_seq)
    if not fresh:
        return
    session.source_seq = fresh[-1].seq
    if (src.width, src.height) != session.size:
        return
    shift = round(off)
    for p in fresh:
        dts = max(session.last_dts + 1, p.dts + shift)
        pts = max(dts, p.pts + shift)
        session.last_dts = dts
        session.last_pts = max(session.last_pts, pts)
        session.add(_Packet(pts, p.key, p.data, dts))


def mux_mp4(packets: list[_Packet], size: tuple[int, int], fps: float, path: Path) -> float:
    """Write ``packets`` as an MP4 (faststart) at ``path``; returns the duration in seconds."""
    import av

    base = packets[0].decode_ts
    frame_ms = round(1000 / fps)
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_mux_stream(
            "h264", rate=Fraction(fps).limit_denominator(1000), width=size[0], height=size[1]
        )
        stream.time_base = MS
        for i, p in enumerate(packets):
            pkt = av.Packet(p.payload())
            pkt.pts, pkt.dts = p.pts - base, p.decode_ts - base
            dts = p.decode_ts
            nxt = packets[i + 1].decode_ts if i + 1 < len(packets) else dts + frame_ms
            pkt.duration = max(1, nxt - dts)
            pkt.time_base = MS
            pkt.is_keyframe = p.key
            pkt.stream = stream
            out.mux(pkt)
    return (max(p.pts for p in packets) - min(p.pts for p in packets) + frame_ms) / 1000.0


def _clean_spool(scratch: Path) -> None:
    """Packet files a crash left behind (a running recorder deletes its own)."""
    if scratch.is_dir():
        for p in scratch.glob(f"{SPOOL_PREFIX}*{SPOOL_SUFFIX}"):
            if not p.name.startswith(f"{SPOOL_PREFIX}{os.getpid()}-"):
                with contextlib.suppress(OSError):
                    p.unlink()


class ClipRecorder(BaseModule[Config]):
    category: ClassVar[Any] = "event"
    Config: ClassVar[type[ModuleConfig]] = Config

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.root = Path(".")
        self.scratch = Path(".scratch")
        self.tz: str | None = None
        self.encoder = "libx264"
        self.cams: dict[str, _Cam] = {}
        self.clips_written = 0
        self.bytes_written = 0
        self.frames_encoded = 0
        self.encode_s = 0.0
        self._finalizing = 0
        self.resumed = 0
        self.clips_remuxed = 0
        self.bytes_spooled = 0
        self._camera_ids: list[str] = []

    async def configure(self, app: AppConfig) -> None:
        self.cfg = self.config_of(app)
        self.root = app.storage.root
        self.scratch = app.storage.scratch_dir
        self.tz = app.runtime.timezone
        self._camera_ids = [cid for cid, cam in app.cameras.items() if cam.enabled]

    async def start(self) -> None:
        self.encoder = await self.ctx.executor.run(probe_encoder, self.cfg)
        await self.ctx.executor.run(_clean_spool, self.scratch)
        for phase in ("started", "updated", "ended"):
            self.subscribe(topics.EVENT.pattern(phase=phase), self._on_event, policy="block")
        self.subscribe(topics.CONTROL.name, self._on_command, policy="block")
        # one subscription per camera so that one camera's frames never crowd out another's
        ids = self._camera_ids or ["*"]
        for cid in ids:
            self.subscribe(topics.FRAME.at(camera=cid), self._on_frame, policy="latest", maxsize=2)
        self.spawn(self._tick_loop(), "tick")
        self.set_state("ok", f"encoder {self.encoder}")

    def _cam(self, camera_id: str) -> _Cam:
        cam = self.cams.get(camera_id)
        if cam is None:
            cam = self.cams[camera_id] = _Cam(camera_id)
        return cam

    # -- frames ------------------------------------------------------------------------------
    async def _on_frame(self, msg: Message[Frame]) -> None:
        f = msg.payload
        cam = self._cam(f.camera_id)
        cam.clock, cam.clock_real = max(cam.clock, f.mono_ts), self.ctx.clock.monotonic()
        src = f.source_packets if self.cfg.remux else None
        if src is not None:
            # the camera's own H.264: nothing to do per frame unless a clip is open (a ring
            # not ready yet, just reopened, waits for its first keyframe and frame)
            if not src.ready:
                await self._finish_due(cam)
                return
            if cam.source is not src:
                self._use_source(cam, src)
            if cam.session is not None and cam.session.source is not None:
                take_source(cam.session)
            elif cam.clips and cam.session is None:
                self._open_session(cam)
            if cam.session is not None and cam.session.due():
                await self._write_out(cam.session)
            await self._finish_due(cam)
            return
        if cam.source is not None:
            cam.source = None  # the source stopped sending H.264 (reconfigured): encode again
        if f.mono_ts - cam.last_sample >= 0.95 / self.cfg.fps and f.has_image:
            cam.last_sample = f.mono_ts
            async with cam.lock:
                await self.ctx.executor.run(self._ingest, cam, f)
        await self._finish_due(cam)

    def _ingest(self, cam: _Cam, f: Frame) -> None:
        size = clip_size(self.cfg, f.width, f.height)
        img = f.image
        if (img.shape[1], img.shape[0]) != size:
            img = cast("Image", cv2.resize(img, size, interpolation=cv2.INTER_AREA))
        i420 = cast("Image", cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420))
        if cam.ring and cam.ring[0][1].shape != i420.shape:
            cam.ring.clear()  # the camera changed resolution
            cam.ring_bytes = 0
        cam.ring.append((f.mono_ts, i420))
        cam.ring_bytes += i420.nbytes
        budget = _cap_bytes(self.cfg, self.ctx.app.runtime.camera_buffer_mb)
        horizon = f.mono_ts - self.cfg.preroll_s - CONFIRM_MARGIN_S
        while cam.ring and (cam.ring[0][0] < horizon or cam.ring_bytes > budget):
            if cam.ring[0][0] >= horizon and not cam.budget_warned:
                cam.budget_warned = True
                self.log.warning(
                    "preroll_budget_short",
                    camera=cam.camera_id,
                    budget_mb=budget / 1_000_000,
                )
            cam.ring_bytes -= cam.ring.popleft()[1].nbytes
        if cam.session is not None:
            if cam.session.codec is not None:  # not a remux session whose source went away
                self._encode(cam.session, i420, f.mono_ts)
        elif cam.clips:
            self._open_session(cam)  # an event started before this camera's first frame

    def _encode(self, session: _Session, i420: Image, mono: float) -> None:
        t0 = time.perf_counter()
        encode_into(session, i420, mono)
        self.encode_s += time.perf_counter() - t0
        self.frames_encoded += 1
        if session.due():  # on the encoder's worker already: write here
            self._write_batch(session, session.take_unwritten())

    async def _write_out(self, session: _Session) -> None:
        """Write a remux session's packets out (the camera's packets come on the loop)."""
        session.flushing = True
        try:
            await self.ctx.executor.run(self._write_batch, session, session.take_unwritten())
        finally:
            session.flushing = False

    def _write_batch(self, session: _Session, batch: list[_Packet]) -> None:
        try:
            session.write(batch)
            self.bytes_spooled += sum(p.size for p in batch)
        except OSError as e:
            # the scratch folder refused (full, gone): keep this activity's packets in memory
            session.spool_dir = None
            self.log.warning("clip_packets_in_memory", error=repr(e), folder=str(self.scratch))

    def _use_source(self, cam: _Cam, src: PacketRing) -> None:
        cam.source = src
        src.retain(self.cfg.preroll_s + CONFIRM_MARGIN_S)
        cam.ring.clear()  # no picture ring for a remuxed camera
        cam.ring_bytes = 0
        self.log.info("clip_remux", camera=cam.camera_id, width=src.width, height=src.height)

    def _open_session(self, cam: _Cam) -> None:
        src = cam.source
        if src is not None:
            size = (src.width, src.height)
            cam.session = _Session(
                codec=None,
                encoder="copy",
                size=size,
                source=src,
                rate=src.rate or self.cfg.fps,
                spool_dir=self.scratch,
            )
            take_source(cam.session)
            return
        if not cam.ring:
            return
        first = cam.ring[0][1]
        size = (first.shape[1], first.shape[0] * 2 // 3)
        try:
            codec = open_encoder(self.encoder, self.cfg, size)
        except Exception as e:
            if self.encoder == "libx264":
                raise
            self.log.warning("hw_encoder_failed", encoder=self.encoder, error=repr(e))
            self.encoder = "libx264"
            codec = open_encoder(self.encoder, self.cfg, size)
        cam.session = _Session(codec=codec, encoder=self.encoder, size=size, spool_dir=self.scratch)
        for mono, i420 in cam.ring:
            self._encode(cam.session, i420, mono)

    # -- events ------------------------------------------------------------------------------
    async def _on_event(self, msg: Message[EventNotice]) -> None:
        ev = msg.payload
        cam = self._cam(ev.camera_id)
        if ev.event_id in cam.done:
            return
        clip = cam.clips.get(ev.event_id)
        if clip is None and ev.phase != "ended" and ev.event_id in cam.recent:
            clip = cam.recent.pop(ev.event_id)  # the tracker's cooldown brought it back
            clip.end_mono = clip.finished_mono = None
            cam.clips[ev.event_id] = clip
            self.resumed += 1
            await self._ensure_session(cam)
        elif ev.phase == "started" and clip is None:
            start = ev.started_mono if ev.started_mono > 0 else cam.clock
            cam.clips[ev.event_id] = _Clip(ev.event_id, ev.started_at, start)
            await self._ensure_session(cam)
        elif clip is not None and ev.phase == "updated":
            clip.end_mono = None  # the object came back before the post-roll ran out
        elif clip is not None and ev.phase == "ended":
            if ev.ended_at is not None and ev.started_mono > 0:
                clip.end_mono = clip.start_mono + max(0.0, ev.ended_at - ev.started_at)
            else:
                clip.end_mono = cam.clock
        await self._finish_due(cam)

    async def _on_command(self, msg: Message[ControlCommand]) -> None:
        cmd = msg.payload
        if cmd.command != "clip":
            return
        known = [cid for cid, c in self.cams.items() if c.oldest() is not None]
        cams = [cmd.camera_id] if cmd.camera_id else sorted(known)
        want = min(cmd.duration_s or MANUAL_DEFAULT_S, self.cfg.max_duration_s)
        for cid, event_id in manual_event_ids(cmd.request_id, cams):
            cam = self.cams.get(cid)
            oldest = cam.oldest() if cam is not None else None
            if cam is None or oldest is None:
                self.log.warning("manual_clip_no_frames", camera=cid, source=cmd.source)
                continue
            if event_id in cam.clips or event_id in cam.done:
                continue
            now = cam.now(self.ctx.clock.monotonic())
            # the ring's past first; what it lacks is recorded from now on
            start = max(oldest, now - want)
            clip = _Clip(event_id, time.time() - (now - start), start, start + want, manual=True)
            cam.clips[event_id] = clip
            self.log.info("manual_clip", camera=cid, event_id=event_id, seconds=want)
            await self._ensure_session(cam)
            await self._finish_due(cam)

    async def _ensure_session(self, cam: _Cam) -> None:
        if cam.session is None:
            if cam.source is not None:  # a remux session only copies references: no worker
                self._open_session(cam)
                return
            async with cam.lock:
                if cam.session is None:
                    await self.ctx.executor.run(self._open_session, cam)

    async def _tick_loop(self) -> None:
        while True:
            await self.ctx.clock.sleep(0.5)
            for cam in list(self.cams.values()):
                await self._finish_due(cam)

    async def _finish_due(self, cam: _Cam, *, force: bool = False) -> None:
        now = cam.now(self.ctx.clock.monotonic())
        for clip in list(cam.clips.values()):
            overlong = now - clip.start_mono >= self.cfg.max_duration_s
            post = 0.0 if clip.manual else self.cfg.postroll_s
            ended = clip.end_mono is not None and now >= clip.end_mono + post
            if force or ended or overlong:
                await self._finish(cam, clip, now, final=force or overlong or clip.manual)
        for clip in list(cam.recent.values()):
            if force or now - (clip.finished_mono or now) > self.cfg.resume_grace_s:
                del cam.recent[clip.event_id]  # its packets go with it
                self._retire(cam, clip.event_id)

    def _retire(self, cam: _Cam, event_id: str) -> None:
        cam.done.add(event_id)
        if len(cam.done) > 256:
            cam.done = set(list(cam.done)[-128:])

    async def _finish(self, cam: _Cam, clip: _Clip, now: float, *, final: bool) -> None:
        cam.clips.pop(clip.event_id, None)
        post = 0.0 if clip.manual else self.cfg.postroll_s
        end = (clip.end_mono if clip.end_mono is not None else now) + post
        end = min(end, clip.start_mono + self.cfg.max_duration_s)
        self._finalizing += 1
        try:
            async with cam.lock:
                session = cam.session
                if session is None and not clip.prefix:
                    self.log.warning("clip_without_frames", event_id=clip.event_id)
                    self._retire(cam, clip.event_id)
                    return
                packets = self._packets_for(clip, session, round(end * 1000))
                size = session.size if session is not None else clip.size
                if session is not None:
                    if not cam.clips:
                        cam.session = None  # nothing else open: drop the encoder and packets
                    else:
                        keep = min(c.needs_from_ms(self.cfg.preroll_s) for c in cam.clips.values())
                        session.packets = cut_decodable(session.packets, keep, session.last_pts)
            if final or end >= clip.start_mono + self.cfg.max_duration_s:
                self._retire(cam, clip.event_id)
            else:
                clip.prefix, clip.finished_mono = packets, now
                clip.prefix_session = session.serial if session is not None else 0
                clip.size = size
                cam.recent[clip.event_id] = clip
            if not packets:
                self.log.warning("clip_empty", event_id=clip.event_id)
                return
            rate = session.rate if session is not None and session.rate else self.cfg.fps
            artifact = await self.ctx.executor.run(
                self._write, cam.camera_id, clip, packets, size, rate
            )
        finally:
            self._finalizing -= 1
        await self.bus.publish(topics.ARTIFACT.at(artifact="clip"), artifact)

    def _packets_for(self, clip: _Clip, session: _Session | None, end_ms: int) -> list[_Packet]:
        if not clip.prefix:
            assert session is not None
            return cut_decodable(session.packets, clip.needs_from_ms(self.cfg.preroll_s), end_ms)
        if session is None:
            return clip.prefix
        last = clip.prefix[-1].pts
        more = [p for p in session.packets if last < p.pts <= end_ms]
        if session.serial != clip.prefix_session:
            # another encoder than the one that wrote the prefix: start at its keyframe
            first_key = next((i for i, p in enumerate(more) if p.key), len(more))
            more = more[first_key:]
        return clip.prefix + more

    def _write(
        self,
        camera_id: str,
        clip: _Clip,
        packets: list[_Packet],
        size: tuple[int, int],
        rate: float,
    ) -> MediaArtifact:
        rel = media_relpath(camera_id, clip.started_at, clip.event_id, "mp4", self.tz)
        self.scratch.mkdir(parents=True, exist_ok=True)
        tmp = self.scratch / f".{clip.event_id}.{secrets.token_hex(4)}.mp4"
        try:
            duration = mux_mp4(packets, size, rate, tmp)
            first_ms = min(p.pts for p in packets)
            size_bytes = tmp.stat().st_size
            path = self.root / rel
            digest = atomic_move(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.clips_written += 1
        self.clips_remuxed += int(packets[0].dts is not None)
        self.bytes_written += size_bytes
        return MediaArtifact(
            event_id=clip.event_id,
            camera_id=camera_id,
            kind="clip",
            path=str(path.resolve()),
            relpath=rel,
            size_bytes=size_bytes,
            sha256=digest,
            mime="video/mp4",
            created_at=time.time(),
            duration_s=round(duration, 3),
            width=size[0],
            height=size[1],
            event_offset_s=round(max(0.0, clip.start_mono - first_ms / 1000.0), 3),
        )

    async def stop(self) -> None:
        await super().stop()
        # a replay that ends mid-event still gets its clips, cut at the last frame
        for cam in list(self.cams.values()):
            await self._finish_due(cam, force=True)
            cam.ring.clear()
            cam.ring_bytes = 0
            cam.session = None  # its packet files go with it

    def preroll_bytes(self, camera_id: str) -> int:
        cam = self.cams.get(camera_id)
        return cam.ring_bytes if cam is not None else 0

    def metrics(self) -> dict[str, float | int | str]:
        encoded = max(1, self.frames_encoded)
        return {
            "pending": sum(len(c.clips) for c in self.cams.values()) + self._finalizing,
            "encoder": self.encoder,
            "clips_written": self.clips_written,
            "clips_resumed": self.resumed,
            "clips_remuxed": self.clips_remuxed,
            "cameras_remuxed": sum(c.source is not None for c in self.cams.values()),
            "bytes_written": self.bytes_written,
            "bytes_spooled": self.bytes_spooled,
            "held_bytes": sum(
                c.session.unwritten_bytes if c.session is not None else 0
                for c in self.cams.values()
            ),
            "preroll_bytes": sum(
                c.source.nbytes if c.source is not None else c.ring_bytes
                for c in self.cams.values()
            ),
            "encode_ms_per_frame": round(1000 * self.encode_s / encoded, 2),
        }
