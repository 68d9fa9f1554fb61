"""Media retention and SD-card care: old files go, the card never fills, nothing half-written stays.

Every ``interval_s`` (and once at start) one pass, in the executor:

1. **Leftovers**: temp files of interrupted writes (``.*.part``) and stale scratch files are
   removed (all of them at start, when nothing can be writing; older than ``temp_max_age_s``
   later).
2. **Age**: files older than their kind's limit go (snapshots, clean copies and thumbnails
   ``snapshot_days``, GIFs ``gif_days``, clips ``clip_days``).
3. **Space**: while the filesystem has less than ``min_free_percent`` free, the oldest clips
   go first, then GIFs, then snapshots, sparing events still open or ended less than
   ``protect_s`` ago. Should that not be enough (a burst of events filling the card within
   ``protect_s``), the floor wins over ``protect_s``: files of ended events go too, oldest
   first. Files of events still open and of the newest event on disk are never removed, so the
   newest event is never refused while older media exist.
4. **Pending copies**: a file an outbox row still has to send off the box (payload
   ``hold_local``, the ``s3`` module's copies) is spared by age and by both space rounds
   above; only when the floor still cannot be held does it go, oldest first. Then it is
   logged (``retention_removed_before_upload``) and the index records that copy as failed,
   "lost before upload" (a ``notifications`` row, from ``MediaRemoved.lost``), so the owner
   can see what never left.

Besides the timer, a pass runs at once (at most every ``URGENT_GAP_S``) when an artifact brings
free space under the floor and when a writer reports a failed write on ``storage.fault`` (the
index on a full card). A pass that fails is logged and retried.

Removed files leave the index too: retention publishes their paths on ``storage.media.removed``
(``MediaRemoved``; nothing when nothing was removed, so an idle box writes nothing) and the
index, the only owner of that database, forgets them in its next batch (and keeps them for a
later one when it cannot write). A ``RetentionReport`` is published on
``storage.retention`` after every pass. Health metrics report the media bytes written in the
last hour and the process's own disk writes per hour (``/proc/self/io``).

Free space is read through ``self.disk_free`` (``spyoncino.helpers.files.disk_free`` unless
``ctx.extras["disk_free"]`` provides another), the one OS boundary tests replace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig, ModuleContext
from spyoncino.helpers.files import clean_temp_files, disk_free
from spyoncino.helpers.media_layout import MediaFile, scan
from spyoncino.helpers.outbox import held_files as outbox_held_files
from spyoncino.helpers.outbox import outbox_path
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.index import MediaRemoved
from spyoncino.schemas.media import MediaArtifact, RetentionReport, StorageFault

#: what goes first when space runs out
SPACE_ORDER: dict[str, int] = {
    "clip": 0,
    "gif": 1,
    "snapshot_clean": 2,
    "thumbnail": 2,
    "snapshot": 2,
}

DiskFree = Callable[[Path], tuple[int, int]]

#: what the index says of a copy whose file retention had to remove first
LOST_BEFORE_UPLOAD = "lost before upload: removed by retention to keep the disk floor"


@dataclass(frozen=True, slots=True)
class _Held:
    """An outbox row that still has to send a file off the box (``hold_local``)."""

    channel: str
    event_id: str
    kind: str
    recipient: str


def held_files(db_path: Path) -> dict[str, _Held]:
    """relpath -> the pending outbox row holding it; empty when there is no outbox yet.
    ``db_path`` is the index's file: the outbox's is beside it (and until a channel adopts
    an older release's table, that table in the index file holds files too)."""
    rows = outbox_held_files(outbox_path(db_path), db_path)
    return {rel: _Held(ch, ev, kind, rcpt) for rel, ch, ev, kind, rcpt in rows}


#: least seconds between two passes not run by the timer (a full card of something else must
#: not turn every artifact into a scan of the media folder)
URGENT_GAP_S = 2.0


class Config(ModuleConfig):
    type: Literal["media"] = "media"
    snapshot_days: float = Field(
        default=30.0, gt=0.0, le=3650.0, description="Days snapshots (and thumbnails) are kept."
    )
    gif_days: float = Field(default=14.0, gt=0.0, le=3650.0, description="Days GIFs are kept.")
    clip_days: float = Field(default=7.0, gt=0.0, le=3650.0, description="Days clips are kept.")
    min_free_percent: float = Field(
        default=10.0, ge=0.0, le=90.0, description="Free space kept on the media filesystem (%)."
    )
    interval_s: float = Field(
        default=300.0, ge=5.0, le=86400.0, description="Seconds between retention passes."
    )
    protect_s: float = Field(
        default=600.0,
        ge=0.0,
        le=86400.0,
        description="Seconds after its end an event's files are safe (its clip may be in work).",
    )
    temp_max_age_s: float = Field(
        default=3600.0, ge=60.0, le=86400.0, description="Age of a leftover temp file to remove."
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    media: MediaFile
    mtime: float
    size: int


def _proc_write_bytes() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class MediaRetention(BaseModule[Config]):
    category: ClassVar[Any] = "storage"
    Config: ClassVar[type[ModuleConfig]] = Config

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.root = Path(".")
        self.scratch = Path(".scratch")
        self.db_path = Path("events.sqlite3")
        self.disk_free: DiskFree = ctx.extras.get("disk_free", disk_free)
        self.open_events: set[str] = set()
        self.ended_at: dict[str, float] = {}
        self.passes = 0
        self.removed_total = 0
        self.last_report: RetentionReport | None = None
        self._written: deque[tuple[float, int]] = deque()
        self.media_bytes_total = 0
        self._io_start: tuple[float, int] | None = None
        self._running = False
        self._urgent = asyncio.Event()
        self._last_pass_mono = 0.0
        self.urgent_gap_s = URGENT_GAP_S
        #: relpaths removed from disk in this pass, for the index to forget
        self._unforgotten: list[str] = []
        #: copies whose file went before it left the box, for the index to record
        self._lost: list[AlertNotification] = []
        self.removed_before_upload = 0
        self.pass_failures = 0

    async def configure(self, app: AppConfig) -> None:
        self.cfg = self.config_of(app)
        self.root = app.storage.root
        self.scratch = app.storage.scratch_dir
        self.db_path = app.storage.db_path

    async def start(self) -> None:
        io = _proc_write_bytes()
        self._io_start = (time.monotonic(), io) if io is not None else None
        self.subscribe(topics.EVENT.pattern(phase="started"), self._on_event, policy="block")
        self.subscribe(topics.EVENT.pattern(phase="updated"), self._on_event, policy="block")
        self.subscribe(topics.EVENT.pattern(phase="ended"), self._on_event, policy="block")
        self.subscribe(topics.ARTIFACT.pattern(), self._on_artifact, policy="block")
        self.subscribe(topics.STORAGE_FAULT.name, self._on_fault, policy="latest")
        await self.run_pass(startup=True)
        self.spawn(self._loop(), "retention")
        self.set_state("ok", str(self.root))

    async def _on_event(self, msg: Message[EventNotice]) -> None:
        ev = msg.payload
        if ev.phase == "ended":
            self.open_events.discard(ev.event_id)
            self.ended_at[ev.event_id] = time.time()
        else:
            self.open_events.add(ev.event_id)
            self.ended_at.pop(ev.event_id, None)

    async def _on_artifact(self, msg: Message[MediaArtifact]) -> None:
        now = time.time()
        self._written.append((now, msg.payload.size_bytes))
        self.media_bytes_total += msg.payload.size_bytes
        while self._written and self._written[0][0] < now - 3600:
            self._written.popleft()
        if not self._urgent.is_set() and await self._below_floor():
            self._urgent.set()

    async def _on_fault(self, msg: Message[StorageFault]) -> None:
        if not msg.payload.writable:
            self._urgent.set()

    async def _below_floor(self) -> bool:
        try:
            free, total = await self.ctx.executor.run(self.disk_free, self.root)
        except OSError:
            return False
        return free < total * self.cfg.min_free_percent / 100.0

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), self.cfg.interval_s)
            if self._urgent.is_set():
                await asyncio.sleep(
                    max(0.0, self._last_pass_mono + self.urgent_gap_s - time.monotonic())
                )
            self._urgent.clear()
            try:
                await self.run_pass()
            except Exception as e:  # the next pass retries; the timer must never end
                self.pass_failures += 1
                self.log.error("retention_pass_failed", error=repr(e), exc_info=e)

    def protected(self, now: float) -> set[str]:
        self.ended_at = {
            e: t for e, t in self.ended_at.items() if now - t < max(self.cfg.protect_s, 1.0)
        }
        return self.open_events | set(self.ended_at)

    async def run_pass(self, *, startup: bool = False) -> RetentionReport:
        """One retention pass; returns (and publishes) what it removed."""
        if self._running:
            return self.last_report or RetentionReport(
                removed_files=0, removed_bytes=0, free_percent=100.0, reason="none"
            )
        self._running = True
        try:
            report = await self.ctx.executor.run(
                self._pass, self.protected(time.time()), set(self.open_events), startup
            )
        finally:
            self._running = False
            self._last_pass_mono = time.monotonic()
        if self._unforgotten or self._lost:
            removed, self._unforgotten = tuple(self._unforgotten), []
            lost, self._lost = tuple(self._lost), []
            await self.bus.publish(topics.MEDIA_REMOVED, MediaRemoved(relpaths=removed, lost=lost))
        self.passes += 1
        self.removed_total += report.removed_files
        self.last_report = report
        if report.removed_files:
            self.log.info(
                "retention_removed",
                files=report.removed_files,
                bytes=report.removed_bytes,
                by_kind=report.by_kind,
                reason=report.reason,
                free_percent=report.free_percent,
            )
        await self.bus.publish(topics.RETENTION.name, report)
        return report

    def _pass(self, protected: set[str], open_events: set[str], startup: bool) -> RetentionReport:
        clean_temp_files(self.root, 0.0 if startup else self.cfg.temp_max_age_s)
        self._clean_scratch(0.0 if startup else self.cfg.temp_max_age_s)
        now = time.time()
        entries: list[_Entry] = []
        for m in scan(self.root):
            with contextlib.suppress(OSError):
                st = m.path.stat()
                entries.append(_Entry(m, st.st_mtime, st.st_size))
        never: set[str] = set(open_events)
        if entries:
            never.add(max(entries, key=lambda e: e.mtime).media.event_id)
            protected = protected | never
        # read only when something is to go: an idle pass opens no database (writes nothing)
        held_cache: list[dict[str, _Held]] = []

        def held() -> dict[str, _Held]:
            if not held_cache:
                held_cache.append(held_files(self.db_path))
            return held_cache[0]

        limits = {
            "snapshot": self.cfg.snapshot_days,
            "snapshot_clean": self.cfg.snapshot_days,
            "thumbnail": self.cfg.snapshot_days,
            "gif": self.cfg.gif_days,
            "clip": self.cfg.clip_days,
        }
        removed: list[_Entry] = []
        reasons: set[str] = set()
        keep: list[_Entry] = []
        for e in entries:
            expired = now - e.mtime > limits[e.media.kind] * 86400
            if (
                expired
                and e.media.event_id not in protected
                and e.media.relpath not in held()
                and self._remove(e)
            ):
                removed.append(e)
                reasons.add("age")
                continue
            keep.append(e)
        free, total = self.disk_free(self.root)
        target = total * self.cfg.min_free_percent / 100.0
        if free < target:
            holding = held()
            order = sorted(
                (
                    e
                    for e in keep
                    if e.media.event_id not in protected and e.media.relpath not in holding
                ),
                key=lambda e: (SPACE_ORDER[e.media.kind], e.mtime),
            )
            # the floor wins over protect_s: then ended events go too, oldest first
            gone = {id(e) for e in removed}
            last_resort = sorted(
                (
                    e
                    for e in keep
                    if e.media.event_id in protected
                    and e.media.event_id not in never
                    and e.media.relpath not in holding
                ),
                key=lambda e: e.mtime,
            )
            # pending copies go last of all: evidence that never left the box
            unsent = sorted(
                (e for e in keep if e.media.relpath in holding and e.media.event_id not in never),
                key=lambda e: e.mtime,
            )
            for e in [*order, *last_resort, *unsent]:
                if free >= target:
                    break
                if id(e) not in gone and self._remove(e):
                    removed.append(e)
                    reasons.add("space")
                    free += e.size
                    if e.media.relpath in holding:
                        self._lost_before_upload(e, holding[e.media.relpath])
            free, total = self.disk_free(self.root)
        if removed:
            self._prune_folders({e.media.path.parent for e in removed})
        self._unforgotten.extend(e.media.relpath for e in removed)
        by_kind: dict[str, int] = {}
        for e in removed:
            by_kind[e.media.kind] = by_kind.get(e.media.kind, 0) + 1
        reason: Literal["age", "space", "none", "age+space"] = (
            "age+space"
            if len(reasons) == 2
            else "age"
            if "age" in reasons
            else "space"
            if "space" in reasons
            else "none"
        )
        return RetentionReport(
            removed_files=len(removed),
            removed_bytes=sum(e.size for e in removed),
            by_kind=by_kind,
            free_percent=round(100.0 * free / total, 2) if total else 100.0,
            reason=reason,
        )

    def _lost_before_upload(self, e: _Entry, h: _Held) -> None:
        self.removed_before_upload += 1
        self.log.warning(
            "retention_removed_before_upload",
            relpath=e.media.relpath,
            channel=h.channel,
            event_id=h.event_id,
            reason="disk floor",
        )
        self._lost.append(
            AlertNotification(
                channel=h.channel,
                event_id=h.event_id,
                camera_id=e.media.camera_id,
                kind=h.kind,
                status="failed",
                recipient=h.recipient,
                error=LOST_BEFORE_UPLOAD,
                at=time.time(),
            )
        )

    def _remove(self, e: _Entry) -> bool:
        try:
            e.media.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            self.log.warning("retention_unlink_failed", relpath=e.media.relpath, error=repr(exc))
            return False
        return True

    def _prune_folders(self, folders: set[Path]) -> None:
        for folder in folders:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty
                folder.parent.rmdir()

    def _clean_scratch(self, older_than_s: float) -> None:
        if not self.scratch.is_dir():
            return
        cutoff = time.time() - older_than_s
        for p in self.scratch.iterdir():
            with contextlib.suppress(OSError):
                if p.is_file() and p.stat().st_mtime <= cutoff:
                    p.unlink()

    def write_rate(self) -> float:
        """This process's disk writes, bytes per hour since start (0 when unknown)."""
        if self._io_start is None:
            return 0.0
        now = _proc_write_bytes()
        t0, b0 = self._io_start
        span = time.monotonic() - t0
        if now is None or span <= 0:
            return 0.0
        return (now - b0) * 3600.0 / span

    def metrics(self) -> dict[str, float | int | str]:
        now = time.time()
        last_hour = sum(n for t, n in self._written if t >= now - 3600)
        report = self.last_report
        return {
            "media_bytes_last_hour": last_hour,
            "media_bytes_total": self.media_bytes_total,
            "process_write_bytes_per_hour": round(self.write_rate()),
            "retention_passes": self.passes,
            "retention_removed_files": self.removed_total,
            "retention_failures": self.pass_failures,
            "retention_removed_before_upload": self.removed_before_upload,
            # 1 while a pass is running or due at once (tests wait for 0)
            "retention_busy": int(self._running or self._urgent.is_set()),
            "free_percent": report.free_percent if report is not None else -1.0,
        }
