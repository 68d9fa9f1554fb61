"""The event index: SQLite (WAL) rows for events, artifacts and notification outcomes.

The media folder is the source of truth for files; this index makes them searchable and can be
rebuilt from the folder (``spyoncino storage reindex``). Writes are batched: rows collect in
memory and are committed every ``flush_interval`` seconds, so an idle box writes nothing and a
busy one writes one transaction per interval instead of one per row.

A write that fails (``SQLITE_FULL`` on a full card, ``SQLITE_IOERR``) loses nothing: the batch
goes back in front of the pending rows and is retried at the next interval, the module reports
``degraded`` ("cannot write ...", which ``/health/ready`` turns into a 503) and publishes a
``StorageFault`` on ``storage.fault`` so that retention frees space at once. Once a write
succeeds again the module is ``ok`` and a ``StorageFault(writable=True)`` follows. At most
``max_pending`` rows wait in memory; beyond that the oldest are dropped (and counted).

At start, before anything can publish, the index reconciles what a crash (a SIGKILL, a power
cut) left behind: events still ``started``/``updated`` are closed, ended at their last update
(retention needs ``ended_at``), and media files without rows are indexed as
``spyoncino storage reindex`` would (``recovered_events``, ``reindexed_rows`` in the metrics).
A reconciliation that fails is logged and does not keep the index from starting.

The package is the index's only owner: ``db`` (the tables and the row helpers), ``schema``
(versions, migrations, their backups), ``queries`` (the read side), ``reindex`` (the rebuild
from the media folder, also ``spyoncino storage reindex``) and this module. Nobody else opens
the file: the module answers the typed requests of ``spyoncino.schemas.index`` on the bus
(``storage.index.events``, ``.event``, ``.labels``, ``.counts``) from a read-only connection
in the executor, and forgets the rows of ``storage.media.removed`` (retention) in its batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule as _Base
from spyoncino.core.contracts import ModuleConfig, ModuleContext, ModuleNotReady
from spyoncino.helpers.requests import answering
from spyoncino.modules.storage.index import queries
from spyoncino.modules.storage.index.db import (
    SCHEMA,
    SCHEMA_VERSION,
    connect,
    delete_artifact,
    insert_notification,
    upsert_artifact,
    upsert_event,
)
from spyoncino.modules.storage.index.reindex import reindex_into
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.index import (
    DayCountsQuery,
    DayCountsReply,
    EventLookup,
    EventsPage,
    EventsQuery,
    LabelsQuery,
    LabelsReply,
    MediaRemoved,
)
from spyoncino.schemas.media import MediaArtifact, StorageFault, StoredEvent

#: seconds between two ``storage.fault`` messages while writes keep failing
FAULT_REPEAT_S = 30.0


class Config(ModuleConfig):
    type: Literal["index"] = "index"
    flush_interval: float = Field(
        default=2.0, ge=0.05, le=300.0, description="Seconds between batched index commits."
    )
    max_pending: int = Field(
        default=50_000,
        ge=100,
        le=1_000_000,
        description="Rows kept in memory while the index cannot write; the oldest go beyond.",
    )


class EventIndex(_Base[Config]):
    """Keeps the SQLite index in step with events, artifacts and notification outcomes."""

    category: ClassVar[Any] = "storage"
    Config: ClassVar[type[ModuleConfig]] = Config

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.db_path: Path | None = None
        self.root = Path(".")
        self._conn: sqlite3.Connection | None = None
        #: read-only connection the answers to requests use (WAL: never waits for a write)
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._pending: list[tuple[str, Any]] = []
        #: rows of a failed write, written first next time (only touched under _db_lock)
        self._retry: list[tuple[str, Any]] = []
        self._inflight = 0
        self._db_lock = threading.Lock()
        #: one flush at a time: a flush called while another writes returns after that write
        self._flushing = asyncio.Lock()
        self.rows_written = 0
        self.commits = 0
        self.write_failures = 0
        self.recovered_events = 0
        self.reindexed_rows = 0
        self.rows_dropped = 0
        self.writable = True
        self._fault_at = 0.0

    async def configure(self, app: AppConfig) -> None:
        self.cfg = self.config_of(app)
        self.db_path = app.storage.db_path
        self.root = app.storage.root

    async def start(self) -> None:
        assert self.db_path is not None
        try:
            self._conn = await self.ctx.executor.run(connect, self.db_path)
        except sqlite3.Error as e:
            raise ModuleNotReady(f"cannot open index {self.db_path}: {e}") from e
        try:
            self.recovered_events, self.reindexed_rows = await self.ctx.executor.run(
                self._reconcile
            )
        except (sqlite3.Error, OSError) as e:
            self.log.error("index_reconcile_failed", error=repr(e))
        else:
            if self.recovered_events or self.reindexed_rows:
                self.log.warning(
                    "index_reconciled",
                    closed_events=self.recovered_events,
                    reindexed_rows=self.reindexed_rows,
                )
        self.subscribe(topics.EVENT.pattern(phase="started"), self._on_event, policy="block")
        self.subscribe(topics.EVENT.pattern(phase="updated"), self._on_event, policy="block")
        self.subscribe(topics.EVENT.pattern(phase="ended"), self._on_event, policy="block")
        self.subscribe(topics.ARTIFACT.pattern(), self._on_artifact, policy="block")
        self.subscribe(topics.NOTIFY.pattern(), self._on_notify, policy="block")
        self.subscribe(topics.MEDIA_REMOVED.name, self._on_removed, policy="block")
        try:
            self._reader = await self.ctx.executor.run(queries.connect_ro, self.db_path)
        except sqlite3.Error as e:
            raise ModuleNotReady(f"cannot read index {self.db_path}: {e}") from e
        # the only owner of the index answers everyone else's questions about it
        bus = self.bus
        self.subscribe(
            topics.INDEX_EVENTS,
            answering(bus, topics.INDEX_EVENTS_REPLY, self._answer_events),
            policy="block",
        )
        self.subscribe(
            topics.INDEX_EVENT,
            answering(bus, topics.INDEX_EVENTS_REPLY, self._answer_event),
            policy="block",
        )
        self.subscribe(
            topics.INDEX_LABELS,
            answering(bus, topics.INDEX_LABELS_REPLY, self._answer_labels),
            policy="block",
        )
        self.subscribe(
            topics.INDEX_COUNTS,
            answering(bus, topics.INDEX_COUNTS_REPLY, self._answer_counts),
            policy="block",
        )
        self.spawn(self._flush_loop(), "flush")
        self.set_state("ok", str(self.db_path))

    def _reconcile(self) -> tuple[int, int]:
        """Close the events a crash left open; index media files that have no row."""
        with self._db_lock:
            conn = self._conn
            assert conn is not None
            cur = conn.execute(
                "UPDATE events SET ended_at = updated_at, phase = 'ended' WHERE ended_at IS NULL"
            )
            return cur.rowcount, reindex_into(conn, self.root)

    async def _on_event(self, msg: Message[EventNotice]) -> None:
        self._pending.append(("event", msg.payload))

    async def _on_artifact(self, msg: Message[MediaArtifact]) -> None:
        self._pending.append(("artifact", msg.payload))

    async def _on_notify(self, msg: Message[AlertNotification]) -> None:
        self._pending.append(("notify", msg.payload))

    async def _on_removed(self, msg: Message[MediaRemoved]) -> None:
        # in the same batch as the other rows, in order: an artifact indexed and removed
        # within one interval is gone after the commit, not indexed again
        self._pending.extend(("forget", rel) for rel in msg.payload.relpaths)
        self._pending.extend(("notify", note) for note in msg.payload.lost)

    # -- answers (the read side; SQL in ``queries``) -------------------------------------------
    def _read(self, fn: Any, *args: Any) -> Any:
        with self._read_lock:
            if self._reader is None:
                raise RuntimeError("the index is stopped")
            return fn(self._reader, *args)

    async def _answer_events(self, q: EventsQuery) -> EventsPage:
        page: EventsPage = await self.ctx.executor.run(self._read, queries.list_events, q)
        return page

    async def _answer_event(self, q: EventLookup) -> EventsPage:
        found = await self.ctx.executor.run(self._read, queries.get_event, q.event_id)
        return EventsPage(events=() if found is None else (found,))

    async def _answer_labels(self, q: LabelsQuery) -> LabelsReply:
        return LabelsReply(labels=await self.ctx.executor.run(self._read, queries.labels, q))

    async def _answer_counts(self, q: DayCountsQuery) -> DayCountsReply:
        return DayCountsReply(counts=await self.ctx.executor.run(self._read, queries.day_counts, q))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.flush_interval)
            try:
                await self.flush()
            except Exception as e:  # a bug must not end the index: the next interval retries
                self.log.error("index_flush_error", error=repr(e), exc_info=e)

    async def flush(self) -> int:
        """Commit the pending rows; 0 when there were none or the write failed (kept for later).

        Waits for a flush already writing (the periodic one), so that what was pending when it
        was called is committed, or kept for a retry, once it returns.
        """
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> int:
        if not (self._pending or self._retry) or self._conn is None:
            return 0
        batch, self._pending = self._pending, []
        try:
            batch = await self.ctx.executor.run(self._write, batch)
        except (sqlite3.Error, OSError) as e:
            await self._write_failed(e)
            return 0
        if not self.writable:
            self.writable = True
            self.set_state("ok", str(self.db_path))
            self.log.info("index_writable_again", rows=len(batch))
            await self._publish_fault("", writable=True)
        saved: dict[str, StoredEvent] = {}
        for kind, item in batch:
            if kind == "event":
                saved[item.event_id] = StoredEvent(
                    event_id=item.event_id, camera_id=item.camera_id, phase=item.phase
                )
            elif kind == "artifact":
                prev = saved.get(item.event_id)
                arts = (*prev.artifacts, item.kind) if prev else (item.kind,)
                saved[item.event_id] = StoredEvent(
                    event_id=item.event_id,
                    camera_id=item.camera_id,
                    phase=prev.phase if prev else "artifact",
                    artifacts=arts,
                )
        for stored in saved.values():
            await self.bus.publish(topics.STORED.name, stored)
        return len(batch)

    async def _write_failed(self, e: Exception) -> None:
        self.write_failures += 1
        error = str(e) or type(e).__name__
        now = time.monotonic()
        if self.writable or now - self._fault_at >= FAULT_REPEAT_S:
            self.log.error(
                "index_write_failed",
                error=error,
                pending=self.batched(),
                dropped=self.rows_dropped,
            )
            self._fault_at = now
            await self._publish_fault(error, writable=False)
        self.writable = False
        self.set_state("degraded", f"cannot write {self.db_path}: {error}", error)

    async def _publish_fault(self, error: str, *, writable: bool) -> None:
        await self.bus.publish(
            topics.STORAGE_FAULT.name,
            StorageFault(
                module=self.ctx.instance,
                path=str(self.db_path),
                error=error[:500],
                writable=writable,
            ),
        )

    def _write(self, batch: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """Commit the rows of a failed write first, then ``batch``; returns the rows written.

        Under ``_db_lock``: a flush cancelled while its write runs (stop) must not let another
        write or the close use the connection at the same time. Rows of a failed write stay
        in ``_retry``, in order, for the next write.
        """
        with self._db_lock:
            rows, self._retry = [*self._retry, *batch], []
            self._inflight = len(rows)
            try:
                self._commit(rows)
            except BaseException:
                over = len(rows) - self.cfg.max_pending
                if over > 0:
                    del rows[:over]
                    self.rows_dropped += over
                self._retry = rows
                raise
            finally:
                self._inflight = 0
            return rows

    def _commit(self, batch: list[tuple[str, Any]]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for kind, item in batch:
                if kind == "event":
                    upsert_event(conn, item)
                elif kind == "artifact":
                    upsert_artifact(conn, item)
                elif kind == "forget":
                    delete_artifact(conn, item)
                else:
                    insert_notification(conn, item)
            conn.execute("COMMIT")
        except BaseException:
            # a COMMIT that failed with SQLITE_FULL has rolled back already: ROLLBACK would raise
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as e:
                    self.log.warning("index_rollback_failed", error=repr(e))
            raise
        self.rows_written += len(batch)
        self.commits += 1

    async def stop(self) -> None:
        await super().stop()
        if self._conn is not None:
            try:
                await self.flush()
            finally:
                await self.ctx.executor.run(self._close)

    def _close(self) -> None:
        with self._db_lock:  # after a write still running from a cancelled flush
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
        with self._read_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()

    def batched(self) -> int:
        """Rows accepted and not committed yet (pending, failed before, being written)."""
        return len(self._pending) + len(self._retry) + self._inflight

    def metrics(self) -> dict[str, float | int | str]:
        return {
            "batched_rows": self.batched(),
            "rows_written": self.rows_written,
            "commits": self.commits,
            "write_failures": self.write_failures,
            "recovered_events": self.recovered_events,
            "reindexed_rows": self.reindexed_rows,
            "rows_dropped": self.rows_dropped,
            # read by the status page's /health/ready: 0 while the index cannot write
            "storage_writable": int(self.writable),
        }


# Re-exported for callers that knew these names from here before they moved to core.
__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "Config",
    "EventIndex",
    "connect",
    "insert_notification",
    "upsert_artifact",
    "upsert_event",
]
