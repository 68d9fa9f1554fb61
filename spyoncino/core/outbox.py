"""The persistent outbox every notification channel delivers through.

An alert is a promise to the owner, so it is written to SQLite (table ``outbox`` in the event
index database) *before* anything is sent, and marked sent right after the channel confirms.
One worker per recipient delivers that recipient's alerts strictly in order, so alerts never
shuffle after an outage, and a GIF or clip never arrives before the photo it replies to. A new
alert's photo may overtake an older event's GIF upload: an alert never waits for megabytes of
follow-up. SQLite and file reads run on the outbox's own I/O thread, not the shared pool, so
an alert never queues behind GIF encoding or inference.

Failures are sorted by what they mean (the channel raises one of these):

* ``RetryAfter(seconds)``: the server asked us to wait (Telegram's 429 ``retry_after``); nothing
  is sent to that recipient before it has passed;
* ``TransientError``: 5xx, timeouts, network down; retried with exponential backoff and jitter
  until the item is ``horizon_s`` old, then given up and reported failed. Its subclass
  ``ServerError`` says the server answered (a 5xx for this request): the item waits out its
  backoff but no longer holds the line, the next item that is due is tried meanwhile, so a
  poison item blocks the ones behind it for one attempt at most. Should that one fail too,
  it is an outage and the line waits for the head again, in order;
* ``PermanentError``: the request itself is wrong (4xx); reported failed at once;
* ``DeliveredUnknown``: the server said yes (2xx) in an answer that could not be read; the
  message was most likely delivered, so it is marked sent (without a result) and logged,
  never uploaded again.

A full card (``SQLITE_FULL``) or an I/O error does not hold an alert back nor end a task: an
alert that cannot be stored is kept in memory and delivered all the same (``unsaved`` in the
metrics), an outcome that cannot be recorded is kept too, and both reach the database at the
first write that succeeds again. Only a restart before that can lose (an unsaved alert) or
repeat (an unrecorded "sent") one message.

Restarts: pending rows are loaded at start and sent; rows marked sent are never sent again.
The idempotency key (channel, event id, kind, recipient) is UNIQUE, so enqueueing the same alert
twice (a replayed artifact, a retried publish) stores it once. A crash in the few microseconds
between the server's answer and the commit of "sent" can still repeat one message: no chat API
offers a way to ask "did you get this?".

When a recipient is far behind (``coalesce_after`` pending alerts, e.g. after a long outage),
the alerts of each camera are folded into their latest one, which the channel presents as a
summary ("12 events on front_door while offline") with the latest photo; their follow-ups
(GIF, clip) are dropped with them. Rate limits: a minimum interval and a per-minute cap per
recipient, and a per-camera alert budget per window so a flapping camera cannot flood; alerts
over the budget are counted and mentioned in the next alert of that camera.

``OutboxChannel`` is the base of the channel modules (Telegram, webhook, email): it owns the
outbox's lifecycle, the ``AlertGate``, the ``control.state`` / ``event.#`` subscriptions and the
text alert for events whose snapshot never came, so a channel writes only its config, what an
alert becomes (``_enqueue``) and how one is sent (``_deliver``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
from abc import abstractmethod
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field

from spyoncino.core.bus import Bus, Message
from spyoncino.core.contracts import (
    BaseModule,
    BoundedExecutor,
    Category,
    ModuleContext,
    ModuleNotReady,
)
from spyoncino.helpers.files import private_file
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.control import ControlState
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.health import CameraHealthNotice
from spyoncino.schemas.media import MediaArtifact

R = TypeVar("R")

#: ``muted_until`` key that mutes every camera
ALL_CAMERAS = "*"

#: Kinds that are alerts in their own right (others are follow-ups of an alert).
PRIMARY_KINDS = frozenset({"snapshot", "text", "health_alert", "health_recovered"})
#: camera-health notices: alerts, but never folded into a summary of the camera's events
HEALTH_KINDS = frozenset({"health_alert", "health_recovered"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL,
    camera_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    coalesced INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at REAL,
    result TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(channel, status, recipient, id);
CREATE INDEX IF NOT EXISTS outbox_event ON outbox(channel, recipient, event_id);
"""


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
        description="Minimum seconds between two sends to one recipient.",
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


@dataclass
class OutboxItem:
    """One message for one recipient, as stored."""

    id: int
    channel: str
    recipient: str
    key: str
    event_id: str
    camera_id: str
    kind: str
    payload: dict[str, Any]
    created_at: float
    attempts: int = 0
    next_at: float = 0.0
    coalesced: int = 0
    #: results (e.g. message ids) of items already delivered for the same event and recipient
    related: dict[str, str] = field(default_factory=dict)
    #: failed while an item behind it went through: the item, not the server, is the trouble
    suspect: bool = False

    @property
    def primary(self) -> bool:
        return self.kind in PRIMARY_KINDS


Sender = Callable[[OutboxItem], Awaitable["str | None"]]
RateFor = Callable[[str], "tuple[float, int]"]


def item_key(channel: str, event_id: str, kind: str, recipient: str) -> str:
    return f"{channel}:{event_id}:{kind}:{recipient}"


# -- SQLite (runs in the executor) ------------------------------------------------------------
def open_db(path: Path) -> sqlite3.Connection:
    private_file(path)  # 0640, as the index makes it: the outbox may open the file first
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.executescript(SCHEMA)
    # the same file as the index, whose schema owner (storage/index) versions and migrates it:
    # the index starts before any output, so the file is migrated when the outbox opens it
    return conn


_COLS = (
    "id, channel, recipient, key, event_id, camera_id, kind, payload, created_at, attempts, "
    "next_at, coalesced"
)


def _row_item(row: tuple[Any, ...]) -> OutboxItem:
    return OutboxItem(
        id=row[0],
        channel=row[1],
        recipient=row[2],
        key=row[3],
        event_id=row[4],
        camera_id=row[5],
        kind=row[6],
        payload=json.loads(row[7]),
        created_at=row[8],
        attempts=row[9],
        next_at=row[10],
        coalesced=row[11],
    )


def _insert(conn: sqlite3.Connection, item: OutboxItem) -> int | None:
    cur = conn.execute(
        """INSERT OR IGNORE INTO outbox(channel, recipient, key, event_id, camera_id, kind,
               payload, created_at, status, attempts, next_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?)""",
        (
            item.channel,
            item.recipient,
            item.key,
            item.event_id,
            item.camera_id,
            item.kind,
            json.dumps(item.payload),
            item.created_at,
            item.next_at,
        ),
    )
    return cur.lastrowid if cur.rowcount == 1 else None


def _insert_late(
    conn: sqlite3.Connection, item: OutboxItem, status: str, error: str | None, result: str | None
) -> int | None:
    """Store an item that could not be stored when it was enqueued, with its outcome so far."""
    cur = conn.execute(
        """INSERT OR IGNORE INTO outbox(channel, recipient, key, event_id, camera_id, kind,
               payload, created_at, status, attempts, next_at, coalesced, last_error, result,
               sent_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN ?='sent' THEN ? END)""",
        (
            item.channel,
            item.recipient,
            item.key,
            item.event_id,
            item.camera_id,
            item.kind,
            json.dumps(item.payload),
            item.created_at,
            status,
            item.attempts,
            item.next_at,
            item.coalesced,
            error,
            result,
            status,
            time.time(),
        ),
    )
    return cur.lastrowid if cur.rowcount == 1 else None


def _load_pending(conn: sqlite3.Connection, channel: str) -> list[OutboxItem]:
    rows = conn.execute(
        f"SELECT {_COLS} FROM outbox WHERE channel=? AND status='pending' ORDER BY id",  # noqa: S608
        (channel,),
    ).fetchall()
    return [_row_item(r) for r in rows]


def _related(
    conn: sqlite3.Connection, channel: str, recipient: str, event_id: str
) -> dict[str, str]:
    rows = conn.execute(
        "SELECT kind, result FROM outbox WHERE channel=? AND recipient=? AND event_id=? "
        "AND status='sent' AND result IS NOT NULL",
        (channel, recipient, event_id),
    ).fetchall()
    return {str(k): str(r) for k, r in rows}


def _mark(
    conn: sqlite3.Connection,
    item_id: int,
    status: str,
    attempts: int,
    next_at: float,
    error: str | None,
    result: str | None,
) -> None:
    conn.execute(
        """UPDATE outbox SET status=?, attempts=?, next_at=?, last_error=?, result=?,
               sent_at=CASE WHEN ?='sent' THEN ? ELSE sent_at END WHERE id=?""",
        (status, attempts, next_at, error, result, status, time.time(), item_id),
    )


def _primary_folded(conn: sqlite3.Connection, channel: str, recipient: str, event_id: str) -> bool:
    """Whether the alert of ``event_id`` was folded into another (so its follow-ups go too)."""
    rows = conn.execute(
        "SELECT status FROM outbox WHERE channel=? AND recipient=? AND event_id=? "
        "AND kind IN ('snapshot', 'text')",
        (channel, recipient, event_id),
    ).fetchall()
    statuses = {str(r[0]) for r in rows}
    return "coalesced" in statuses and not statuses & {"sent", "pending"}


def _fold(conn: sqlite3.Connection, keep: int, count: int, dropped: list[int]) -> None:
    with conn:
        conn.execute("BEGIN")
        conn.execute("UPDATE outbox SET coalesced=? WHERE id=?", (count, keep))
        conn.executemany("UPDATE outbox SET status='coalesced' WHERE id=?", [(i,) for i in dropped])


def _prune(conn: sqlite3.Connection, channel: str, before: float) -> int:
    cur = conn.execute(
        "DELETE FROM outbox WHERE channel=? AND status!='pending' AND created_at<?",
        (channel, before),
    )
    return cur.rowcount


def counts(conn: sqlite3.Connection, channel: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, COUNT(*) FROM outbox WHERE channel=? GROUP BY status", (channel,)
    ).fetchall()
    return {str(s): int(n) for s, n in rows}


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
    minute: _Window = field(default_factory=lambda: _Window(60.0))
    blocked_until: float = 0.0
    task: asyncio.Task[None] | None = None
    #: the head's last attempt got an error answer from a server that is up (``ServerError``):
    #: the items behind it may be tried while it waits out its backoff
    may_pass: bool = False


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
    ) -> None:
        self.channel = channel
        self.db_path = db_path
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
        self._conn = await self.run_io(open_db, self.db_path)
        now = time.time()
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
                await self._db(_prune, self.channel, time.time() - self.settings.keep_sent_s)
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
        t = time.monotonic() if now is None else now
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
        marked ``superseded``; each such message is stored under a key of its own.
        """
        now = time.time()
        key = item_key(self.channel, event_id, kind, recipient)
        if supersede:
            key = f"{key}:{time.time_ns()}"
            await self._supersede(recipient, event_id, kind)
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
            self.stats["duplicates"] += 1
            return False
        try:
            row_id = await self._db(_insert, item)
        except sqlite3.Error as e:
            # the disk is full: deliver from memory, store when the database takes it again
            self._store_failed("outbox_store_failed", e, event_id=event_id, kind=kind)
            item.id = self._next_unsaved_id
            self._next_unsaved_id -= 1
            self._unsaved[item.key] = (item, "pending", None, None)
            self.stats["unsaved"] = len(self._unsaved)
            row_id = item.id
        else:
            if row_id is None:
                self.stats["duplicates"] += 1
                return False
            await self._catch_up()
        item.id = int(row_id)
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

    async def _supersede(self, recipient: str, event_id: str, kind: str) -> None:
        rec = self._recipients.get(recipient)
        if rec is None:
            return
        old = [i for i in rec.queue if i.event_id == event_id and i.kind == kind]
        for item in old:
            self._drop(rec, item)
            await self._record(item, "superseded")
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
        """Store what the database refused before; stops at the first refusal."""
        try:
            for row_id, (item, status, error, result) in list(self._unmarked.items()):
                await self._db(_mark, row_id, status, item.attempts, item.next_at, error, result)
                del self._unmarked[row_id]
            for key, (item, status, error, result) in list(self._unsaved.items()):
                new_id = await self._db(_insert_late, item, status, error, result)
                del self._unsaved[key]
                if new_id is not None:
                    item.id = int(new_id)
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
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(rec.wake.wait(), seconds)

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
                    # not rec.wake: a new item behind this one must not cut the wait short
                    await asyncio.sleep(min(delay, 5.0))
                    continue
                self._sending += 1
                self._no_sends.clear()
                try:
                    await self._attempt(rid, rec, item, head)
                finally:
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
        if not rec.may_pass or head.attempts == 0 or head.next_at <= time.time():
            return head, head
        now_wall = time.time()
        for i in line[1:]:
            if i.next_at <= now_wall:
                return i, head
        return head, head

    def _delay(self, rid: str, rec: _Recipient, item: OutboxItem) -> float:
        now_wall = time.time()
        now = time.monotonic()
        interval, per_minute = (
            self.rate_for(rid)
            if self.rate_for is not None
            else (self.settings.min_interval_s, self.settings.per_minute)
        )
        waits = [
            item.next_at - now_wall,
            rec.blocked_until - now,
            rec.last_send + interval - now if rec.last_send else 0.0,
            rec.minute.wait(now, per_minute),
        ]
        return max(0.0, *waits)

    async def _attempt(
        self, rid: str, rec: _Recipient, item: OutboxItem, head: OutboxItem | None = None
    ) -> None:
        s = self.settings
        age = time.time() - item.created_at
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
        item.attempts += 1
        probe = head is not None and head is not item
        now = time.monotonic()
        rec.last_send = now
        rec.minute.add(now)
        error: str
        server_up = False  # only a server that answered may be passed by the items behind
        try:
            result = await asyncio.wait_for(self.sender(item), s.attempt_timeout_s)
        except RetryAfter as e:
            wait = max(e.seconds, 0.0)
            rec.blocked_until = time.monotonic() + wait
            item.next_at = time.time() + wait
            self.stats["retries"] += 1
            self.log.warning(
                "outbox_retry_after", recipient=rid, seconds=wait, attempt=item.attempts
            )
            await self._record(item, "pending", str(e))
            return
        except PermanentError as e:
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
            now_wall = time.time()
            for queued in rec.queue:
                if not queued.suspect and queued.next_at > now_wall:
                    queued.next_at = now_wall
            await self._finish(rec, item, "sent", result=result)
            return
        # a head the server answered with an error lets the next item by; an outage (nothing
        # answered, or the item behind failed too) makes the line wait for the head, in order
        rec.may_pass = server_up and not probe
        age = time.time() - item.created_at
        if age >= s.horizon_s:
            await self._finish(rec, item, "failed", error=f"gave up after {age:.0f}s: {error}")
            return
        backoff = min(s.backoff_max_s, s.backoff_initial_s * 2 ** min(item.attempts - 1, 30))
        backoff *= 0.8 + 0.4 * random.random()
        item.next_at = time.time() + backoff
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
                at=time.time(),
            ),
        )

    def metrics(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {f"outbox_{k}": v for k, v in self.stats.items()}
        out["outbox_pending"] = self.pending()  # the status page's spyoncino_outbox_depth
        # "pending" is what the orchestrator's drain waits for when a replay ends
        out["pending"] = out["outbox_pending"]
        return out


@dataclass
class _Tracked:
    event: EventNotice
    seen_mono: float = 0.0
    alerted: bool = False
    suppressed: bool = False
    held: list[MediaArtifact] = field(default_factory=list)
    #: the latest snapshot of an activity that is not (yet) an alert
    snapshot: MediaArtifact | None = None


class AlertGate:
    """Which artifacts become alerts; the same rules for every channel.

    An alert is the snapshot of an event (an activity, of a kind in ``kinds``) of severity
    ``alert``, taken while the box is armed and neither the camera nor ``*`` is muted, within
    the per-camera budget: one per activity. An activity that starts as a ``detection`` is
    not pushed; should it become an alert, the next snapshot (the snapshot writer makes one
    at that moment) is its alert. Follow-ups (GIF, clip) of an alerted event pass too, after
    the snapshot; those of a suppressed event, or one that stays a detection, do not. Feed it
    every ``event.#`` message in order and every ``control.state``.

    An event whose snapshot never comes (the writer failed: disk full, no colour frame) must
    still be heard of: ``overdue`` hands out, once, the events still without a snapshot
    ``wait_s`` after they started, for a text alert.
    """

    def __init__(
        self,
        kinds: Iterable[str] = ("object", "motion"),
        followups: Iterable[str] = ("gif", "clip"),
        *,
        respect_state: bool = True,
        budget: Callable[[str], bool] | None = None,
        keep: int = 512,
    ) -> None:
        self.kinds = frozenset(kinds)
        self.followups = frozenset(followups)
        self.respect_state = respect_state
        self.budget = budget
        self.keep = keep
        self.state = ControlState(armed=True)
        self.suppressed = 0
        self.last_reason: str | None = None
        self._events: OrderedDict[str, _Tracked] = OrderedDict()
        self._waiting: OrderedDict[str, None] = OrderedDict()

    def notice(self, ev: EventNotice) -> None:
        if ev.frame is not None or ev.crops is not None:
            # kept for up to ``keep`` events: the text, not the frames (megabytes each)
            ev = ev.model_copy(update={"frame": None, "crops": None})
        tracked = self._events.get(ev.event_id)
        if tracked is not None:
            became_alert = tracked.event.severity != "alert" and ev.severity == "alert"
            tracked.event = ev
            if became_alert and not (tracked.alerted or tracked.suppressed):
                # it waits for its snapshot from now on, as a new alert would
                tracked.seen_mono = time.monotonic()
                self._waiting.pop(ev.event_id, None)
                self._waiting[ev.event_id] = None
        elif ev.phase == "started" and ev.kind in self.kinds:
            self._events[ev.event_id] = _Tracked(ev, time.monotonic())
            if ev.severity == "alert":
                self._waiting[ev.event_id] = None
            while len(self._events) > self.keep:
                gone, _ = self._events.popitem(last=False)
                self._waiting.pop(gone, None)

    def alerted(self, event_id: str) -> bool:
        """Whether ``event_id`` was alerted (so its updates may edit what was sent)."""
        tracked = self._events.get(event_id)
        return tracked is not None and tracked.alerted

    def take_held(self, event_id: str) -> list[MediaArtifact]:
        """What an overdue alert can still send: the held snapshot (first) and follow-ups."""
        tracked = self._events.get(event_id)
        if tracked is None:
            return []
        snap, tracked.snapshot = tracked.snapshot, None
        held, tracked.held = tracked.held, []
        return [*([snap] if snap is not None else []), *held]

    def _decide(self, tracked: _Tracked) -> bool:
        """Alert (True) or suppress this event now; either way it waits no more."""
        self._waiting.pop(tracked.event.event_id, None)
        camera = tracked.event.camera_id
        why = self.reason(camera)
        if why is None and self.budget is not None and not self.budget(camera):
            why = "camera rate limit"
        if why is not None:
            tracked.suppressed = True
            tracked.held.clear()
            self.suppressed += 1
            self.last_reason = why
            return False
        tracked.alerted = True
        return True

    def overdue(self, wait_s: float, now_mono: float | None = None) -> list[EventNotice]:
        """Events still without a snapshot ``wait_s`` after they started, to alert as text."""
        now = time.monotonic() if now_mono is None else now_mono
        out = []
        for event_id in list(self._waiting):
            tracked = self._events.get(event_id)
            if tracked is None or tracked.alerted or tracked.suppressed:
                self._waiting.pop(event_id, None)
                continue
            if now - tracked.seen_mono < wait_s:
                break  # in start order: the rest are younger
            if self._decide(tracked):
                out.append(tracked.event)
        return out

    def event(self, event_id: str) -> EventNotice | None:
        tracked = self._events.get(event_id)
        return tracked.event if tracked is not None else None

    def reason(self, camera_id: str, now: float | None = None) -> str | None:
        """Why no alert goes out for ``camera_id`` now (None: it does)."""
        if not self.respect_state:
            return None
        t = time.time() if now is None else now
        if not self.state.armed:
            return "disarmed"
        for key in (camera_id, ALL_CAMERAS):
            if self.state.muted_until.get(key, 0.0) > t:
                return "muted"
        return None

    def artifact(self, art: MediaArtifact) -> list[tuple[EventNotice, MediaArtifact]]:
        """What to send now because ``art`` arrived (snapshot first, then held follow-ups)."""
        tracked = self._events.get(art.event_id)
        if tracked is None or tracked.suppressed:
            return []
        if art.kind == "snapshot":
            if tracked.alerted:
                return []
            if tracked.event.severity != "alert":
                tracked.snapshot = art  # a detection: kept in case it becomes an alert
                return []
            tracked.snapshot = None
            if not self._decide(tracked):
                return []
            held, tracked.held = tracked.held, []
            return [(tracked.event, art), *((tracked.event, h) for h in held)]
        if art.kind not in self.followups:
            return []
        if not tracked.alerted:
            tracked.held.append(art)  # the photo goes first
            return []
        return [(tracked.event, art)]


class ChannelConfig(Protocol):
    """What ``OutboxChannel`` reads from a channel's ``Config``."""

    @property
    def alert_kinds(self) -> tuple[str, ...]: ...

    @property
    def snapshot_wait_s(self) -> float: ...

    @property
    def outbox(self) -> OutboxSettings: ...


C = TypeVar("C", bound=ChannelConfig)


class OutboxChannel(BaseModule, Generic[C]):
    """A notification channel module: its ``Outbox``, its ``AlertGate`` and the bus around them.

    A channel keeps what is its own: its ``Config`` (set ``self.cfg`` in ``__init__`` and
    ``configure``), ``_enqueue`` (what one alert or follow-up becomes in the outbox; ``art`` is
    None for the text alert of an event whose snapshot never came) and ``_deliver`` (one send,
    raising ``RetryAfter`` / ``TransientError`` / ``PermanentError``). In ``start`` it builds
    its gate after ``open_outbox`` (the gate's budget is the outbox's) and then calls ``listen``.
    """

    category: ClassVar[Category] = "output"
    #: the ``channel`` of the outbox rows and of ``notify.<channel>.*``
    channel: ClassVar[str] = ""
    cfg: C

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.outbox: Outbox | None = None
        self.gate = AlertGate()

    @abstractmethod
    async def _enqueue(self, ev: EventNotice, art: MediaArtifact | None) -> None: ...

    @abstractmethod
    async def _deliver(self, item: OutboxItem) -> str | None: ...

    async def _on_update(self, ev: EventNotice) -> None:
        """A notice of an activity already alerted (it grew, or ended): a channel that can
        edit what it sent (Telegram's caption) does so here; the default sends nothing."""

    async def open_outbox(self, db_path: Path, *, rate_for: RateFor | None = None) -> Outbox:
        """Open the outbox and resume what it had pending; ``ModuleNotReady`` when it cannot."""
        self.outbox = Outbox(
            channel=self.channel,
            db_path=db_path,
            bus=self.bus,
            executor=self.ctx.executor,
            sender=self._deliver,
            settings=self.cfg.outbox,
            rate_for=rate_for,
            module=self.ctx.instance,
        )
        try:
            await self.outbox.start()
        except Exception as e:
            raise ModuleNotReady(f"cannot open the outbox in {db_path}: {e}") from e
        # camera-health notices are alerts of their own: no snapshot to wait for, no gate
        self.subscribe(topics.CAMERA_HEALTH, self._on_camera_health, policy="block", maxsize=64)
        return self.outbox

    async def _enqueue_health(self, notice: CameraHealthNotice) -> None:
        """What a camera-health alert or recovery becomes in this channel's outbox (kind
        ``health_alert`` / ``health_recovered``). Channels override it; the default sends
        nothing, so a third party's channel is unaffected."""
        return

    def health_muted(self, camera_id: str) -> bool:
        """Camera-health notices follow mutes (the owner asked for quiet) but not disarming:
        a covered camera matters most when nobody watches it."""
        if not self.gate.respect_state:
            return False
        now = time.time()
        return any(self.gate.state.muted_until.get(k, 0.0) > now for k in (camera_id, ALL_CAMERAS))

    async def _on_camera_health(self, msg: Message[CameraHealthNotice]) -> None:
        notice = msg.payload
        if self.outbox is None or not getattr(self.cfg, "health_alerts", True):
            return
        if self.health_muted(notice.camera_id):
            self.log.info("health_alert_muted", camera=notice.camera_id, phase=notice.phase)
            return
        try:
            await self._enqueue_health(notice)
        except Exception as e:  # the channel must live on
            self.log.error("health_alert_failed", notice_id=notice.notice_id, error=repr(e))

    def listen(self) -> None:
        """Follow ``control.state`` and ``event.#``, and alert overdue events as text."""
        self.subscribe(topics.CONTROL_STATE.name, self._on_state, policy="latest")
        # one ordered queue for notices and artifacts: a snapshot never overtakes its event
        # one queue for both families: the gate sees a notice before the media made for it
        self.subscribe(
            ["event.#", topics.ARTIFACT], self._on_event_topic, policy="block", maxsize=256
        )
        self.spawn(self._overdue_loop(), "overdue")

    def adopt_settings(self) -> None:
        """A config update while running: delivery settings and alert kinds change in place."""
        if self.outbox is not None:
            self.outbox.settings = self.cfg.outbox
        self.gate.kinds = frozenset(self.cfg.alert_kinds)

    async def stop(self) -> None:
        await super().stop()
        outbox, self.outbox = self.outbox, None
        if outbox is not None:
            grace = 5.0
            if self.stop_deadline is not None:  # what the shutdown budget leaves this stage
                grace = max(0.0, self.stop_deadline - asyncio.get_running_loop().time() - 0.5)
            await outbox.close(grace)

    async def _on_state(self, msg: Message[ControlState]) -> None:
        self.gate.state = msg.payload

    async def _on_event_topic(self, msg: Message[Any]) -> None:
        p = msg.payload
        if isinstance(p, EventNotice):
            self.gate.notice(p)
            if self.gate.alerted(p.event_id) and self.outbox is not None:
                await self._on_update(p)
        elif isinstance(p, MediaArtifact) and self.outbox is not None:
            await self._on_artifact(p)

    async def _on_artifact(self, art: MediaArtifact) -> None:
        for ev, sendable in self.gate.artifact(art):
            await self._enqueue(ev, sendable)

    async def _overdue_loop(self) -> None:
        retry: list[EventNotice] = []
        while True:
            await asyncio.sleep(1.0)
            due, retry = [*retry, *self.gate.overdue(self.cfg.snapshot_wait_s)], []
            for ev in due:
                try:
                    held = self.gate.take_held(ev.event_id)
                    if not held or held[0].kind != "snapshot":
                        await self._enqueue(ev, None)  # no picture at all: a text alert
                    for art in held:
                        await self._enqueue(ev, art)
                except Exception as e:  # the task must live on, and the alert be tried again
                    retry.append(ev)
                    self.log.error("overdue_alert_failed", event_id=ev.event_id, error=repr(e))

    def metrics(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {"suppressed": self.gate.suppressed}
        if self.outbox is not None:
            out.update(self.outbox.metrics())
        return out
