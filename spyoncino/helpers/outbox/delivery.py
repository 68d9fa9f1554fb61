"""Delivery: one worker per recipient, in order, retried by what a failure means, rate-limited;
the errors a channel's sender raises and the settings every channel embeds."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field

from spyoncino.core.bus import Bus
from spyoncino.core.clock import SYSTEM_CLOCK, Clock
from spyoncino.core.contracts import (
    BoundedExecutor,
)
from spyoncino.helpers.outbox.store import (
    HEALTH_KINDS,
    PRIMARY_KINDS,
    OutboxItem,
    _fold,
    _insert,
    _insert_late,
    _insert_superseding,
    _load_pending,
    _mark,
    _primary_folded,
    _prune,
    _related,
    counts,
    item_key,
    open_db,
)
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification

R = TypeVar("R")


class DeliveryError(Exception):
    """Base of what a channel's sender raises."""


class RetryAfter(DeliveryError):
    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"retry after {seconds}s")
        self.seconds = float(seconds)


class TransientError(DeliveryError):
    """Worth retrying: server error, timeout, network down."""


class ServerError(TransientError):
    """The server answered, with an error for this request (a 5xx): retried with backoff like
    any transient error, but the server is up, so the items behind it go on meanwhile (this
    one may be a poison item that fails whatever the server's state)."""


class PermanentError(DeliveryError):
    """Retrying will not help: the request is wrong or the recipient refuses it."""


class DeliveredUnknown(DeliveryError):
    """The server accepted the request (2xx) but its answer could not be read.

    The message was most likely delivered: it is marked sent without a result and logged,
    never uploaded again.
    """


class OutboxSettings(BaseModel):
    """Delivery settings; every channel embeds these as its ``outbox:`` sub-section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon_s: float = Field(
        default=86400.0,
        ge=1.0,
        le=30 * 86400.0,
        description="Keep retrying an alert this long (seconds) before reporting it failed.",
    )
    backoff_initial_s: float = Field(
        default=2.0, ge=0.01, le=600.0, description="First retry delay after an error."
    )
    backoff_max_s: float = Field(
        default=120.0, ge=0.01, le=3600.0, description="Longest retry delay (the backoff cap)."
    )
    attempt_timeout_s: float = Field(
        default=60.0, ge=0.1, le=600.0, description="A delivery attempt taking longer is retried."
    )
    min_interval_s: float = Field(
        default=1.0,
        ge=0.0,
        le=60.0,
        description="Seconds per send to one recipient, on average: sends beyond the burst "
        "are this far apart.",
    )
    burst: int = Field(
        default=4,
        ge=1,
        le=30,
        description="Sends to one recipient that may go back to back before min_interval_s "
        "spaces them (Telegram allows short bursts): four cameras' alerts at once all go out "
        "at once. A follow-up (animation, clip, caption edit) always leaves one for an alert.",
    )
    per_minute: int = Field(
        default=0, ge=0, le=10_000, description="Sends per recipient per minute (0: no cap)."
    )
    camera_budget: int = Field(
        default=20,
        ge=0,
        le=10_000,
        description="Alerts per camera per camera_window_s (0: no limit); the rest are counted.",
    )
    camera_window_s: float = Field(
        default=600.0, ge=1.0, le=86400.0, description="Window of the per-camera alert budget."
    )
    coalesce_after: int = Field(
        default=10,
        ge=0,
        le=100_000,
        description="Pending alerts for one recipient that trigger folding them into one summary "
        "per camera (0: never fold).",
    )
    keep_sent_s: float = Field(
        default=7 * 86400.0,
        ge=60.0,
        le=365 * 86400.0,
        description="How long delivered rows are kept (they make re-sends idempotent).",
    )


Sender = Callable[[OutboxItem], Awaitable["str | None"]]
RateFor = Callable[[str], "tuple[float, int]"]


# -- rate limits ------------------------------------------------------------------------------
class _Window:
    """Timestamps of recent sends in a sliding window."""

    def __init__(self, span: float) -> None:
        self.span = span
        self.times: deque[float] = deque()

    def trim(self, now: float) -> None:
        while self.times and self.times[0] <= now - self.span:
            self.times.popleft()

    def wait(self, now: float, cap: int) -> float:
        """Seconds until one more fits under ``cap`` (0: now)."""
        if cap <= 0:
            return 0.0
        self.trim(now)
        if len(self.times) < cap:
            return 0.0
        return self.times[0] + self.span - now

    def add(self, now: float) -> None:
        self.times.append(now)


@dataclass
class _Recipient:
    queue: deque[OutboxItem] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_send: float = 0.0
    #: sends left in the burst at ``tokens_at`` (None: a full burst)
    tokens: float | None = None
    tokens_at: float = 0.0
    minute: _Window = field(default_factory=lambda: _Window(60.0))
    blocked_until: float = 0.0
    task: asyncio.Task[None] | None = None
    #: the head's last attempt got an error answer from a server that is up (``ServerError``):
    #: the items behind it may be tried while it waits out its backoff
    may_pass: bool = False
    #: the item being attempted (picked, sent, its outcome recorded); ``supersede`` flags it
    #: instead of taking it out of the queue
    current: OutboxItem | None = None


class Outbox:
    """Stores and delivers one channel's messages; owned by that channel's module."""

    def __init__(
        self,
        *,
        channel: str,
        db_path: Path,
        bus: Bus,
        executor: BoundedExecutor,
        sender: Sender,
        settings: OutboxSettings | None = None,
        rate_for: RateFor | None = None,
        module: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        legacy_db: Path | None = None,
    ) -> None:
        self.channel = channel
        #: what backoff, pacing, horizons and the rate windows read and sleep on
        self.clock = clock
        self.db_path = db_path
        #: the index file an older release kept the outbox table in (adopted at start)
        self.legacy_db = legacy_db
        self.bus = bus
        self.executor = executor
        self.sender = sender
        self.settings = settings or OutboxSettings()
        self.rate_for = rate_for
        self.log = structlog.get_logger("spyoncino").bind(module=module or channel, part="outbox")
        self._conn: sqlite3.Connection | None = None
        self._db_lock = asyncio.Lock()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"outbox-{channel}")
        self._recipients: dict[str, _Recipient] = {}
        self._camera_windows: dict[str, _Window] = {}
        self._camera_over: dict[str, int] = {}
        self._closing = False
        #: sends under way; ``close`` lets them finish (bounded) rather than cancel them
        self._sending = 0
        self._no_sends = asyncio.Event()
        self._janitor: asyncio.Task[None] | None = None
        #: items the database refused (disk full), by key, with their outcome so far
        self._unsaved: dict[str, tuple[OutboxItem, str, str | None, str | None]] = {}
        #: outcomes of stored items the database refused: id -> (item, status, error, result)
        self._unmarked: dict[int, tuple[OutboxItem, str, str | None, str | None]] = {}
        self._next_unsaved_id = -1
        #: (recipient, event id) of alerts folded into a summary: their late follow-ups fold too
        self._folded: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.stats: dict[str, int] = {
            "queued": 0,
            "sent": 0,
            "failed": 0,
            "retries": 0,
            "coalesced": 0,
            "rate_limited": 0,
            "duplicates": 0,
            "unsaved": 0,
            "store_failures": 0,
            "delivered_unknown": 0,
            "superseded": 0,
        }

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._conn = await self.run_io(open_db, self.db_path, self.legacy_db)
        now = self.clock.time()
        await self._db(_prune, self.channel, now - self.settings.keep_sent_s)
        pending = await self._db(_load_pending, self.channel)
        for item in pending:
            self._recipient(item.recipient).queue.append(item)
        if pending:
            self.log.info("outbox_resumed", pending=len(pending))
        for rid in list(self._recipients):
            self._ensure_worker(rid)
        self._janitor = asyncio.get_running_loop().create_task(
            self._prune_loop(), name=f"outbox:{self.channel}:prune"
        )

    async def _prune_loop(self) -> None:
        """Forget delivered rows older than ``keep_sent_s``, a few times a day (one DELETE)."""
        while True:
            await asyncio.sleep(min(6 * 3600.0, self.settings.keep_sent_s / 4))
            try:
                await self._db(_prune, self.channel, self.clock.time() - self.settings.keep_sent_s)
            except sqlite3.Error as e:
                self.log.warning("outbox_prune_failed", error=repr(e))

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop the workers. A send under way gets up to ``grace_s`` to finish and be
        recorded: cancelled after the server took the message, it would stay pending and go
        again after the restart (the one double-send window, docs/modules/telegram.md)."""
        self._closing = True
        if self._sending and grace_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_sends.wait(), grace_s)
            if self._sending:
                self.log.warning("outbox_send_cut_at_stop", sends=self._sending, grace_s=grace_s)
        tasks = [r.task for r in self._recipients.values() if r.task is not None]
        if self._janitor is not None:
            tasks.append(self._janitor)
            self._janitor = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._recipients.clear()
        if self._unsaved or self._unmarked:
            await self._catch_up()
            if self._unsaved or self._unmarked:
                self.log.error(
                    "outbox_closed_unsaved",
                    unsaved=len(self._unsaved),
                    unmarked=len(self._unmarked),
                )
        conn, self._conn = self._conn, None
        if conn is not None:
            async with self._db_lock:
                await self.run_io(conn.close)
        self._io.shutdown(wait=False)

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._conn is None:
            raise RuntimeError("outbox is not open")
        async with self._db_lock:
            return await self.run_io(fn, self._conn, *args)

    async def run_io(self, fn: Callable[..., R], *args: Any) -> R:
        """Run small blocking I/O (SQLite, reading the file to send) on the outbox's own thread.

        Not the shared pool: there an alert would queue behind GIF encoding and inference.
        """
        return await asyncio.get_running_loop().run_in_executor(self._io, lambda: fn(*args))

    # -- enqueue ------------------------------------------------------------------------------
    def admit(self, camera_id: str, now: float | None = None) -> bool:
        """Whether one more alert of ``camera_id`` fits in the per-camera budget (and count it)."""
        s = self.settings
        if s.camera_budget <= 0:
            return True
        t = self.clock.monotonic() if now is None else now
        win = self._camera_windows.setdefault(camera_id, _Window(s.camera_window_s))
        if win.wait(t, s.camera_budget) > 0:
            self._camera_over[camera_id] = self._camera_over.get(camera_id, 0) + 1
            self.stats["rate_limited"] += 1
            return False
        win.add(t)
        return True

    def take_over_budget(self, camera_id: str) -> int:
        """Alerts of ``camera_id`` held back by the budget since the last call."""
        return self._camera_over.pop(camera_id, 0)

    async def enqueue(
        self,
        *,
        recipient: str,
        event_id: str,
        camera_id: str,
        kind: str,
        payload: dict[str, Any],
        supersede: bool = False,
    ) -> bool:
        """Store one message and wake its recipient's worker; False when it was already stored.

        ``supersede``: the message replaces any still pending of the same event, kind and
        recipient (an edit of a caption: only the newest one is worth sending), which are
        marked ``superseded`` in the transaction that stores it; each such message is stored
        under a key of its own. One already on its way is not: it goes on, the new one after
        it, and it is recorded sent if the server took it (superseded if not, never retried).
        """
        now = self.clock.time()
        key = item_key(self.channel, event_id, kind, recipient)
        idle: list[OutboxItem] = []
        busy: list[OutboxItem] = []
        if supersede:
            key = f"{key}:{time.time_ns()}"
            idle, busy = self._older(recipient, event_id, kind)
        item = OutboxItem(
            id=0,
            channel=self.channel,
            recipient=recipient,
            key=key,
            event_id=event_id,
            camera_id=camera_id,
            kind=kind,
            payload=payload,
            created_at=now,
            next_at=now,
        )
        if item.key in self._unsaved:
            self._put_back(recipient, idle)
            self.stats["duplicates"] += 1
            return False
        try:
            if supersede:
                older = [i.id for i in idle if i.id > 0]
                row_id = await self._db(_insert_superseding, item, older)
            else:
                row_id = await self._db(_insert, item)
        except sqlite3.Error as e:
            # the disk is full: deliver from memory, store when the database takes it again
            self._store_failed("outbox_store_failed", e, event_id=event_id, kind=kind)
            item.id = self._next_unsaved_id
            self._next_unsaved_id -= 1
            self._unsaved[item.key] = (item, "pending", None, None)
            self.stats["unsaved"] = len(self._unsaved)
            row_id = item.id
            for old in idle:  # marked once the newer one is stored (``_catch_up``), not before
                if old.id < 0:
                    self._unsaved[old.key] = (old, "superseded", None, None)
                else:
                    self._unmarked[old.id] = (old, "superseded", None, None)
        else:
            if row_id is None:
                self._put_back(recipient, idle)
                self.stats["duplicates"] += 1
                return False
            for old in idle:
                if old.id < 0:  # never stored: its outcome waits in memory with it
                    await self._record(old, "superseded")
            await self._catch_up()
        item.id = int(row_id)
        if supersede:
            self.stats["superseded"] += len(idle)
            await self._flag_busy(recipient, busy)
        if not item.primary and (recipient, event_id) in self._folded:
            # a GIF or clip of an alert folded into a summary: it goes with its alert
            await self._record(item, "coalesced")
            self.stats["coalesced"] += 1
            return True
        self.stats["queued"] += 1
        await self._publish(item, "queued")
        rec = self._recipient(recipient)
        rec.queue.append(item)
        rec.wake.set()
        self._ensure_worker(recipient)
        return True

    def _older(
        self, recipient: str, event_id: str, kind: str
    ) -> tuple[list[OutboxItem], list[OutboxItem]]:
        """The queued items a new one of ``event_id`` and ``kind`` replaces: (those waiting,
        taken out of the queue at once so that no worker picks one meanwhile; the one being
        attempted, left to finish)."""
        rec = self._recipients.get(recipient)
        if rec is None:
            return [], []
        idle: list[OutboxItem] = []
        busy: list[OutboxItem] = []
        for i in rec.queue:
            if i.event_id == event_id and i.kind == kind:
                (busy if i is rec.current else idle).append(i)
        for i in idle:
            self._drop(rec, i)
        return idle, busy

    def _put_back(self, recipient: str, items: list[OutboxItem]) -> None:
        """Items ``_older`` took out, when the new one was not stored after all."""
        if not items:
            return
        rec = self._recipient(recipient)
        rec.queue = deque(sorted([*rec.queue, *items], key=lambda i: (i.id < 0, abs(i.id))))

    async def _flag_busy(self, recipient: str, busy: list[OutboxItem]) -> None:
        """The newer item is stored: an older one still being attempted ends as superseded
        unless the server takes it; one whose attempt failed meanwhile is superseded now."""
        rec = self._recipients.get(recipient)
        for old in busy:
            old.superseded = True
            if rec is not None and old is not rec.current and any(q is old for q in rec.queue):
                await self._superseded(rec, old)

    async def _superseded(
        self, rec: _Recipient, item: OutboxItem, error: str | None = None
    ) -> None:
        await self._record(item, "superseded", error)
        self._drop(rec, item)
        self.stats["superseded"] += 1

    def _store_failed(self, what: str, e: Exception, **kw: Any) -> None:
        self.stats["store_failures"] += 1
        self.log.error(what, error=str(e) or repr(e), **kw)

    async def _record(
        self,
        item: OutboxItem,
        status: str,
        error: str | None = None,
        result: str | None = None,
    ) -> None:
        """Write an item's outcome; never raises (kept in memory while the database refuses)."""
        if item.id < 0:
            self._unsaved[item.key] = (item, status, error, result)
            await self._catch_up()
            return
        try:
            await self._db(_mark, item.id, status, item.attempts, item.next_at, error, result)
        except sqlite3.Error as e:
            self._store_failed("outbox_mark_failed", e, event_id=item.event_id, status=status)
            self._unmarked[item.id] = (item, status, error, result)
        else:
            self._unmarked.pop(item.id, None)
            await self._catch_up()

    async def _catch_up(self) -> None:
        """Store what the database refused before; stops at the first refusal. The items
        first, then the outcomes: an edit superseded by one the database refused is marked
        only once that one is stored."""
        try:
            # pending ones first (their order kept), so a crash leaves no edit marked
            # superseded before the one that replaces it is stored
            unsaved = sorted(self._unsaved.items(), key=lambda kv: kv[1][1] != "pending")
            for key, (item, status, error, result) in unsaved:
                new_id = await self._db(_insert_late, item, status, error, result)
                del self._unsaved[key]
                if new_id is not None:
                    item.id = int(new_id)
            for row_id, (item, status, error, result) in list(self._unmarked.items()):
                await self._db(_mark, row_id, status, item.attempts, item.next_at, error, result)
                del self._unmarked[row_id]
        except sqlite3.Error:
            pass  # still refused: the next write tries again
        except RuntimeError:
            pass  # closed meanwhile
        self.stats["unsaved"] = len(self._unsaved)

    def pending(self, recipient: str | None = None) -> int:
        if recipient is not None:
            rec = self._recipients.get(recipient)
            return len(rec.queue) if rec else 0
        return sum(len(r.queue) for r in self._recipients.values())

    async def counts(self) -> dict[str, int]:
        return dict(await self._db(counts, self.channel))

    # -- workers ------------------------------------------------------------------------------
    def _recipient(self, rid: str) -> _Recipient:
        rec = self._recipients.get(rid)
        if rec is None:
            rec = self._recipients[rid] = _Recipient()
        return rec

    def _ensure_worker(self, rid: str) -> None:
        rec = self._recipients[rid]
        if self._closing or (rec.task is not None and not rec.task.done()):
            return
        rec.task = asyncio.get_running_loop().create_task(
            self._worker(rid, rec), name=f"outbox:{self.channel}:{rid}"
        )

    async def _sleep(self, rec: _Recipient, seconds: float) -> None:
        if seconds <= 0:
            return
        rec.wake.clear()
        await self.clock.wait(rec.wake, seconds)

    async def _worker(self, rid: str, rec: _Recipient) -> None:
        while not self._closing:
            try:
                if not rec.queue:
                    rec.wake.clear()
                    await rec.wake.wait()
                    continue
                if self._unsaved or self._unmarked:
                    await self._catch_up()
                try:
                    await self._maybe_coalesce(rid, rec)
                except sqlite3.Error as e:  # folding can wait; delivery cannot
                    self._store_failed("outbox_fold_failed", e, recipient=rid)
                item, head = self._pick(rec)
                delay = self._delay(rid, rec, item)
                if delay > 0:
                    if item.primary:
                        # not rec.wake: a new item behind this one must not cut the wait short
                        await self.clock.sleep(min(delay, 5.0))
                    else:
                        # a follow-up waiting for its turn: a new alert wakes the line and,
                        # the burst's last send being left for it, goes out at once
                        await self._sleep(rec, min(delay, 5.0))
                    continue
                self._sending += 1
                self._no_sends.clear()
                rec.current = item
                try:
                    await self._attempt(rid, rec, item, head)
                finally:
                    rec.current = None
                    self._sending -= 1
                    if not self._sending:
                        self._no_sends.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or a database error: never kill the worker
                self.log.error("outbox_worker_error", recipient=rid, error=repr(exc), exc_info=exc)
                await asyncio.sleep(1.0)

    def _pick(self, rec: _Recipient) -> tuple[OutboxItem, OutboxItem]:
        """(the item to try now, the head of the line).

        Alerts go in order; a GIF/clip waits for its own photo (queued before it) but a newer
        alert's photo does not wait for an older event's upload. A head that failed and waits
        out its backoff holds the line for one attempt only: the next item that is due is
        tried (a poison item must not block the ones behind it). Should that one fail too,
        it is an outage: the line waits for the head again, in order.
        """
        primaries = [i for i in rec.queue if i.primary]
        line = primaries or list(rec.queue)
        head = line[0]
        if not rec.may_pass or head.attempts == 0 or head.next_at <= self.clock.time():
            return head, head
        now_wall = self.clock.time()
        for i in line[1:]:
            if i.next_at <= now_wall:
                return i, head
        return head, head

    def _delay(self, rid: str, rec: _Recipient, item: OutboxItem) -> float:
        now_wall = self.clock.time()
        now = self.clock.monotonic()
        interval, per_minute = (
            self.rate_for(rid)
            if self.rate_for is not None
            else (self.settings.min_interval_s, self.settings.per_minute)
        )
        waits = [
            item.next_at - now_wall,
            rec.blocked_until - now,
            self._pacing(rec, item, now, interval),
            rec.minute.wait(now, per_minute),
        ]
        return max(0.0, *waits)

    def _tokens(self, rec: _Recipient, now: float, interval: float) -> float:
        """Sends left in the recipient's burst at ``now`` (one comes back per ``interval``)."""
        burst = float(self.settings.burst)
        if rec.tokens is None or interval <= 0:
            return burst
        return min(burst, rec.tokens + (now - rec.tokens_at) / interval)

    def _pacing(self, rec: _Recipient, item: OutboxItem, now: float, interval: float) -> float:
        """Seconds ``item`` waits for the burst: an alert needs one send left, a follow-up
        two (it never takes the last one, so an alert right after it goes out at once)."""
        if interval <= 0:
            return 0.0
        need = 1.0 if item.primary else min(2.0, float(self.settings.burst))
        return max(0.0, (need - self._tokens(rec, now, interval)) * interval)

    async def _attempt(
        self, rid: str, rec: _Recipient, item: OutboxItem, head: OutboxItem | None = None
    ) -> None:
        s = self.settings
        age = self.clock.time() - item.created_at
        if age >= s.horizon_s:  # e.g. found pending at start after a long power cut
            await self._finish(rec, item, "failed", error=f"expired after {age:.0f}s, not sent")
            return
        if not item.primary:
            try:
                item.related = await self._db(_related, self.channel, rid, item.event_id)
                folded = not (item.related.keys() & PRIMARY_KINDS) and await self._db(
                    _primary_folded, self.channel, rid, item.event_id
                )
            except sqlite3.Error as e:
                self._store_failed("outbox_read_failed", e, event_id=item.event_id)
                folded = False
            if folded:  # its alert was folded into a summary (before a restart, say)
                await self._record(item, "coalesced")
                self._drop(rec, item)
                self.stats["coalesced"] += 1
                return
            if item.superseded:  # a newer one came while its alert's results were read
                await self._superseded(rec, item)
                return
        item.attempts += 1
        probe = head is not None and head is not item
        now = self.clock.monotonic()
        interval = self.rate_for(rid)[0] if self.rate_for is not None else s.min_interval_s
        rec.tokens, rec.tokens_at = max(0.0, self._tokens(rec, now, interval) - 1.0), now
        rec.last_send = now
        rec.minute.add(now)
        error: str
        server_up = False  # only a server that answered may be passed by the items behind
        try:
            result = await asyncio.wait_for(self.sender(item), s.attempt_timeout_s)
        except RetryAfter as e:
            wait = max(e.seconds, 0.0)
            rec.blocked_until = self.clock.monotonic() + wait
            item.next_at = self.clock.time() + wait
            if item.superseded:  # the newer one goes instead, when the wait is over
                await self._superseded(rec, item, str(e))
                return
            self.stats["retries"] += 1
            self.log.warning(
                "outbox_retry_after", recipient=rid, seconds=wait, attempt=item.attempts
            )
            await self._record(item, "pending", str(e))
            return
        except PermanentError as e:
            if item.superseded:
                await self._superseded(rec, item, str(e) or repr(e))
                return
            await self._finish(rec, item, "failed", error=str(e) or repr(e))
            return
        except DeliveredUnknown as e:
            self.stats["delivered_unknown"] += 1
            self.log.warning(
                "outbox_delivered_unknown",
                recipient=rid,
                event_id=item.event_id,
                kind=item.kind,
                error=str(e) or repr(e),
            )
            await self._finish(rec, item, "sent", error=str(e) or "answer unreadable")
            return
        except ServerError as e:
            error = str(e) or type(e).__name__
            server_up = True
        except (TimeoutError, TransientError, OSError) as e:
            error = str(e) or type(e).__name__
        except Exception as e:  # an unknown failure: treat as transient, but say so
            error = repr(e)
            self.log.error("outbox_sender_error", recipient=rid, error=error, exc_info=e)
        else:
            if not probe:
                rec.may_pass = False  # a new head: it has not failed yet
            if probe and head is not None:
                head.suspect = True  # it keeps its backoff; the server is fine
            # the server works: what waits out a backoff of the outage goes now, in order
            now_wall = self.clock.time()
            for queued in rec.queue:
                if not queued.suspect and queued.next_at > now_wall:
                    queued.next_at = now_wall
            await self._finish(rec, item, "sent", result=result)
            return
        if item.superseded:  # not retried: the newer one behind it is what is left to send
            rec.may_pass = False
            await self._superseded(rec, item, error)
            return
        # a head the server answered with an error lets the next item by; an outage (nothing
        # answered, or the item behind failed too) makes the line wait for the head, in order
        rec.may_pass = server_up and not probe
        age = self.clock.time() - item.created_at
        if age >= s.horizon_s:
            await self._finish(rec, item, "failed", error=f"gave up after {age:.0f}s: {error}")
            return
        backoff = min(s.backoff_max_s, s.backoff_initial_s * 2 ** min(item.attempts - 1, 30))
        backoff *= 0.8 + 0.4 * random.random()
        item.next_at = self.clock.time() + backoff
        if probe and head is not None:  # an outage: it must not overtake the head afterwards
            item.next_at = max(item.next_at, head.next_at)
        self.stats["retries"] += 1
        self.log.info(
            "outbox_retry",
            recipient=rid,
            event_id=item.event_id,
            kind=item.kind,
            attempt=item.attempts,
            retry_in_s=round(backoff, 2),
            error=error,
        )
        await self._record(item, "pending", error)

    async def _finish(
        self,
        rec: _Recipient,
        item: OutboxItem,
        status: Literal["sent", "failed"],
        *,
        result: str | None = None,
        error: str | None = None,
    ) -> None:
        # commit first: a crash after this line can no longer send the item twice
        await self._record(item, status, error, result)
        self._drop(rec, item)
        self.stats[status] += 1
        if status == "failed":
            self.log.warning(
                "outbox_failed",
                recipient=item.recipient,
                event_id=item.event_id,
                kind=item.kind,
                attempts=item.attempts,
                error=error,
            )
        await self._publish(item, status, error)

    @staticmethod
    def _drop(rec: _Recipient, item: OutboxItem) -> None:
        for n, queued in enumerate(rec.queue):
            if queued is item:
                del rec.queue[n]
                break

    async def _maybe_coalesce(self, rid: str, rec: _Recipient) -> None:
        limit = self.settings.coalesce_after
        if limit <= 0:
            return
        primaries = [i for i in rec.queue if i.primary and i.kind not in HEALTH_KINDS]
        if len(primaries) < limit:
            return
        by_camera: dict[str, list[OutboxItem]] = {}
        for i in primaries:
            by_camera.setdefault(i.camera_id, []).append(i)
        dropped_ids: set[int] = set()
        for items in by_camera.values():
            if len(items) < 2:
                continue
            keep = items[-1]
            folded = items[:-1]
            keep.coalesced += sum(1 + i.coalesced for i in folded)
            gone_events = {i.event_id for i in folded}
            for event_id in gone_events:
                self._folded[(rid, event_id)] = None
            while len(self._folded) > 4096:
                self._folded.popitem(last=False)
            drop = [i for i in rec.queue if i.event_id in gone_events]
            await self._db(_fold, keep.id, keep.coalesced, [i.id for i in drop])
            dropped_ids.update(i.id for i in drop)
            self.stats["coalesced"] += len(drop)
            self.log.info(
                "outbox_coalesced",
                recipient=rid,
                camera=keep.camera_id,
                events=keep.coalesced + 1,
            )
        if dropped_ids:
            rec.queue = deque(i for i in rec.queue if i.id not in dropped_ids)

    async def _publish(
        self,
        item: OutboxItem,
        status: Literal["queued", "sent", "failed"],
        error: str | None = None,
    ) -> None:
        await self.bus.publish(
            topics.NOTIFY.at(channel=self.channel, status=status),
            AlertNotification(
                channel=self.channel,
                event_id=item.event_id,
                camera_id=item.camera_id,
                kind=item.kind,
                status=status,
                recipient=item.recipient,
                attempt=max(1, item.attempts),
                error=error,
                at=self.clock.time(),
            ),
        )

    def metrics(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {f"outbox_{k}": v for k, v in self.stats.items()}
        out["outbox_pending"] = self.pending()  # the status page's spyoncino_outbox_depth
        # "pending" is what the orchestrator's drain waits for when a replay ends
        out["pending"] = out["outbox_pending"]
        return out
