"""A newer caption edit supersedes an older one (``enqueue(supersede=True)``), also when the
older one is already on its way and across a crash: the caption a person sees last is the
newest one, no edit goes after a newer one, a row says ``sent`` whenever its edit went, and a
restart never loses the newest edit that was stored.

Each interleaving is driven by hand: the sender holds an edit at the server until the test
lets it answer (or fail), and a "slow disk" holds one outbox write so that another step can
run in between, or never lets it happen (a SIGKILL at that moment)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio

from spyoncino.core.bus import Bus
from spyoncino.core.contracts import BoundedExecutor
from spyoncino.helpers.outbox import Outbox, OutboxItem, OutboxSettings, TransientError
from spyoncino.testing.clock import FakeClock
from tests.support.wait import Log, until

FAST = {"min_interval_s": 0.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}


class Server:
    """A chat server that answers each message at once, or holds a caption edit (named by
    its caption) until the test answers it, or fails it."""

    def __init__(self) -> None:
        #: (kind, caption) of what the server took, in order
        self.applied: Log[tuple[str, str]] = Log()
        #: (kind, caption) of each attempt as it arrives
        self.arrived: Log[tuple[str, str]] = Log()
        self.held: dict[str, asyncio.Future[BaseException | None]] = {}
        self.down = False

    def hold(self, caption: str) -> None:
        self.held[caption] = asyncio.get_running_loop().create_future()

    def answer(self, caption: str, error: BaseException | None = None) -> None:
        self.held.pop(caption).set_result(error)

    async def __call__(self, item: OutboxItem) -> str | None:
        what = (item.kind, str(item.payload.get("caption", "")))
        self.arrived.append(what)
        if self.down:
            raise TransientError("connection refused")
        hold = self.held.get(what[1]) if item.kind == "caption" else None
        if hold is not None:
            error = await hold
            if error is not None:
                raise error
        self.applied.append(what)
        return "photo-1" if item.kind == "snapshot" else None

    def captions(self) -> list[str]:
        return [c for k, c in self.applied if k == "caption"]


class SlowDisk:
    """Holds the outbox's next write of one sort until ``release``; ``kill`` never lets it
    happen, nor any write after it, as a SIGKILL at that moment (closing the file aside)."""

    def __init__(self, box: Outbox, match: Callable[[str, tuple[Any, ...]], bool]) -> None:
        self.match = match
        self.reached = asyncio.Event()
        self.go = asyncio.Event()
        self.killed = False
        self.armed = True
        run_io: Callable[..., Awaitable[Any]] = box.run_io

        async def slow(fn: Callable[..., Any], *args: Any) -> Any:
            name = getattr(fn, "__name__", "")
            if self.armed and self.match(name, args):
                self.armed = False
                self.reached.set()
                await self.go.wait()
            if self.killed and name != "close":
                await asyncio.Event().wait()  # the process is gone: never written
            return await run_io(fn, *args)

        box.run_io = slow  # type: ignore[method-assign]

    def release(self) -> None:
        self.go.set()

    def kill(self) -> None:
        self.killed = True
        self.go.set()


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(workers=2)
    boxes: list[Outbox] = []
    tasks: list[asyncio.Task[Any]] = []
    db = tmp_path / "outbox.sqlite3"

    def make(server: Server, clock: FakeClock | None = None) -> Outbox:
        box = Outbox(
            channel="telegram",
            db_path=db,
            bus=bus,
            executor=executor,
            sender=server,
            settings=OutboxSettings(**FAST),
            **({"clock": clock} if clock is not None else {}),
        )
        boxes.append(box)
        return box

    yield {"make": make, "db": db, "tasks": tasks}
    for t in tasks:
        t.cancel()
    for b in boxes:
        b.__dict__.pop("run_io", None)  # a killed box's disk back, so that it can close
        await b.close(grace_s=0)
    await bus.close()
    executor.shutdown()


async def photo(box: Outbox) -> None:
    await box.enqueue(recipient="1", event_id="e1", camera_id="c", kind="snapshot", payload={})


async def edit(box: Outbox, caption: str) -> None:
    await box.enqueue(
        recipient="1",
        event_id="e1",
        camera_id="c",
        kind="caption",
        payload={"caption": caption},
        supersede=True,
    )


def rows(db: Path) -> dict[str, str]:
    """caption -> status of the caption rows."""
    conn = sqlite3.connect(db)
    try:
        found = conn.execute(
            "SELECT json_extract(payload, '$.caption'), status FROM outbox WHERE kind='caption'"
        ).fetchall()
    finally:
        conn.close()
    return {str(c): str(s) for c, s in found}


async def settled(box: Outbox, db: Path, want: dict[str, str]) -> None:
    # polled: a row is marked in SQLite after its send, which fires no event
    await until(lambda: box.pending() == 0 and rows(db) == want, what=f"rows {want}")


async def test_an_edit_the_server_took_while_a_newer_one_came_is_recorded_sent(
    env: dict[str, Any],
) -> None:
    """The replay's "8 caption edits against 7 rows marked sent": the newer edit arrived
    while the older one's "sent" was being written, and "superseded" was written over it."""
    server = Server()
    box: Outbox = env["make"](server)
    disk = SlowDisk(box, lambda fn, args: fn == "_mark" and args[2] == "sent" and args[1] == 2)
    await box.start()
    await photo(box)
    await edit(box, "1 person")  # row 2
    await disk.reached.wait()  # the server took "1 person"; its row is being marked sent
    newer = asyncio.ensure_future(edit(box, "2 people"))
    env["tasks"].append(newer)
    await asyncio.sleep(0)  # one turn of the loop (no event to await): the newer edit's
    # enqueue runs until it waits for the outbox's file, which the held write has
    disk.release()
    await newer
    await server.applied.wait_for(3)
    assert server.captions() == ["1 person", "2 people"]
    await settled(box, env["db"], {"1 person": "sent", "2 people": "sent"})


async def test_an_edit_superseded_while_on_its_way_that_fails_is_not_sent_later(
    env: dict[str, Any],
) -> None:
    """An edit under way fails after a newer one came: it was put back as pending, out of
    the queue, and after the next restart it went out after the newer one (the chat kept
    the older caption)."""
    server = Server()
    box: Outbox = env["make"](server)
    await box.start()
    await photo(box)
    server.hold("1 person")
    await edit(box, "1 person")
    await server.arrived.wait_for(1, lambda a: a == ("caption", "1 person"))
    await edit(box, "2 people")
    server.answer("1 person", TransientError("timed out"))
    await server.applied.wait_for(1, lambda a: a == ("caption", "2 people"))
    await settled(box, env["db"], {"1 person": "superseded", "2 people": "sent"})
    await box.close()

    again = Server()
    box2: Outbox = env["make"](again)
    await box2.start()
    assert box2.pending() == 0  # nothing left to send: "2 people" is the chat's caption
    assert server.captions() == ["2 people"]


async def test_a_crash_between_superseding_and_storing_the_newer_edit_loses_no_edit(
    env: dict[str, Any],
) -> None:
    """The faults test's "replaced caption edits with no newer edit sent": the older edit was
    marked superseded in one write and the newer one stored in the next; a SIGKILL between
    the two lost both."""
    clock = FakeClock()
    server = Server()
    server.down = True  # an outage: the photo and its edit wait in the outbox
    box: Outbox = env["make"](server, clock)
    await box.start()
    await photo(box)
    await edit(box, "1 person")
    await server.arrived.wait_for(1)  # the photo failed once and waits out its backoff
    disk = SlowDisk(box, lambda fn, args: fn.startswith("_insert"))
    newer = asyncio.ensure_future(edit(box, "2 people"))
    env["tasks"].append(newer)
    await disk.reached.wait()
    disk.kill()  # SIGKILL: the box writes nothing more

    after = Server()
    box2: Outbox = env["make"](after)
    await box2.start()
    await after.applied.wait_for(2)
    assert after.applied == [("snapshot", ""), ("caption", "1 person")]
    await settled(box2, env["db"], {"1 person": "sent"})


async def test_a_crash_while_an_edit_is_on_its_way_sends_the_newer_one_last(
    env: dict[str, Any],
) -> None:
    """A SIGKILL while the older edit is at the server and the newer one waits: after the
    restart the newer edit goes, and nothing goes after it."""
    server = Server()
    box: Outbox = env["make"](server)
    await box.start()
    await photo(box)
    server.hold("1 person")
    await edit(box, "1 person")
    await server.arrived.wait_for(1, lambda a: a == ("caption", "1 person"))
    await edit(box, "2 people")
    SlowDisk(box, lambda fn, args: True).kill()  # SIGKILL: the box writes nothing more
    server.answer("1 person")  # the server applied it; the box never heard

    after = Server()
    box2: Outbox = env["make"](after)
    await box2.start()
    await until(lambda: box2.pending() == 0, what="the restarted box's queue empty")
    assert (server.captions() + after.captions())[-1] == "2 people"
    # whether "1 person" went is unknown after the kill: it may go again, before the newer
    await settled(box2, env["db"], {"1 person": "sent", "2 people": "sent"})
    assert after.captions()[-1:] == ["2 people"]


async def test_a_newer_edit_the_disk_refused_does_not_supersede_the_stored_one_before_a_crash(
    env: dict[str, Any],
) -> None:
    """The newer edit could not be stored (the disk is full): it is delivered from memory,
    and the older edit is not marked superseded on disk until the newer one is stored, so a
    crash meanwhile still sends the older one after the restart."""
    clock = FakeClock()
    server = Server()
    server.down = True
    box: Outbox = env["make"](server, clock)
    await box.start()
    await photo(box)
    await edit(box, "1 person")
    await server.arrived.wait_for(1)  # the photo failed once and waits out its backoff
    inner = box.run_io

    async def refuse(fn: Any, *args: Any) -> Any:
        if getattr(fn, "__name__", "").startswith("_insert"):
            raise sqlite3.OperationalError("database or disk is full")
        return await inner(fn, *args)

    box.run_io = refuse  # type: ignore[method-assign]
    await edit(box, "2 people")
    assert box.stats["store_failures"] == 1
    SlowDisk(box, lambda fn, args: True).kill()  # SIGKILL right after: nothing more written

    after = Server()
    box2: Outbox = env["make"](after)
    await box2.start()
    await after.applied.wait_for(2)
    assert after.applied == [("snapshot", ""), ("caption", "1 person")]
