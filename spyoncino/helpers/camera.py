"""The shared base of camera inputs: pacing, fps cap, frame publishing, health, reconnect.

A concrete input implements ``open`` / ``read`` / ``close`` (blocking calls) and returns
``RawFrame`` objects from ``read``. The base runs the loop: it reads, caps the rate, publishes
``camera.<id>.frame`` (latest-wins for consumers), measures fps and reconnects with exponential
backoff and jitter when the source fails or stalls.

Why each camera gets its own reader thread instead of the shared executor: a camera read
blocks most of its time *waiting* for the next frame (network, USB, sensor). On the shared
bounded pool two cameras would hold both default workers and starve motion and detection. A
dedicated daemon thread per camera costs no CPU while it waits, keeps a library that is not
thread-safe (PyAV containers, V4L2 handles, picamera2) on one thread for open, read and close,
and can be abandoned if a driver hangs for good, which a pool thread cannot.

Camera states, as health and the status page show them:

* ``connecting``   first open, nothing received yet;
* ``streaming``    frames arrive;
* ``stalled``      the source went silent (no frame within the stall timeout) and is about to
                   be reopened;
* ``reconnecting`` the source failed (refused, unplugged, 401, end of stream): waiting for the
                   backoff, then reopening;
* ``wedged``       the driver hung in a call ``wedged_after`` times in a row, with no frame in
                   between, and each time its thread had to be abandoned: the process leaks a
                   thread per attempt and such a driver rarely recovers without a fresh
                   process, so the systemd watchdog treats this state as hung and restarts the
                   service. The input keeps retrying meanwhile; a frame brings it back;
* ``failed``       a permanent problem (``SourceFatal``); no more retries;
* ``ended``        a finite source (file) delivered its last frame.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import random
import threading
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, TypeVar, cast

import cv2
import numpy as np

from spyoncino.core.config import AppConfig, CameraBase, redact_text
from spyoncino.core.contracts import BaseModule, CameraOptions, ConfigT, ModuleContext
from spyoncino.helpers.packets import PacketRing
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Frame, Image, Resizer

#: why a camera input loses a frame, as ``dropped_<reason>`` in health and the ``reason`` label
#: of ``spyoncino_camera_frames_dropped_total``:
#: ``fps_cap``      over the camera's cap (``AppConfig.frame_cap``: its ``max_fps``, else the
#:                  board's), decoded, then dropped on the camera's thread: by design;
#: ``queue_full``   the camera thread had the next frame before the event loop took the last
#:                  one (the loop is overloaded; the older frame is replaced);
#: ``decode_error`` a damaged packet or corrupt JPEG that gave no picture.
#: Frames motion skips because it fell behind are the ``motion_busy`` reason, counted by the
#: motion stage (``cam.<id>.skipped``).
DROP_REASONS = ("fps_cap", "queue_full", "decode_error")

CameraState = Literal[
    "connecting", "streaming", "stalled", "reconnecting", "wedged", "failed", "ended"
]
#: the states of a camera that is trying to get (back) to streaming
_RETRYING = frozenset({"connecting", "stalled", "reconnecting"})
R = TypeVar("R")


class SourceEnded(Exception):
    """A finite source (a file) delivered its last frame."""


class SourceError(Exception):
    """The source failed; the loop reconnects with backoff. The message must be log-safe."""


class SourceStalled(SourceError):
    """The source is connected but delivers no frames (health shows ``stalled``)."""


class SourceFatal(SourceError):
    """A problem retrying cannot fix: the camera goes ``failed`` and the loop ends."""


@dataclass(frozen=True, slots=True)
class RawFrame:
    """What ``read`` returns: a BGR image or a lazy decoder, plus the luma plane if cheap."""

    width: int
    height: int
    image: Image | None = None
    decode: Any = None  # Callable[[], Image]
    luma: Image | None = None
    pts_s: float | None = None  # media timestamp, for pacing files
    #: a crop of the colour image at another size from the decoder's planes (``Resizer``)
    resize: Resizer | None = None


def shrink_luma(plane: Image, width: int) -> Image:
    """Downscale a grey plane (the Y of YUV) to ``width``.

    OpenCV's area filter has a fast path for exact halving (10x faster than an arbitrary
    ratio at 1280x720), so halve with it while we can; the ratio left is under 2, where a
    bilinear resize aliases little and costs a third of an area resize at a non-integer ratio.
    """
    h, w = plane.shape[:2]
    if w <= width:
        return np.ascontiguousarray(plane)
    while w >= 2 * width and w % 2 == 0 and h % 2 == 0:
        plane = cast("Image", cv2.resize(plane, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
        h, w = plane.shape[:2]
    if w == width:
        return plane
    size = (width, max(1, round(h * width / w)))
    return cast("Image", cv2.resize(plane, size, interpolation=cv2.INTER_LINEAR))


def apply_masks(image: Image, masks: tuple[Any, ...]) -> Image:
    """Black out each mask's polygon (normalised corners) in a copy of ``image``."""
    out = np.array(image, copy=True)
    h, w = out.shape[:2]
    polys = [
        np.array([[round(x * (w - 1)), round(y * (h - 1))] for x, y in m.polygon], np.int32)
        for m in masks
    ]
    cv2.fillPoly(out, polys, 0)
    return out


def _masked(
    image: Image | None, decode: Callable[[], Image] | None, masks: tuple[Any, ...]
) -> Callable[[], Image] | None:
    if image is None and decode is None:
        return None

    def masked() -> Image:
        src = image if image is not None else decode()  # type: ignore[misc]
        return apply_masks(src, masks)

    return masked


def make_luma(image: Image, width: int) -> Image:
    """Downscale a BGR (or grey) image to a ``width``-wide grey plane."""
    grey = image if image.ndim == 2 else cast("Image", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    return shrink_luma(grey, width)


#: decoder pixel formats whose planes we read directly (planar 4:2:0; plane 0 is luma)
_I420_FORMATS = frozenset({"yuv420p", "yuvj420p"})
_Y_TO_VIDEO = np.round(16 + np.arange(256) * 219 / 255).astype(np.uint8)
_C_TO_VIDEO = np.round(128 + (np.arange(256) - 128) * 224 / 255).astype(np.uint8)


_scratch = threading.local()


def _scratch_plane(shape: tuple[int, int]) -> Image:
    """This thread's YUV buffer of ``shape``, reused from one call to the next: a fresh
    300 kB array per inference is a fresh mapping above the mmap threshold (page faults and
    zeroing every time: a busy camera took 8-12 % less CPU with the threshold raised)."""
    buf: Image | None = getattr(_scratch, "plane", None)
    if buf is None or buf.shape != shape:
        buf = np.empty(shape, dtype=np.uint8)
        _scratch.plane = buf
    return buf


def _yuv_resizer(
    y: Image,
    chroma: Callable[[Image, tuple[int, int, int, int], tuple[int, int], int], None],
    codes: tuple[int, int],
    full_range: bool = False,
) -> Resizer:
    """Resize the planes of ``region`` to ``size``, then convert that small picture.

    ``chroma`` writes the region's chroma, resized, into the buffer's part below the luma;
    ``codes`` are the (RGB, BGR) conversions of the layout."""

    def resize(
        region: tuple[int, int, int, int],
        size: tuple[int, int],
        rgb: bool,
        interpolation: int,
        dst: Any = None,
    ) -> Image:
        x1, y1, x2, y2 = region
        tw, th = size
        buf = _scratch_plane((th * 3 // 2, tw))
        cv2.resize(y[y1:y2, x1:x2], (tw, th), dst=buf[:th], interpolation=interpolation)
        chroma(buf[th:], region, size, interpolation)
        if full_range:
            cv2.LUT(buf[:th], _Y_TO_VIDEO, dst=buf[:th])
            cv2.LUT(buf[th:], _C_TO_VIDEO, dst=buf[th:])
        return cast("Image", cv2.cvtColor(buf, codes[0] if rgb else codes[1], dst=dst))

    return resize


def _i420_resizer(y: Image, u: Image, v: Image, full_range: bool) -> Resizer:
    def chroma(
        out: Image, region: tuple[int, int, int, int], size: tuple[int, int], interp: int
    ) -> None:
        x1, y1, x2, y2 = region
        half = (size[0] // 2, size[1] // 2)
        q = half[0] * half[1]
        flat = out.reshape(-1)
        for plane, part in ((u, flat[:q]), (v, flat[q:])):
            src = plane[y1 // 2 : y2 // 2, x1 // 2 : x2 // 2]
            cv2.resize(src, half, dst=part.reshape(half[1], half[0]), interpolation=interp)

    codes = (cv2.COLOR_YUV2RGB_I420, cv2.COLOR_YUV2BGR_I420)
    return _yuv_resizer(y, chroma, codes, full_range)


def _nv12_resizer(y: Image, uv: Image) -> Resizer:
    def chroma(
        out: Image, region: tuple[int, int, int, int], size: tuple[int, int], interp: int
    ) -> None:
        x1, y1, x2, y2 = region
        half = (size[0] // 2, size[1] // 2)
        src = uv[y1 // 2 : y2 // 2, x1 // 2 : x2 // 2]
        cv2.resize(src, half, dst=out.reshape(half[1], half[0], 2), interpolation=interp)

    return _yuv_resizer(y, chroma, (cv2.COLOR_YUV2RGB_NV12, cv2.COLOR_YUV2BGR_NV12))


def av_frame_to_raw(frame: Any, luma_width: int | None, pts_s: float | None = None) -> RawFrame:
    """A decoded PyAV ``VideoFrame`` -> ``RawFrame``: luma now, BGR only on demand.

    ``luma_width`` None leaves the luma the decoder's whole Y plane (a view): a live camera's
    thread shrinks it only for the frames it keeps (``CameraInput.prepare``), not for those
    over the cap.

    The planes are read as numpy views of the frame's reference-counted buffers (the decoder
    never writes to a picture it has output). The colour conversion is OpenCV's, on those
    views, so no PyAV object is touched off the camera thread: a full run once segfaulted
    inside PyAV's converter (``to_ndarray``) called on a consumer thread while the camera
    thread decoded. Formats other than planar 4:2:0 (rare for cameras) are converted at once,
    on the camera thread.
    """
    w, h = frame.width, frame.height
    if frame.format.name == "nv12" and not (w % 2 or h % 2):
        return _nv12_to_raw(frame, luma_width, pts_s)
    if frame.format.name not in _I420_FORMATS or w % 2 or h % 2:
        image = frame.to_ndarray(format="bgr24")
        return RawFrame(width=w, height=h, image=image, pts_s=pts_s)
    y, u, v = (
        np.frombuffer(p, dtype=np.uint8).reshape(p.height, p.line_size) for p in frame.planes
    )
    luma = y[:, :w] if luma_width is None else shrink_luma(y[:, :w], luma_width)
    full_range = frame.format.name == "yuvj420p"

    def decode() -> Image:
        i420 = np.empty((h * 3 // 2, w), dtype=np.uint8)
        i420[:h] = y[:, :w]
        chroma = i420[h:].reshape(-1)
        q = (h // 2) * (w // 2)
        chroma[:q] = u[:, : w // 2].reshape(-1)
        chroma[q:] = v[:, : w // 2].reshape(-1)
        if full_range:  # OpenCV assumes video range (16-235): squeeze JPEG-range values first
            cv2.LUT(i420[:h], _Y_TO_VIDEO, dst=i420[:h])
            cv2.LUT(i420[h:], _C_TO_VIDEO, dst=i420[h:])
        return cast("Image", cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420))

    resize = _i420_resizer(y[:, :w], u[:, : w // 2], v[:, : w // 2], full_range)
    return RawFrame(width=w, height=h, luma=luma, decode=decode, pts_s=pts_s, resize=resize)


def _nv12_to_raw(frame: Any, luma_width: int | None, pts_s: float | None) -> RawFrame:
    """NV12 (what hardware decoders hand over: NVDEC, some V4L2 M2M drivers): luma from
    plane 0 at once, BGR from both planes on demand, like the I420 path."""
    w, h = frame.width, frame.height
    y, uv = (np.frombuffer(p, dtype=np.uint8).reshape(p.height, p.line_size) for p in frame.planes)
    luma = y[:, :w] if luma_width is None else shrink_luma(y[:, :w], luma_width)

    def decode() -> Image:
        nv12 = np.empty((h * 3 // 2, w), dtype=np.uint8)
        nv12[:h] = y[:, :w]
        nv12[h:] = uv[: h // 2, :w]
        return cast("Image", cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12))

    resize = _nv12_resizer(y[:, :w], uv[: h // 2, :w].reshape(h // 2, w // 2, 2))
    return RawFrame(width=w, height=h, luma=luma, decode=decode, pts_s=pts_s, resize=resize)


class SourceThread:
    """One daemon thread running a camera's blocking calls in order.

    ``submit`` returns a ``concurrent.futures.Future``. A thread stuck in a driver call can be
    abandoned (``shutdown``); being a daemon it never blocks interpreter exit. ``busy`` names
    the call it runs (``""`` when idle), so an abandoned thread says where the driver hung.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.busy = ""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], R], what: str = "call") -> concurrent.futures.Future[R]:
        fut: concurrent.futures.Future[R] = concurrent.futures.Future()
        self._jobs.put((fut, fn, what))
        return fut

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, fn, what = job
            if not fut.set_running_or_notify_cancel():
                continue
            self.busy = what
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)
            finally:
                self.busy = ""

    def shutdown(self) -> None:
        self._jobs.put(None)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class _Handoff:
    """A one-frame slot between a camera thread (``pump``) and the event loop (``get``).

    The stall watchdog is one timer that looks at the time of the last frame when it fires
    and sets itself again for the rest, about once per stall timeout, instead of a timeout
    armed and cancelled around every frame's wait (a timer handle, a heap push and a
    cancellation per frame on an idle box).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: CameraInput[Any]) -> None:
        self.loop = loop
        self.owner = owner
        self.running = True
        self._item: Any = None
        self._has_item = False
        self._waiter: asyncio.Future[None] | None = None
        #: loop time of the last frame handed over (of the start, before the first)
        self._last = loop.time()
        self._limit = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def pump(self) -> None:
        """Camera thread: read until told to stop or the source fails.

        A frame over the camera's cap is counted and dropped here: it proves the source
        alive to the stall watchdog but never wakes the event loop (a 25 fps camera held to
        10 costs 10 wake-ups a second, not 25), and its luma plane is never made. A frame
        kept gets its luma plane here (``prepare``), off the loop."""
        owner = self.owner
        while self.running:
            try:
                item: Any = owner.read()
                if owner.over_cap(owner.ctx.clock.monotonic()):
                    self._last = self.loop.time()  # a float store: safe from this thread
                    owner.capped_on_thread += 1  # written by this thread only
                    continue
                item = owner.prepare(item)
            except BaseException as exc:
                item = exc
            try:
                self.loop.call_soon_threadsafe(self._put, item)
            except RuntimeError:  # the loop is closed: the app is exiting
                return
            if isinstance(item, BaseException):
                return

    def _put(self, item: Any) -> None:
        self._last = self.loop.time()
        if self._has_item and not isinstance(self._item, BaseException):
            self.owner.frames_dropped += 1
        if not (self._has_item and isinstance(self._item, BaseException)):
            self._item = item
            self._has_item = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _check_stall(self) -> None:
        """The watchdog: fail the wait after ``limit`` seconds without a frame."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait sets the watchdog again
        due = self._last + self._limit
        if self.loop.time() >= due:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = self.loop.call_at(due, self._check_stall)

    def close(self) -> None:
        """Stop the thread's reading (after its current read) and the watchdog."""
        self.running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def get(self, limit: float) -> RawFrame:
        """The next frame; ``TimeoutError`` after ``limit`` seconds without one."""
        if not self._has_item:
            self._limit = limit
            self._waiter = self.loop.create_future()
            if self._timer is None:
                self._timer = self.loop.call_at(self._last + limit, self._check_stall)
            try:
                await self._waiter
            finally:
                self._waiter = None
        item, self._item, self._has_item = self._item, None, False
        if isinstance(item, BaseException):
            raise item
        return cast("RawFrame", item)


class CameraInput(BaseModule[ConfigT]):
    """Base of every ``camera.<id>.frame`` producer; ``CameraInput[Config]`` gives the input
    its typed section (``self.config``) like any ``BaseModule[Config]``."""

    category: ClassVar[Any] = "input"
    per_camera: ClassVar[bool] = True
    #: whether reaching the end of the source is normal (files) rather than a failure
    finite: ClassVar[bool] = False
    backoff_base: ClassVar[float] = 1.0
    backoff_cap: ClassVar[float] = 30.0
    #: how long a blocked call may outlive its timeout before its thread is abandoned
    abandon_after: ClassVar[float] = 5.0
    #: abandoned threads in a row (no frame in between) that make the camera ``wedged``
    wedged_after: ClassVar[int] = 3

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        if ctx.camera_id is None:
            raise ValueError("camera inputs need a camera id")
        self.camera_id: str = ctx.camera_id
        self.cam: CameraBase = ctx.app.cameras[self.camera_id]
        self.cam_state: CameraState = "connecting"
        self.seq = 0
        self.frames_read = 0
        self.frames_published = 0
        self.frames_capped = 0
        #: frames a live camera's thread dropped over the cap (only that thread writes it)
        self.capped_on_thread = 0
        self.frames_dropped = 0
        #: pictures the source delivered that could not be decoded (damaged packets, corrupt
        #: JPEGs); inputs count them in ``read`` and the operator sees them by reason
        self.decode_errors = 0
        self.reconnects = 0
        self.threads_abandoned = 0
        #: the call each thread abandoned since the last frame was stuck in ("open", "read")
        self._hung_in: list[str] = []
        self.last_error: str | None = None
        self.last_frame_mono: float | None = None
        self._stamps: deque[float] = deque(maxlen=600)
        self._finished = False
        self._next_allowed = 0.0
        self._thread: SourceThread | None = None
        self._stopping = False
        self.topic = topics.FRAME.at(camera=self.camera_id)
        #: inputs whose source is H.264 keep its packets here (``open`` resets it, ``read``
        #: appends to it) so clips are remuxed, not encoded; None: frames only
        self.packets: PacketRing | None = None
        #: no frame for this long -> stalled -> reconnect (subclasses set it from their options)
        self.stall_timeout = 10.0
        #: an ``open`` taking longer than this counts as a failure
        self.open_timeout = 30.0

    # -- what a concrete input implements (blocking; run on the camera's thread) --------------
    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> RawFrame:
        """Next frame; raise SourceEnded at the end of a finite source, SourceError on failure."""

    @abstractmethod
    def close(self) -> None: ...

    def interrupt(self) -> None:
        """Called from the event loop when a blocking call overran: make it return soon.

        Must be thread-safe. The default does nothing; inputs whose library offers a way to
        abort a blocking read (a flag an interrupt callback checks) override it.
        """

    def pace(self, raw: RawFrame) -> float:
        """Seconds to wait before publishing ``raw`` (files replay at native speed)."""
        return 0.0

    def options(self, model: type[CameraOptions]) -> Any:
        return self.cam.options(self.name, model)

    def describe_source(self) -> str:
        """The source as it may appear in logs and health (credentials removed)."""
        return self.redact(self.cam.source)

    # -- lifecycle ---------------------------------------------------------------------------
    async def configure(self, app: AppConfig) -> None:
        self.cam = app.cameras[self.camera_id]

    async def start(self) -> None:
        self._finished = False
        self._stopping = False
        self.cam_state = "connecting"
        self.set_state("starting", "connecting")
        self._thread = SourceThread(f"spyoncino-cam-{self.camera_id}")
        self.spawn(self._loop(), "frames")

    async def stop(self) -> None:
        # the flag ends the loop even if a cancellation got lost in a race with a frame
        self._stopping = True
        await super().stop()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        fut = thread.submit(self._safe_close, "close")
        try:
            async with asyncio.timeout(self.abandon_after):
                await asyncio.wrap_future(fut)
        except TimeoutError:
            self.interrupt()
            self.log.warning("camera_close_timeout", camera=self.camera_id)
        thread.shutdown()

    def _safe_close(self) -> None:
        try:
            self.close()
        except Exception as exc:
            self.log.debug("close_failed", error=self.redact(repr(exc)))

    def is_finished(self) -> bool:
        return self._finished

    def redact(self, text: str) -> str:
        return redact_text(text)

    # -- running blocking calls on the camera thread -------------------------------------------
    async def _call(self, fn: Callable[[], R], limit: float, what: str) -> R:
        """Run ``fn`` on this camera's thread; past ``limit`` seconds raise ``SourceStalled``.

        A call that overran is interrupted and given ``abandon_after`` seconds to return; if it
        does not, its thread is abandoned and a fresh one takes over, so a hung driver costs a
        thread, never the camera.
        """
        if self._thread is None or not self._thread.alive:
            self._thread = SourceThread(f"spyoncino-cam-{self.camera_id}")
        fut = self._thread.submit(fn, what)
        wrapped = asyncio.wrap_future(fut)
        try:
            async with asyncio.timeout(limit):
                return await asyncio.shield(wrapped)
        except TimeoutError:
            self.interrupt()
            try:
                async with asyncio.timeout(self.abandon_after):
                    await asyncio.shield(wrapped)
            except TimeoutError:
                stuck = self._thread.busy or what
                self.log.error(
                    "camera_thread_abandoned",
                    camera=self.camera_id,
                    call=what,
                    stuck_in=stuck,
                    after_s=limit,
                )
                fut.cancel()  # if it never started, it must not run later on the old thread
                self._thread.shutdown()
                self._thread = SourceThread(f"spyoncino-cam-{self.camera_id}")
                self._count_abandoned(stuck)
            except Exception as exc:  # it returned with an error after the interrupt
                self.log.debug("camera_call_interrupted", call=what, error=self.redact(repr(exc)))
            raise SourceStalled(f"{what}: no answer for {limit:.0f}s") from None
        except asyncio.CancelledError:
            self.interrupt()
            raise

    def _count_abandoned(self, stuck: str) -> None:
        """One more thread lost to a hung driver; past ``wedged_after`` in a row: ``wedged``."""
        self.threads_abandoned += 1
        self._hung_in.append(stuck)
        reason = self.wedged_reason()
        if reason is None or self.cam_state in ("failed", "ended"):
            return
        if self.cam_state != "wedged":
            self.log.error(
                "camera_wedged",
                camera=self.camera_id,
                source=self.describe_source(),
                hangs=len(self._hung_in),
                threads_abandoned=self.threads_abandoned,
            )
        self._set_cam("wedged")

    def wedged_reason(self) -> str | None:
        """Why the camera is ``wedged`` (its driver hung too often in a row), else None."""
        if not self._hung_in or len(self._hung_in) < self.wedged_after:
            return None
        counts: dict[str, int] = {}
        for call in self._hung_in:
            counts[call] = counts.get(call, 0) + 1
        hangs = ", ".join(f"{c}() {n} time{'s' if n != 1 else ''}" for c, n in counts.items())
        return f"driver hung in {hangs}; restart needed"

    # -- the loop ----------------------------------------------------------------------------
    async def _loop(self) -> None:
        attempt = 0
        while not self._stopping:
            opened_at = self.frames_read
            try:
                await self._call(self.open, self.open_timeout, "open")
                if self.cam_state not in ("connecting", "streaming"):
                    # reopened: show 'reconnecting' until the first frame proves it works
                    self._set_cam("reconnecting")
                await self._read_until_failure()
                return  # only a stop ends reading without an exception
            except SourceEnded:
                self._finished = True
                self._set_cam("ended")
                self.log.info("source_ended", camera=self.camera_id, frames=self.frames_read)
                await self._call_quietly(self._safe_close)
                return
            except SourceFatal as exc:
                msg = self.redact(str(exc))
                self._set_cam("failed", error=msg)
                self.log.error(
                    "camera_failed", camera=self.camera_id, source=self.describe_source(), error=msg
                )
                await self._call_quietly(self._safe_close)
                return
            except SourceError as exc:
                msg = self.redact(str(exc))
                self._set_cam("stalled" if isinstance(exc, SourceStalled) else "reconnecting", msg)
                await self._call_quietly(self._safe_close)
                if self.frames_read > opened_at:
                    attempt = 0  # it worked for a while: start the backoff over
                attempt += 1
                self.reconnects += 1
                delay = self.backoff_delay(attempt)
                self.log.warning(
                    "camera_reconnecting",
                    camera=self.camera_id,
                    source=self.describe_source(),
                    attempt=attempt,
                    retry_in_s=round(delay, 2),
                    error=msg,
                )
                await self.wait_before_retry(delay, exc)
                if self.cam_state == "stalled":
                    self._set_cam("reconnecting")

    async def wait_before_retry(self, delay: float, error: SourceError) -> None:
        """Sleep out the backoff. Inputs that can tell cheaply that the source is back (a
        TCP port that accepts again) override this to end the wait early."""
        await asyncio.sleep(delay)

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: half to all of ``base * 2^(attempt-1)``, capped."""
        delay = min(self.backoff_cap, self.backoff_base * 2 ** min(attempt - 1, 30))
        return float(delay * (0.5 + random.random() / 2))

    async def _call_quietly(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(SourceError):
            await self._call(fn, self.abandon_after, "close")

    async def _read_until_failure(self) -> None:
        if not self.finite:
            await self._pump_until_failure()
            return
        while not self._stopping:
            raw = await self._call(self.read, self.stall_timeout, "read")
            await self._handle(raw)

    async def _pump_until_failure(self) -> None:
        """Live sources: the camera thread reads ahead and hands over the newest frame.

        One wake-up of the event loop per frame and no per-frame job; when the loop is busy
        the thread replaces the frame waiting in the slot, and the replaced one is counted
        in ``frames_dropped`` instead of queueing up.
        """
        if self._thread is None or not self._thread.alive:
            self._thread = SourceThread(f"spyoncino-cam-{self.camera_id}")
        handoff = _Handoff(asyncio.get_running_loop(), self)
        self._thread.submit(handoff.pump, "read")
        try:
            while not self._stopping:
                try:
                    raw = await handoff.get(self.stall_timeout)
                except TimeoutError:
                    self.interrupt()
                    raise SourceStalled(f"no frame for {self.stall_timeout:g}s") from None
                await self._handle(raw)
        finally:
            handoff.close()

    async def _handle(self, raw: RawFrame) -> None:
        self.frames_read += 1
        self._hung_in.clear()  # the driver works again
        wait = self.pace(raw)
        if wait > 0:
            await self.ctx.clock.sleep(wait)
        now = self.ctx.clock.monotonic()
        # a live camera's thread has capped it already; a file is capped on its own clock (a
        # replay read faster than real time keeps the video's rate, not the reader's)
        if self.finite and self.over_cap(self.stamp(raw, now)[0]):
            self.frames_capped += 1
            return
        await self._publish(raw, now)

    def over_cap(self, now: float) -> bool:
        """Whether a frame taken at ``now`` (monotonic seconds on the source's clock) goes
        over the camera's cap (``AppConfig.frame_cap``); if not, it takes the next slot.
        Called from one thread only: the camera's for a live source, the event loop's for a
        file."""
        cap = self.ctx.app.frame_cap(self.camera_id)
        if not cap:
            return False
        if now < self._next_allowed:
            return True
        self._next_allowed = max(self._next_allowed + 1.0 / cap, now + 0.5 / cap)
        return False

    def budgeted_ring(self, ring: PacketRing | None) -> PacketRing:
        """``ring`` (a new one when None) held to this camera's share of memory,
        ``runtime.camera_buffer_mb``, for an input keeping H.264 packets (its own ``packets``
        or another stream's)."""
        ring = ring or PacketRing()
        ring.budget_bytes = int(self.ctx.app.runtime.camera_buffer_mb * 1_000_000)
        return ring

    def clip_packets(self) -> PacketRing | None:
        """The packet ring clips are cut from, handed on with each frame: the decoded stream's
        own (``packets``, anchored to the frames) unless the input records another stream
        (an RTSP camera's main stream beside its decoded sub-stream)."""
        return self.packets

    def stamp(self, raw: RawFrame, now: float) -> tuple[float, float]:
        """(monotonic, wall) time of a frame: when it arrived, for a live camera."""
        return now, self.ctx.clock.time()

    def prepare(self, raw: RawFrame) -> RawFrame:
        """``raw`` with its luma plane at ``luma_width``: shrunk from the full Y plane, or made
        from a colour-only picture (a USB camera's BGR). A live camera's thread calls it for
        each frame it keeps, so neither happens on the event loop; ``_publish`` calls it again
        (a no-op then) for the other sources."""
        width = self.cam.luma_width
        luma = raw.luma
        if luma is None:
            if raw.image is None:
                return raw  # _publish says what is wrong
            return replace(raw, luma=make_luma(raw.image, width))
        if luma.shape[1] > width:
            return replace(raw, luma=shrink_luma(luma, width))
        return raw

    async def _publish(self, raw: RawFrame, now: float) -> None:
        raw = self.prepare(raw)  # a live camera's thread has done it: then nothing to do
        luma = raw.luma
        if luma is None:
            raise SourceError("input produced neither an image nor a luma plane")
        image, decode, resize = raw.image, raw.decode, raw.resize
        masks = self.cam.privacy_masks
        if masks:
            resize = None  # the masks are drawn on the full picture only
            # blacked out before anything downstream reads the frame; the colour image stays
            # lazy (masked in whichever worker decodes it, never on the loop)
            luma = apply_masks(luma, masks)
            decode = _masked(image, decode, masks)
            image = None
        mono_ts, wall_ts = self.stamp(raw, now)
        ring = self.packets
        if ring is not None and raw.pts_s is not None:
            ring.anchor(raw.pts_s, mono_ts)
        frame = Frame(
            camera_id=self.camera_id,
            seq=self.seq,
            mono_ts=mono_ts,
            wall_ts=wall_ts,
            width=raw.width,
            height=raw.height,
            luma=luma,
            _image=image,
            _decode=decode,
            source_packets=self.clip_packets(),
            _resize=resize,
        )
        self.seq += 1
        self.last_frame_mono = now
        self._stamps.append(now)
        if self.cam_state != "streaming":
            self._set_cam("streaming")
            self.log.info("camera_streaming", camera=self.camera_id, source=self.describe_source())
        await self.bus.publish(self.topic, frame)
        self.frames_published += 1

    def _set_cam(self, state: CameraState, error: str | None = None) -> None:
        wedged = self.wedged_reason()
        if wedged is not None and (state in _RETRYING or state == "wedged"):
            # retrying goes on, but until a frame arrives the camera stays wedged
            state, error = "wedged", wedged
        self.cam_state = state
        if error is not None:
            self.last_error = error
        module_state = {
            "streaming": "ok",
            "ended": "ok",
            "connecting": "starting",
            "failed": "failed",
            "wedged": "failed",
        }.get(state, "degraded")
        detail = state if error is None or state == "streaming" else f"{state}: {error}"
        self.set_state(module_state, detail, error)  # type: ignore[arg-type]

    #: seconds of history the fps figure is measured over
    fps_window: ClassVar[float] = 5.0

    @property
    def fps(self) -> float:
        """Frames published per second over the last ``fps_window`` seconds (0 once they stop)."""
        now = self.ctx.clock.monotonic()
        recent = [t for t in self._stamps if now - t <= self.fps_window]
        if len(recent) < 2:
            return 0.0
        span = recent[-1] - recent[0]
        return (len(recent) - 1) / span if span > 0 else 0.0

    def drops(self) -> dict[str, int]:
        """Frames lost before anyone downstream saw them, by reason (see ``DROP_REASONS``)."""
        return {
            "fps_cap": self.frames_capped + self.capped_on_thread,
            "queue_full": self.frames_dropped,
            "decode_error": self.decode_errors,
        }

    def metrics(self) -> dict[str, float | int | str]:
        now = self.ctx.clock.monotonic()
        age = -1.0 if self.last_frame_mono is None else now - self.last_frame_mono
        return {
            "camera": self.camera_id,
            "camera_state": self.cam_state,
            "source": self.describe_source(),
            "fps": round(self.fps, 2),
            # the cap in force (0: none); the watchdog allows 3 frame times of it
            "max_fps": self.ctx.app.frame_cap(self.camera_id) or 0.0,
            "last_frame_age_s": round(age, 3),
            "frames": self.frames_published,
            # what the source delivered: taken by the loop (a file's capped frames included),
            # replaced in the slot, or capped on a live camera's thread
            "frames_decoded": self.frames_read + self.frames_dropped + self.capped_on_thread,
            "frames_capped": self.frames_capped + self.capped_on_thread,
            "frames_dropped": self.frames_dropped,
            **{f"dropped_{reason}": n for reason, n in self.drops().items()},
            "reconnects": self.reconnects,
            "threads_abandoned": self.threads_abandoned,
            "hangs_in_a_row": len(self._hung_in),
            "last_error": self.last_error or "",
        }
