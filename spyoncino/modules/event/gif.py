"""Animations for the phone, cut from the event's clip: a short silent H.264 MP4 (or a GIF).

The module does no work while an event is open: it waits for the event's clip
(``media.clip.ready``, written by ``clip``) and cuts the animation from that file.

**Window.** From the keyframe at or before the event's start in the clip (the clip says where:
``event_offset_s``; a clip that does not say is cut from its start) for at most
``duration_s`` seconds and at most ``max_bytes`` (Telegram's ``sendAnimation`` plays it
inline like a GIF; it wants a silent MP4 of a few MB).

**Remux first.** When the clip is H.264 4:2:0 (a camera whose own packets the clip remuxed,
or the clip recorder's own encode) the window's packets are copied into a new MP4
(``movflags=+faststart``, no audio, no decode, no encode: a few milliseconds) at the clip's
resolution, cut in decode order so no picture refers to one left out. Otherwise (another
codec or chroma, ``remux: false``, or a first GOP bigger than ``max_bytes``) the window is
decoded from the clip, sampled at ``fps``, shrunk to ``width`` (480) and encoded once with
libx264 (yuv420p, faststart), one frame at a time.

**GIF only on demand.** ``format: gif`` decodes the same window (at most ``max_frames``
frames at ``fps``, ``width`` wide), builds one 128-colour palette and encodes a GIF once; if
it is bigger than ``max_bytes`` it is built once more, smaller (nothing here needs a GIF: the
e-mail sends the snapshot).

One animation per clip: an event the tracker resumes gets its clip rewritten and so its
animation too (same file, published again). Manual clips (``/clip``) get none. Assembled in
``storage.scratch``, moved into place crash-safely (``atomic_move``) next to the clip as
``<event-id>.anim.mp4`` (``.gif``), published on ``media.gif.ready``. At stop, what the
shutdown deadline leaves unbuilt is spooled (a reference to the clip) and built at the next
start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import cv2
import numpy as np
from pydantic import Field

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig, ModuleContext
from spyoncino.helpers import spool
from spyoncino.helpers.files import atomic_move
from spyoncino.helpers.packets import cut_decodable
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Image
from spyoncino.schemas.media import MediaArtifact


class Config(ModuleConfig):
    type: Literal["gif"] = "gif"
    retired: ClassVar[dict[str, str]] = {
        "buffer_frames": "nothing: no frame is buffered, the animation is cut from the clip",
        "resume_grace_s": "clip.resume_grace_s: a resumed event's rewritten clip brings its "
        "animation again",
    }
    duration_s: float = Field(
        default=8.0, ge=1.0, le=60.0, description="Longest animation (seconds of the clip)."
    )
    remux: bool = Field(
        default=True,
        description="Copy the window's H.264 packets from the clip (no decode, no encode, "
        "the clip's resolution); false: always one encode at width.",
    )
    fps: float = Field(
        default=5.0, ge=1.0, le=15.0, description="Frame rate of an encoded animation or GIF."
    )
    width: int = Field(
        default=480, ge=120, le=480, description="Largest encoded animation or GIF width."
    )
    max_frames: int = Field(
        default=50, ge=5, le=150, description="Most frames in an encoded animation or GIF."
    )
    max_bytes: int = Field(
        default=3_000_000, ge=100_000, le=10_000_000, description="Largest animation file."
    )
    colours: int = Field(default=128, ge=16, le=256, description="Palette size (gif only).")
    format: Literal["mp4", "gif"] = Field(
        default="mp4",
        description="mp4: a silent H.264 animation (<event>.anim.mp4; Telegram's "
        "sendAnimation plays it like a GIF, browsers loop it muted), cut from the clip. gif: "
        "a real GIF (decoded from the clip and encoded) for a consumer that needs one.",
    )
    crf: int = Field(
        default=30, ge=18, le=45, description="Encoded mp4 quality (lower: better, bigger)."
    )


#: a generous bound on writing one job to the spool at shutdown
_SPOOL_S = 0.05
#: the longest the stop waits for clips already published to reach the module
_TAKE_S = 2.0
#: what a remuxed window may fill of max_bytes (the MP4 boxes and a cut's overshoot take the rest)
_REMUX_FILL = 0.9


@dataclass(frozen=True)
class _Job:
    camera_id: str
    event_id: str
    clip_path: str
    clip_relpath: str
    #: seconds from the clip's first picture to the event's start
    lead_s: float


@dataclass(frozen=True)
class _Made:
    path: Path
    how: str  # remux, encode, gif
    duration_s: float
    width: int
    height: int


@dataclass(slots=True)
class _Pkt:
    pts: int  # milliseconds from the clip's start
    dts: int
    key: bool
    packet: Any


def _palette(frames: list[Image], colours: int) -> tuple[Image, Image]:
    """(palette as BGR rows, lookup table from 15-bit colour to palette index)."""
    pixels = np.concatenate([f.reshape(-1, 3)[:: max(1, f.size // 3 // 4000)] for f in frames])
    rng = np.random.default_rng(0)
    sample = pixels[rng.choice(len(pixels), size=min(len(pixels), 8_000), replace=False)]
    k = min(colours, len(np.unique(sample, axis=0)))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 10, 1.0)
    cv2.setRNGSeed(0)
    _c, _l, centres = cv2.kmeans(
        sample.astype(np.float32),
        k,
        None,  # type: ignore[call-overload]  # OpenCV allocates the labels
        criteria,
        1,
        cv2.KMEANS_PP_CENTERS,
    )
    pal = np.clip(np.rint(centres), 0, 255).astype(np.uint8)
    axis = (np.arange(32, dtype=np.float32) * 8 + 4)[:, None]
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    # nearest palette colour for every 15-bit colour: |g - p|^2 = |g|^2 - 2 g.p + |p|^2, and
    # |g|^2 is the same for every p, so one matrix product (BLAS) replaces a 32768 x k x 3
    # broadcast that cost most of a GIF's CPU
    palf = pal.astype(np.float32)
    dist = (palf * palf).sum(axis=1)[None, :] - 2.0 * (grid @ palf.T)
    lut = dist.argmin(axis=1).astype(np.uint8)
    return pal, lut


def _indices(img: Image, lut: Image) -> Image:
    q = (img >> 3).astype(np.uint16)
    return cast("Image", lut[(q[:, :, 0] << 10) | (q[:, :, 1] << 5) | q[:, :, 2]])


def encode_gif(frames: list[Image], fps: float, colours: int, path: Path) -> None:
    """Write BGR ``frames`` (same size) as a looping GIF at ``path``."""
    import av

    pal, lut = _palette(frames, colours)
    argb = np.zeros((256, 4), np.uint8)
    argb[:, 0] = 255
    argb[: len(pal), 1] = pal[:, 2]
    argb[: len(pal), 2] = pal[:, 1]
    argb[: len(pal), 3] = pal[:, 0]
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format="gif") as out:
        stream: Any = out.add_stream("gif", rate=Fraction(fps).limit_denominator(100))
        stream.width, stream.height, stream.pix_fmt = w, h, "pal8"
        for i, img in enumerate(frames):
            pair: Any = (_indices(img, lut), argb)  # pal8 takes (indices, ARGB palette)
            vf = av.VideoFrame.from_ndarray(pair, format="pal8")
            vf.pts = i
            for p in stream.encode(vf):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)


def encode_mp4(frames: Iterable[Image], fps: float, crf: int, path: Path) -> int:
    """Write BGR ``frames`` (same size) as a silent H.264 MP4 (yuv420p, faststart) at ``path``;
    returns how many. ``frames`` may be a generator: each is taken as the encoder needs it, so
    an animation never holds all its frames decoded at once.

    What Telegram's ``sendAnimation`` wants instead of a GIF (it turns GIFs into such MP4s
    itself): baseline-compatible settings, even dimensions, no audio track.
    """
    import av

    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    w2, h2 = w - w % 2, h - h % 2
    n = 0
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream: Any = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(100))
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast", "crf": str(crf), "bf": "0"}
        for i, img in enumerate(itertools.chain((first,), it)):
            n += 1
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:h2, :w2]), format="bgr24")
            vf.pts = i
            for p in stream.encode(vf):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return n


def pick_evenly(n_have: int, n_want: int) -> list[int]:
    """``n_want`` indices spread evenly over ``range(n_have)``, first and last included."""
    if n_have <= n_want:
        return list(range(n_have))
    if n_want == 1:
        return [0]
    return [round(i * (n_have - 1) / (n_want - 1)) for i in range(n_want)]


def remux_window(
    src: Path, dst: Path, lead_s: float, duration_s: float, max_bytes: int
) -> tuple[float, int, int] | None:
    """Copy the H.264 packets of ``src`` from the keyframe at or before ``lead_s`` for at most
    ``duration_s`` and about ``max_bytes`` into a silent faststart MP4 at ``dst``; returns
    (duration, width, height), or None when ``src`` is not H.264 4:2:0 or its first GOP
    alone is over the size cap."""
    import av

    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        ctx = stream.codec_context
        if ctx.name != "h264" or ctx.pix_fmt not in ("yuv420p", "yuvj420p"):
            return None
        tb = float(stream.time_base or Fraction(1, 90000))
        start_ms, end_ms = round(lead_s * 1000), round((lead_s + duration_s) * 1000)
        pkts: list[_Pkt] = []
        for p in inp.demux(stream):
            if p.pts is None or p.size == 0:
                continue
            pts = round(p.pts * tb * 1000)
            dts = round(p.dts * tb * 1000) if p.dts is not None else pts
            pkts.append(_Pkt(pts, dts, bool(p.is_keyframe), p))
            if dts > end_ms + 2000:  # past the window and any reordering around its end
                break
        if not pkts:
            return None
        base_pts = pkts[0].pts
        for q in pkts:
            q.pts -= base_pts
            q.dts -= base_pts
        frame_ms = round(1000 / float(stream.average_rate or 10))
        first = cut_decodable(pkts, start_ms, start_ms)
        if first:  # duration_s from the keyframe the window starts at, not from lead_s
            end_ms = first[0].pts + round(duration_s * 1000) - frame_ms
        window = cut_decodable(pkts, start_ms, end_ms)
        budget = int(max_bytes * _REMUX_FILL)
        total = sum(q.packet.size for q in window)
        if total > budget:
            # the longest prefix that fits, then cut again so it stays decodable
            first_pts, used, stop = window[0].pts, 0, window[0].pts
            for q in window:
                used += q.packet.size
                if used > budget:
                    break
                stop = max(stop, q.pts)
            window = cut_decodable(window, first_pts, stop - 1)
            if sum(q.packet.size for q in window) > budget or len(window) < 2:
                return None
        with av.open(str(dst), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            ostream = out.add_stream_from_template(stream)
            ostream.time_base = Fraction(1, 1000)
            t0 = window[0].dts
            for i, q in enumerate(window):
                pkt = q.packet
                pkt.pts, pkt.dts = q.pts - t0, q.dts - t0
                nxt = window[i + 1].dts if i + 1 < len(window) else q.dts + frame_ms
                pkt.duration = max(1, nxt - q.dts)
                pkt.time_base = Fraction(1, 1000)
                pkt.stream = ostream
                out.mux(pkt)
        shown = [q.pts for q in window]
        return (max(shown) - min(shown) + frame_ms) / 1000.0, ctx.width, ctx.height


def decode_window(
    src: Path, lead_s: float, duration_s: float, fps: float, width: int, max_frames: int
) -> Iterator[Image]:
    """The clip's pictures from ``lead_s`` for ``duration_s``, one every ``1 / fps`` s (at most
    ``max_frames``), shrunk to ``width`` (never enlarged), BGR, one at a time."""
    import av

    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base or Fraction(1, 90000))
        zero = stream.start_time or 0  # the first picture's time: the clip's 0
        # seek to the keyframe at or before the window (never decode the pre-roll whole)
        with contextlib.suppress(av.FFmpegError):
            inp.seek(zero + round(lead_s / tb), stream=stream, backward=True)
        size: tuple[int, int] | None = None
        last, n = -1e18, 0
        for f in inp.decode(stream):
            t = float((f.pts - zero) * tb) if f.pts is not None else 0.0
            if t < lead_s - 1e-3:
                continue
            if t > lead_s + duration_s or n >= max_frames:
                break
            if t - last < 0.95 / fps:
                continue
            last = t
            if size is None:
                w = min(width, f.width)
                h = max(2, round(f.height * w / f.width))
                size = (max(2, w - w % 2), h - h % 2)
            n += 1
            img = f.reformat(width=size[0], height=size[1], format="bgr24").to_ndarray()
            yield cast("Image", img)


class GifMaker(BaseModule[Config]):
    category: ClassVar[Any] = "event"
    Config: ClassVar[type[ModuleConfig]] = Config
    #: stops after the clip recorder (which writes the clips of the events still open at stop)
    stop_rank: ClassVar[int] = -1

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.root = Path(".")
        self.scratch = Path(".scratch")
        self.gifs_written = 0
        self.bytes_written = 0
        self.build_s = 0.0
        self.remuxed = 0
        self.encoded = 0
        #: clips waiting for their animation, in arrival order (the newest clip of an event wins)
        self._jobs: dict[str, _Job] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._building: _Job | None = None
        self._spooled: dict[str, Path] = {}
        self.spool_dir = Path(".spool")
        self.gifs_spooled = 0
        self.gifs_resumed = 0
        self.gifs_dropped = 0

    async def configure(self, app: AppConfig) -> None:
        self.cfg = self.config_of(app)
        self.root = app.storage.root
        self.scratch = app.storage.scratch_dir
        self.spool_dir = app.storage.root / ".spool" / (self.name or "gif")

    async def start(self) -> None:
        self.subscribe(topics.ARTIFACT.at(artifact="clip"), self._on_clip, policy="block")
        self._worker = asyncio.create_task(self._work(), name=f"{self.ctx.instance}.build")
        self.spawn(self._load_spool(), "spooled")
        self.set_state("ok")

    async def _on_clip(self, msg: Message[MediaArtifact]) -> None:
        art = msg.payload
        if art.event_id.startswith("manual-"):
            return  # asked for with /clip: the clip is the answer
        lead = art.event_offset_s or 0.0  # a clip that does not say: from its start
        self._add(_Job(art.camera_id, art.event_id, art.path, art.relpath, lead))

    def _add(self, job: _Job) -> None:
        self._jobs.pop(job.event_id, None)
        self._jobs[job.event_id] = job
        self._idle.clear()
        self._wake.set()

    async def _work(self) -> None:
        while True:
            if not self._jobs:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            job = next(iter(self._jobs.values()))
            self._building = job
            try:
                await self._make(job)
            except Exception as e:
                self.gifs_dropped += 1
                self.log.error("animation_failed", event_id=job.event_id, error=repr(e))
            finally:
                self._building = None
            if self._jobs.get(job.event_id) is job:
                del self._jobs[job.event_id]

    async def _make(self, job: _Job) -> None:
        artifact = await self.ctx.executor.run(self._build, job)
        if artifact is not None:
            await self.bus.publish(topics.ARTIFACT.at(artifact="gif"), artifact)
        done = self._spooled.pop(job.event_id, None)
        if done is not None:  # built after all (or from the spool): not again
            await self.ctx.executor.run(spool.discard, done)

    def _build(self, job: _Job) -> MediaArtifact | None:
        t0 = time.perf_counter()
        src = Path(job.clip_path)
        if not src.is_file():
            self.gifs_dropped += 1
            self.log.warning("animation_clip_gone", event_id=job.event_id, clip=job.clip_relpath)
            return None
        self.scratch.mkdir(parents=True, exist_ok=True)
        mp4 = self.cfg.format == "mp4"
        ext = "anim.mp4" if mp4 else "gif"
        tmp = self.scratch / f".{job.event_id}.{secrets.token_hex(4)}.{ext}"
        try:
            made = self._make_file(src, tmp, mp4, job.lead_s)
            if made is None:
                self.log.warning("gif_too_big", event_id=job.event_id, max_bytes=self.cfg.max_bytes)
                return None
            size_bytes = tmp.stat().st_size
            stem = job.clip_relpath.rsplit(".", 1)[0]
            rel = f"{stem}.{ext}"
            path = self.root / rel
            digest = atomic_move(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.gifs_written += 1
        self.remuxed += made.how == "remux"
        self.encoded += made.how != "remux"
        self.bytes_written += size_bytes
        self.build_s += time.perf_counter() - t0
        return MediaArtifact(
            event_id=job.event_id,
            camera_id=job.camera_id,
            kind="gif",
            path=str(path.resolve()),
            relpath=rel,
            size_bytes=size_bytes,
            sha256=digest,
            mime="video/mp4" if mp4 else "image/gif",
            created_at=time.time(),
            duration_s=round(made.duration_s, 3),
            width=made.width,
            height=made.height,
        )

    def _make_file(self, src: Path, tmp: Path, mp4: bool, lead: float) -> _Made | None:
        cfg = self.cfg
        if mp4 and cfg.remux:
            got = remux_window(src, tmp, lead, cfg.duration_s, cfg.max_bytes)
            if got is not None and tmp.stat().st_size <= cfg.max_bytes:
                return _Made(tmp, "remux", *got)
        frames = min(cfg.max_frames, max(1, round(cfg.duration_s * cfg.fps)))
        if mp4:
            for attempt in range(2):
                imgs = decode_window(src, lead, cfg.duration_s, cfg.fps, cfg.width, frames)
                first = next(imgs, None)
                if first is None:
                    return None
                count = encode_mp4(
                    itertools.chain((first,), imgs), cfg.fps, cfg.crf + 6 * attempt, tmp
                )
                if tmp.stat().st_size <= cfg.max_bytes:
                    h, w = first.shape[:2]
                    return _Made(tmp, "encode", count / cfg.fps, w - w % 2, h - h % 2)
            return None
        # a GIF: one build, and one smaller one when the first is over the cap
        pics = list(decode_window(src, lead, cfg.duration_s, cfg.fps, cfg.width, frames))
        if not pics:
            return None
        for attempt in range(2):
            encode_gif(pics, cfg.fps, cfg.colours, tmp)
            size = tmp.stat().st_size
            if size <= cfg.max_bytes:
                h, w = pics[0].shape[:2]
                return _Made(tmp, "gif", len(pics) / cfg.fps, w, h)
            if attempt == 0:
                # bytes go with frames x pixels: fewer frames and a smaller picture, once
                shrink = min(0.9, (cfg.max_bytes / size) ** 0.5 * 0.9)
                keep = pick_evenly(len(pics), max(5, int(len(pics) * shrink)))
                h, w = pics[0].shape[:2]
                small = (max(2, round(w * shrink)), max(2, round(h * shrink)))
                pics = [
                    cast("Image", cv2.resize(pics[i], small, interpolation=cv2.INTER_AREA))
                    for i in keep
                ]
        return None

    async def stop(self) -> None:
        """Build the animations of the clips already here while ``stop_deadline`` allows;
        spool the rest (a reference to their clip) for the next start, which builds them
        first thing."""
        loop = asyncio.get_running_loop()
        deadline = self.stop_deadline if self.stop_deadline is not None else float("inf")
        # the clip recorder writes the clips of the events still open at its own stop, just
        # before this one: take those still queued for this module before letting go
        take_s = min(_TAKE_S, max(0.0, (deadline - loop.time()) / 2))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.bus.wait_idle(topics.ARTIFACT.at(artifact="clip")), take_s)
        await super().stop()
        wait_s = deadline - loop.time() - (len(self._jobs) + 1) * _SPOOL_S
        if self._jobs and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), wait_s)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        left = [j for j in self._jobs.values() if j.event_id not in self._spooled]
        self._jobs.clear()
        if left:
            await self._spool(left)

    async def _spool(self, jobs: list[_Job]) -> None:
        saved = 0
        for job in jobs:
            try:
                path = await self.ctx.executor.run(
                    spool.save, self.spool_dir, job.event_id, asdict(job), []
                )
            except (OSError, ValueError, RuntimeError) as e:
                self.gifs_dropped += 1
                self.log.error(
                    "gif_dropped_on_stop",
                    event_id=job.event_id,
                    camera=job.camera_id,
                    error=repr(e),
                )
                continue
            self._spooled[job.event_id] = path
            saved += 1
        self.gifs_spooled += saved
        self.log.warning(
            "gifs_spooled_on_stop",
            count=saved,
            dropped=len(jobs) - saved,
            folder=str(self.spool_dir),
        )

    async def _load_spool(self) -> None:
        """The animations the last run could not build before it stopped."""
        paths = await self.ctx.executor.run(spool.pending, self.spool_dir)
        for path in paths:
            try:
                meta, _ = await self.ctx.executor.run(spool.load, path)
                job = _Job(
                    str(meta["camera_id"]),
                    str(meta["event_id"]),
                    str(meta["clip_path"]),
                    str(meta["clip_relpath"]),
                    float(meta["lead_s"]),
                )
            except (OSError, spool.SpoolError, KeyError, TypeError, ValueError) as e:
                self.gifs_dropped += 1
                self.log.error("gif_spool_unreadable", file=path.name, error=repr(e))
                await self.ctx.executor.run(spool.set_aside, path)
                continue
            self._spooled[job.event_id] = path
            if job.event_id not in self._jobs:  # a newer clip of it came already: that one
                self._add(job)
                self.gifs_resumed += 1

    def metrics(self) -> dict[str, float | int | str]:
        return {
            "pending": len(self._jobs),
            "gifs_spooled": self.gifs_spooled,
            "gifs_resumed": self.gifs_resumed,
            "gifs_dropped": self.gifs_dropped,
            "gifs_written": self.gifs_written,
            "gifs_remuxed": self.remuxed,
            "gifs_encoded": self.encoded,
            "bytes_written": self.bytes_written,
            "build_ms_avg": round(1000 * self.build_s / max(1, self.gifs_written), 1),
        }
