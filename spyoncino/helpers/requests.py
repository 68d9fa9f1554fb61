"""Request/reply over the bus: ask the module that owns some state, get a typed answer.

The asking side holds one ``Requester`` (made in ``start``, closed in ``stop``)::

    page = await self.requests.ask(topics.INDEX_EVENTS, EventsQuery(limit=50),
                                   topics.INDEX_EVENTS_REPLY, timeout=5.0)

``ask`` sets a fresh ``request_id``, publishes the request and waits for the reply that
repeats it. It raises ``NoOwner`` at once when no module subscribes to the request topic (the
owner is not configured or not started), ``RequestTimeout`` when no answer came in time, and
``RequestFailed`` when the owner answered with an error. The owning side answers with
``answering``, which turns its handler's exception into an error reply, so a requester never
waits out its timeout because the owner failed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from spyoncino.core.bus import Bus, Message
from spyoncino.schemas.index import Reply, Request
from spyoncino.schemas.topics import Topic

Q = TypeVar("Q", bound=Request)
A = TypeVar("A", bound=Reply)


class RequestError(RuntimeError):
    """A request got no usable answer."""


class NoOwner(RequestError):
    """Nobody subscribes to the request's topic."""


class RequestTimeout(RequestError, TimeoutError):
    """The owner did not answer within the timeout."""


class RequestFailed(RequestError):
    """The owner answered with an error."""


class Requester:
    """Asks on behalf of one module; one reply subscription per reply topic, made on first use."""

    def __init__(self, bus: Bus, module: str) -> None:
        self.bus = bus
        self.module = module
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._closed = False

    async def ask(self, topic: Topic[Q], request: Q, reply: Topic[A], *, timeout: float) -> A:
        if self._closed:
            raise RequestError(f"{self.module}: asked {topic!s} after stop")
        if not self.bus.has_subscribers(topic):
            raise NoOwner(f"no module answers {topic!s} (is its owner configured and started?)")
        if str(reply) not in self._unsubscribe:
            self._unsubscribe[str(reply)] = self.bus.subscribe(
                reply, self._on_reply, policy="block", maxsize=256, module=self.module
            )
        rid = uuid.uuid4().hex
        fut: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            await self.bus.publish(topic, request.model_copy(update={"request_id": rid}))
            try:
                answer = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise RequestTimeout(f"no answer on {reply!s} within {timeout:g} s") from None
        finally:
            self._waiting.pop(rid, None)
        if answer.error:
            raise RequestFailed(f"{topic!s}: {answer.error}")
        return answer

    async def _on_reply(self, msg: Message[Reply]) -> None:
        fut = self._waiting.get(msg.payload.request_id)
        if fut is not None and not fut.done():
            fut.set_result(msg.payload)

    def close(self) -> None:
        """Release the reply subscriptions; a request still waiting fails at once."""
        self._closed = True
        for unsubscribe in self._unsubscribe.values():
            unsubscribe()
        self._unsubscribe.clear()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RequestError(f"{self.module} stopped"))


def answering(
    bus: Bus, reply: Topic[A], handler: Callable[[Q], Awaitable[A]]
) -> Callable[[Message[Q]], Awaitable[None]]:
    """The subscription handler of the owner: ``handler(request)`` answered on ``reply`` with
    the request's id; an exception in it is answered as ``error``, never swallowed silently."""

    async def on_request(msg: Message[Q]) -> None:
        rid = msg.payload.request_id
        try:
            answer = await handler(msg.payload)
        except Exception as e:  # the requester raises it; the owner goes on serving
            answer = reply.payload(request_id=rid, error=f"{type(e).__name__}: {e}"[:500])
        else:
            answer = answer.model_copy(update={"request_id": rid})
        await bus.publish(reply, answer)

    return on_request


__all__ = [
    "NoOwner",
    "RequestError",
    "RequestFailed",
    "RequestTimeout",
    "Requester",
    "answering",
]
