"""Animated GIFs for the phone: <= 3 MB, <= 480 px wide, about 5 fps, sampled over the event.

The module takes a camera's frames only while one of its events is open (it subscribes when
the event starts and lets go when the camera has none open): an idle camera's frames never
wake it. While an event is open on a camera, frames are sampled every ``1 / fps`` seconds, shrunk to
``width`` and kept as small JPEGs (about 20-40 kB each, at most ``buffer_frames`` per event:
when full, every other frame is dropped and sampling slows down by half, so a long event is
still covered from start to end in bounded memory). No frame is decoded while no event is
open. When the event ends, ``max_frames`` frames are picked evenly over its buffer, given one
shared 128-colour palette (k-means on a pixel sample, mapped through a 32k-entry lookup
table) and encoded with FFmpeg's GIF encoder at ``fps``; if the result is bigger than
``max_bytes`` it is rebuilt with fewer, smaller frames. Assembled in ``storage.scratch``, moved
into place crash-safely, published on ``media.gif.ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
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
from spyoncino.helpers import spool
from spyoncino.helpers.files import atomic_move, media_relpath
from spyoncino.schemas import topics
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Frame, Image
from spyoncino.schemas.media import MediaArtifact


class Config(ModuleConfig):
    type: Literal["gif"] = "gif"
    fps: float = Field(default=5.0, ge=1.0, le=15.0, description="GIF frame rate.")
    width: int = Field(default=480, ge=120, le=480, description="Largest GIF width in pixels.")
    max_frames: int = Field(default=50, ge=5, le=150, description="Most frames in one GIF.")
    max_bytes: int = Field(
        default=3_000_000, ge=100_000, le=10_000_000, description="Largest GIF file size."
    )
    buffer_frames: int = Field(
        default=120, ge=10, le=600, description="Frames buffered per open event (as JPEG)."
    )
    colours: int = Field(default=128, ge=16, le=256, description="Palette size (gif only).")
    format: Literal["mp4", "gif"] = Field(
        default="mp4",
        description="mp4: a silent H.264 animation (<event>.anim.mp4; Telegram's "
        "sendAnimation plays it like a GIF, browsers loop it muted): one libx264 encode, "
        "about half the CPU of a GIF and a twentieth of its bytes. gif: a real GIF for a consumer "
        "that needs one.",
    )
    crf: int = Field(default=30, ge=18, le=45, description="mp4 quality (lower: better, bigger).")
    resume_grace_s: float = Field(
        default=30.0,
        ge=0.0,
        le=600.0,
        description="An event resumed this soon after its GIF was written (the tracker's "
        "cooldown) gets the GIF rebuilt over all of it; keep >= tracker.cooldown_s.",
    )


#: a generous bound on writing one GIF's frames to the spool at shutdown
_SPOOL_S = 0.1


@dataclass
class _Gif:
    event_id: str
    started_at: float
    interval: float
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    last_sample: float = -1e18
    first_mono: float | None = None
    last_mono: float | None = None


@dataclass
class _Cam:
    gifs: dict[str, _Gif] = field(default_factory=dict)
    #: ends the camera's frame subscription (held only while an event is open)
    unsubscribe: Callable[[], None] | None = None
    recent: dict[str, tuple[_Gif, float]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)


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


def _size(jpeg: bytes, scale: float) -> tuple[int, int]:
    """Width and height of a buffered JPEG once scaled."""
    h, w = _decode(jpeg).shape[:2]
    if scale < 1.0:
        return max(2, round(w * scale)), max(2, round(h * scale))
    return w, h


def _decode(jpeg: bytes) -> Image:
    return cast("Image", cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))


def _decoded(jpegs: list[bytes], scale: float) -> Iterator[Image]:
    """The buffered JPEGs decoded (and scaled) one at a time, as a consumer takes them."""
    size: tuple[int, int] | None = None
    for b in jpegs:
        img = _decode(b)
        if scale < 1.0:
            if size is None:
                h, w = img.shape[:2]
                size = (max(2, round(w * scale)), max(2, round(h * scale)))
            img = cast("Image", cv2.resize(img, size, interpolation=cv2.INTER_AREA))
        yield img


def pick_evenly(n_have: int, n_want: int) -> list[int]:
    """``n_want`` indices spread evenly over ``range(n_have)``, first and last included."""
    if n_have <= n_want:
        return list(range(n_have))
    if n_want == 1:
        return [0]
    return [round(i * (n_have - 1) / (n_want - 1)) for i in range(n_want)]


class GifMaker(BaseModule[Config]):
    category: ClassVar[Any] = "event"
    Config: ClassVar[type[ModuleConfig]] = Config

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.root = Path(".")
        self.scratch = Path(".scratch")
        self.tz: str | None = None
        self.cams: dict[str, _Cam] = {}
        self.gifs_written = 0
        self.bytes_written = 0
        self.build_s = 0.0
        self._building = 0
        # shutdown: GIFs being built, and the spool of those left for the next start
        self._inflight: dict[str, tuple[str, _Gif]] = {}
        self._none_inflight = asyncio.Event()
        self._spooled: dict[str, Path] = {}
        self._spool_backlog = 0
        self.spool_dir = Path(".spool")
        self._stopping = False
        self.gifs_spooled = 0
        self.gifs_resumed = 0
        self.gifs_dropped = 0
        self._camera_ids: list[str] = []

    async def configure(self, app: AppConfig) -> None:
        self.cfg = self.config_of(app)
        self.root = app.storage.root
        self.scratch = app.storage.scratch_dir
        self.tz = app.runtime.timezone
        self._camera_ids = [cid for cid, cam in app.cameras.items() if cam.enabled]
        self.spool_dir = app.storage.root / ".spool" / (self.name or "gif")

    async def start(self) -> None:
        self._stopping = False
        for phase in ("started", "updated", "ended"):
            self.subscribe(topics.EVENT.pattern(phase=phase), self._on_event, policy="block")
        # frames are subscribed per camera only while one of its events is open (_follow):
        # an idle camera's frames never wake this module
        self.spawn(self._build_spooled(), "spooled")
        self.set_state("ok")

    def _cam(self, camera_id: str) -> _Cam:
        cam = self.cams.get(camera_id)
        if cam is None:
            cam = self.cams[camera_id] = _Cam()
        return cam

    def _follow(self, camera_id: str, cam: _Cam) -> None:
        """Take the camera's frames while it has an open event, and only then."""
        if cam.gifs and cam.unsubscribe is None and not self._stopping:
            cam.unsubscribe = self.bus.subscribe(
                topics.FRAME.at(camera=camera_id),
                self._on_frame,
                policy="latest",
                maxsize=2,
                module=self.ctx.instance,
            )
        elif not cam.gifs and cam.unsubscribe is not None:
            cam.unsubscribe()
            cam.unsubscribe = None

    async def _on_frame(self, msg: Message[Frame]) -> None:
        f = msg.payload
        cam = self.cams.get(f.camera_id)
        if cam is None or not cam.gifs or not f.has_image:
            return  # nothing open: no decoding at all
        due = [g for g in cam.gifs.values() if f.mono_ts - g.last_sample >= 0.95 * g.interval]
        if not due:
            return
        jpeg = await self.ctx.executor.run(self._shrink, f)
        for g in due:
            g.last_sample = f.mono_ts
            g.frames.append((f.mono_ts, jpeg))
            if g.first_mono is None:
                g.first_mono = f.mono_ts
            g.last_mono = f.mono_ts
            if len(g.frames) > self.cfg.buffer_frames:
                g.frames = g.frames[::2]
                g.interval *= 2

    def _shrink(self, f: Frame) -> bytes:
        img = f.image
        if img.shape[1] > self.cfg.width:
            size = (self.cfg.width, max(2, round(img.shape[0] * self.cfg.width / img.shape[1])))
            img = cast("Image", cv2.resize(img, size, interpolation=cv2.INTER_AREA))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return np.asarray(buf).tobytes()

    async def _on_event(self, msg: Message[EventNotice]) -> None:
        ev = msg.payload
        cam = self._cam(ev.camera_id)
        now = time.monotonic()
        for eid, (_g, at) in list(cam.recent.items()):
            if now - at > self.cfg.resume_grace_s:
                del cam.recent[eid]  # its frames go with it
                self._retire(cam, eid)
        if ev.event_id in cam.done:
            return
        if ev.phase != "ended" and ev.event_id in cam.recent:
            cam.gifs[ev.event_id] = cam.recent.pop(ev.event_id)[0]  # resumed: keep sampling
        elif ev.phase == "started" and ev.event_id not in cam.gifs:
            cam.gifs[ev.event_id] = _Gif(ev.event_id, ev.started_at, 1.0 / self.cfg.fps)
        elif ev.phase == "ended" and ev.event_id in cam.gifs:
            await self._finish(ev.camera_id, cam, cam.gifs[ev.event_id])
        self._follow(ev.camera_id, cam)

    def _retire(self, cam: _Cam, event_id: str) -> None:
        cam.done.add(event_id)
        if len(cam.done) > 256:
            cam.done = set(list(cam.done)[-128:])

    async def _finish(self, camera_id: str, cam: _Cam, gif: _Gif, *, final: bool = False) -> None:
        cam.gifs.pop(gif.event_id, None)
        if final:
            self._retire(cam, gif.event_id)
        else:
            cam.recent[gif.event_id] = (gif, time.monotonic())
        if not gif.frames:
            self.log.warning("gif_without_frames", event_id=gif.event_id, camera=camera_id)
            return
        self._building += 1
        self._inflight[gif.event_id] = (camera_id, gif)
        self._none_inflight.clear()
        try:
            artifact = await self.ctx.executor.run(self._build, camera_id, gif)
        finally:
            self._building -= 1
            self._inflight.pop(gif.event_id, None)
            if not self._inflight:
                self._none_inflight.set()
        if artifact is not None:
            await self.bus.publish(topics.ARTIFACT.at(artifact="gif"), artifact)
        done = self._spooled.pop(gif.event_id, None)
        if done is not None:  # built after all (or rebuilt from the spool): not again
            await self.ctx.executor.run(spool.discard, done)

    def _build(self, camera_id: str, gif: _Gif) -> MediaArtifact | None:
        t0 = time.perf_counter()
        want = self.cfg.max_frames
        scale = 1.0
        self.scratch.mkdir(parents=True, exist_ok=True)
        mp4 = self.cfg.format == "mp4"
        ext = "anim.mp4" if mp4 else "gif"
        tmp = self.scratch / f".{gif.event_id}.{secrets.token_hex(4)}.{ext}"
        try:
            for attempt in range(6):
                picked = [gif.frames[i][1] for i in pick_evenly(len(gif.frames), want)]
                imgs = _decoded(picked, scale)
                if mp4:
                    # one frame decoded at a time; a bigger-than-allowed MP4 goes again with
                    # coarser quantisation
                    count = encode_mp4(imgs, self.cfg.fps, self.cfg.crf + 4 * attempt, tmp)
                else:
                    frames = list(imgs)  # the palette is computed over all of them
                    count = len(frames)
                    encode_gif(frames, self.cfg.fps, self.cfg.colours, tmp)
                    del frames
                size_bytes = tmp.stat().st_size
                if size_bytes <= self.cfg.max_bytes:
                    break
                want = max(5, int(want * 0.7))
                scale *= 0.85
            else:
                self.log.warning("gif_too_big", event_id=gif.event_id, size_bytes=size_bytes)
                return None
            w, h = _size(picked[0], scale)
            rel = media_relpath(camera_id, gif.started_at, gif.event_id, ext, self.tz)
            path = self.root / rel
            digest = atomic_move(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.gifs_written += 1
        self.bytes_written += size_bytes
        self.build_s += time.perf_counter() - t0
        return MediaArtifact(
            event_id=gif.event_id,
            camera_id=camera_id,
            kind="gif",
            path=str(path.resolve()),
            relpath=rel,
            size_bytes=size_bytes,
            sha256=digest,
            mime="video/mp4" if mp4 else "image/gif",
            created_at=time.time(),
            duration_s=round(count / self.cfg.fps, 3),
            width=w,
            height=h,
        )

    async def stop(self) -> None:
        """Build the GIFs of the events still open while ``stop_deadline`` allows; spool the
        rest (their sampled frames) for the next start, which builds them first thing."""
        self._stopping = True
        await super().stop()
        for cam in self.cams.values():
            if cam.unsubscribe is not None:
                cam.unsubscribe()
                cam.unsubscribe = None
        loop = asyncio.get_running_loop()
        deadline = self.stop_deadline if self.stop_deadline is not None else float("inf")
        jobs = [(cid, cam, g) for cid, cam in self.cams.items() for g in list(cam.gifs.values())]
        for cam in self.cams.values():
            cam.recent.clear()
        left: list[tuple[str, _Gif]] = []
        per_build = self.build_s / self.gifs_written if self.gifs_written else 1.0
        for n, (cid, cam, gif) in enumerate(jobs):
            spooling = (len(jobs) - n + len(self._inflight)) * _SPOOL_S
            if left or loop.time() + per_build + spooling > deadline:
                cam.gifs.pop(gif.event_id, None)
                self._retire(cam, gif.event_id)
                left.append((cid, gif))
                continue
            await self._finish(cid, cam, gif, final=True)
        # a build a handler began before the stop: let it end while there is time
        wait_s = deadline - loop.time() - len(self._inflight) * _SPOOL_S - 0.05
        if self._inflight and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_inflight.wait(), wait_s)
        left += [job for job in self._inflight.values() if job[1].event_id not in self._spooled]
        left = [(cid, g) for cid, g in left if g.frames]
        if left:
            await self._spool(left)

    async def _spool(self, jobs: list[tuple[str, _Gif]]) -> None:
        def save(camera_id: str, gif: _Gif) -> Path:
            keep = [gif.frames[i] for i in pick_evenly(len(gif.frames), self.cfg.max_frames)]
            meta = {
                "camera_id": camera_id,
                "event_id": gif.event_id,
                "started_at": gif.started_at,
                "interval": gif.interval,
                "monos": [m for m, _ in keep],
            }
            return spool.save(self.spool_dir, gif.event_id, meta, [b for _, b in keep])

        saved = 0
        for camera_id, gif in jobs:
            try:
                self._spooled[gif.event_id] = await self.ctx.executor.run(save, camera_id, gif)
                saved += 1
            except (OSError, ValueError, RuntimeError) as e:
                self.gifs_dropped += 1
                self.log.error(
                    "gif_dropped_on_stop", event_id=gif.event_id, camera=camera_id, error=repr(e)
                )
        self.gifs_spooled += saved
        self.log.warning(
            "gifs_spooled_on_stop",
            count=saved,
            dropped=len(jobs) - saved,
            folder=str(self.spool_dir),
        )

    async def _build_spooled(self) -> None:
        """The GIFs the last run could not build before it stopped."""
        paths = await self.ctx.executor.run(spool.pending, self.spool_dir)
        self._spool_backlog = len(paths)
        for path in paths:
            try:
                meta, blobs = await self.ctx.executor.run(spool.load, path)
                camera_id = str(meta["camera_id"])
                gif = _Gif(
                    str(meta["event_id"]), float(meta["started_at"]), float(meta["interval"])
                )
                gif.frames = [(float(m), b) for m, b in zip(meta["monos"], blobs, strict=True)]
            except (OSError, spool.SpoolError, KeyError, TypeError, ValueError) as e:
                self.gifs_dropped += 1
                self.log.error("gif_spool_unreadable", file=path.name, error=repr(e))
                await self.ctx.executor.run(spool.set_aside, path)
                self._spool_backlog -= 1
                continue
            self._spooled[gif.event_id] = path
            try:
                await self._finish(camera_id, self._cam(camera_id), gif, final=True)
            except Exception as e:
                self.gifs_dropped += 1
                self._spooled.pop(gif.event_id, None)
                self.log.error("gif_spool_build_failed", event_id=gif.event_id, error=repr(e))
                await self.ctx.executor.run(spool.set_aside, path)
            else:
                self.gifs_resumed += 1
                self.log.info("gif_built_from_spool", event_id=gif.event_id, camera=camera_id)
            finally:
                self._spool_backlog -= 1

    def metrics(self) -> dict[str, float | int | str]:
        return {
            "pending": sum(len(c.gifs) for c in self.cams.values())
            + self._building
            + self._spool_backlog,
            "gifs_spooled": self.gifs_spooled,
            "gifs_resumed": self.gifs_resumed,
            "gifs_dropped": self.gifs_dropped,
            "gifs_written": self.gifs_written,
            "bytes_written": self.bytes_written,
            "buffered_bytes": sum(
                len(b) for c in self.cams.values() for g in c.gifs.values() for _, b in g.frames
            ),
            "build_ms_avg": round(1000 * self.build_s / max(1, self.gifs_written), 1),
        }
