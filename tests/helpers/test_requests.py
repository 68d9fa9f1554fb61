"""Request/reply on the bus: a typed answer, or a clear error when nobody (or nothing) answers."""

from __future__ import annotations

import asyncio

import pytest

from spyoncino.core.bus import Bus, Message
from spyoncino.helpers.requests import (
    NoOwner,
    Requester,
    RequestError,
    RequestFailed,
    RequestTimeout,
    answering,
)
from spyoncino.schemas import topics
from spyoncino.schemas.index import LabelsQuery, LabelsReply


async def test_the_owner_answers_the_request_it_was_asked() -> None:
    bus = Bus()
    asked: list[int] = []

    async def labels(q: LabelsQuery) -> LabelsReply:
        asked.append(q.limit)
        return LabelsReply(labels=tuple(f"l{i}" for i in range(q.limit)))

    bus.subscribe(topics.INDEX_LABELS, answering(bus, topics.INDEX_LABELS_REPLY, labels))
    req = Requester(bus, "asker")
    a, b = await asyncio.gather(
        req.ask(topics.INDEX_LABELS, LabelsQuery(limit=2), topics.INDEX_LABELS_REPLY, timeout=5),
        req.ask(topics.INDEX_LABELS, LabelsQuery(limit=3), topics.INDEX_LABELS_REPLY, timeout=5),
    )
    assert (a.labels, b.labels) == (("l0", "l1"), ("l0", "l1", "l2"))
    assert sorted(asked) == [2, 3]
    req.close()
    await bus.close()


async def test_no_owner_fails_at_once_naming_the_topic() -> None:
    bus = Bus()
    req = Requester(bus, "asker")
    with pytest.raises(NoOwner, match=r"storage\.index\.labels"):
        await req.ask(topics.INDEX_LABELS, LabelsQuery(), topics.INDEX_LABELS_REPLY, timeout=60)
    await bus.close()


async def test_an_owner_that_fails_answers_with_its_error() -> None:
    bus = Bus()

    async def broken(q: LabelsQuery) -> LabelsReply:
        raise ValueError("disk on fire")

    bus.subscribe(topics.INDEX_LABELS, answering(bus, topics.INDEX_LABELS_REPLY, broken))
    req = Requester(bus, "asker")
    with pytest.raises(RequestFailed, match="disk on fire"):
        await req.ask(topics.INDEX_LABELS, LabelsQuery(), topics.INDEX_LABELS_REPLY, timeout=60)
    req.close()
    await bus.close()


async def test_an_owner_that_never_answers_times_out() -> None:
    bus = Bus()

    async def silent(msg: Message[LabelsQuery]) -> None:
        return None

    bus.subscribe(topics.INDEX_LABELS, silent)
    req = Requester(bus, "asker")
    with pytest.raises(RequestTimeout, match=r"within 0\.05 s"):
        await req.ask(topics.INDEX_LABELS, LabelsQuery(), topics.INDEX_LABELS_REPLY, timeout=0.05)
    req.close()
    await bus.close()


async def test_close_releases_the_reply_subscription_and_fails_a_waiting_request() -> None:
    bus = Bus()
    got = asyncio.Event()

    async def silent(msg: Message[LabelsQuery]) -> None:
        got.set()

    bus.subscribe(topics.INDEX_LABELS, silent)
    req = Requester(bus, "asker")
    waiting = asyncio.ensure_future(
        req.ask(topics.INDEX_LABELS, LabelsQuery(), topics.INDEX_LABELS_REPLY, timeout=60)
    )
    await got.wait()
    assert bus.has_subscribers(topics.INDEX_LABELS_REPLY)
    req.close()
    assert not bus.has_subscribers(topics.INDEX_LABELS_REPLY)
    with pytest.raises(RequestError, match="stopped"):
        await waiting
    with pytest.raises(RequestError, match="after stop"):
        await req.ask(topics.INDEX_LABELS, LabelsQuery(), topics.INDEX_LABELS_REPLY, timeout=1)
    await bus.close()
