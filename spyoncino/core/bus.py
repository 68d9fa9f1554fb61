"""In-process async publish/subscribe bus.

Topics are dot-separated names (``camera.front_door.frame``). Subscription patterns match
segment by segment:

* a literal segment matches itself;
* ``*`` matches exactly one segment (``camera.*.frame``);
* ``#`` as the last segment matches zero or more trailing segments (``event.#``).

Every subscription owns a bounded queue and one task that calls its handler, so a slow or
failing subscriber never delays or breaks another one: a message is queued for every
subscriber with room before the publisher waits for a full ``block`` queue. Once an
unsubscribe returns, that handler is never called again (the orchestrator drains the bus
before it stops consumers, so nothing lossless is still queued by then). The queue's policy
decides what happens when it is full:

* ``latest``: keep only the newest ``maxsize`` messages (frames: a slow detector sees the
  newest frame, never a backlog); older ones are dropped and counted;
* ``block``: the publisher awaits until there is room (events, media, alerts: nothing lost);
* ``drop_oldest``: like ``latest`` but meant for bounded histories (telemetry).

``publish`` never raises because of a subscriber: handler errors are logged with the
subscriber's module and the topic, and counted on ``status.bus``.

``publish(topic: Topic[T], payload: T)`` is typed: mypy refuses a payload of the wrong type
for a topic constant from ``spyoncino.schemas.topics``. With payload checks on (a
``Bus(check_payloads=True)``, ``python -X dev``, ``SPYONCINO_CHECK_PAYLOADS=1``, and every
``spyoncino.testing`` harness) a wrong payload raises ``TypeError`` naming the topic, also
for a plain string whose name belongs to one of our topic families.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, overload

import structlog

from spyoncino.core.clock import SYSTEM_CLOCK, Clock
from spyoncino.schemas.status import BusStatus, SubscriptionStats, TopicStats
from spyoncino.schemas.topics import BUS_STATUS, families_of
from spyoncino.schemas.topics import Topic as Topic

T = TypeVar("T")
Policy = Literal["latest", "block", "drop_oldest"]

_log = structlog.get_logger("spyoncino.bus")


def match(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern`` (see the module docstring for the syntax)."""
    if pattern == topic:
        return True
    pp = pattern.split(".")
    tp = topic.split(".")
    for i, seg in enumerate(pp):
        if seg == "#":
            if i != len(pp) - 1:
                raise ValueError(f"'#' must be the last segment of a pattern: {pattern!r}")
            return True
        if i >= len(tp):
            return False
        if seg != "*" and seg != tp[i]:
            return False
    return len(pp) == len(tp)


def validate_pattern(pattern: str) -> None:
    segs = pattern.split(".")
    if not pattern or any(s == "" for s in segs):
        raise ValueError(f"empty segment in topic pattern {pattern!r}")
    if "#" in segs[:-1]:
        raise ValueError(f"'#' must be the last segment of a pattern: {pattern!r}")


#: covariant: a handler of ``Message[A | B]`` may take a ``Message[A]`` (messages are not
#: changed after publish)
T_co = TypeVar("T_co", covariant=True)


@dataclass(slots=True)
class Message(Generic[T_co]):
    topic: str
    payload: T_co
    published_mono: float


Handler = Callable[[Message[Any]], Awaitable[None]]


class _Closed(Exception):
    pass


@dataclass(eq=False, slots=True)
class Subscription:
    """One subscriber's queue, policy and delivery task."""

    #: as shown on ``status.bus``: the patterns joined by ``,``
    pattern: str
    handler: Handler
    policy: Policy
    maxsize: int
    module: str
    high_watermark: int
    #: a topic matching any of these is delivered (one queue: their order is kept)
    patterns: tuple[str, ...] = ()
    queue: deque[Message[Any]] = field(default_factory=deque)
    delivered: int = 0
    dropped: int = 0
    errors: int = 0
    max_depth: int = 0
    lag_ms_last: float = 0.0
    lag_ms_max: float = 0.0
    above_watermark: bool = False
    handling: bool = False
    task: asyncio.Task[None] | None = None
    _item: asyncio.Future[None] | None = None
    _space: asyncio.Future[None] | None = None
    closed: bool = False
    #: the bus clock's ``monotonic``: a message's lag is the time between its publish and its
    #: delivery (the bound function, read once a message without looking the clock up)
    monotonic: Callable[[], float] = SYSTEM_CLOCK.monotonic

    def offer(self, msg: Message[Any]) -> bool:
        """Enqueue without waiting; False when a ``block`` queue is full."""
        q = self.queue
        if len(q) >= self.maxsize:
            if self.policy == "block":
                return False
            q.popleft()
            self.dropped += 1
        q.append(msg)
        depth = len(q)
        if depth > self.max_depth:
            self.max_depth = depth
        # a latest-wins queue is full by design; its drops are counted instead
        if depth >= self.high_watermark and not self.above_watermark and self.policy != "latest":
            self.above_watermark = True
            _log.warning(
                "bus_high_watermark",
                subscriber=self.module,
                pattern=self.pattern,
                depth=depth,
                maxsize=self.maxsize,
                topic=msg.topic,
            )
        waiter = self._item
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    async def put(self, msg: Message[Any]) -> None:
        while not self.offer(msg):
            if self.closed:
                return
            loop = asyncio.get_running_loop()
            if self._space is None or self._space.done():
                self._space = loop.create_future()
            await self._space

    async def _next(self) -> Message[Any]:
        while not self.queue:
            if self.closed:
                raise _Closed
            self._item = asyncio.get_running_loop().create_future()
            await self._item
        msg = self.queue.popleft()
        if self.above_watermark and len(self.queue) < self.high_watermark // 2:
            self.above_watermark = False
        space = self._space
        if space is not None and not space.done():
            space.set_result(None)
        return msg

    async def run(self, stats_errors: Callable[[str], None]) -> None:
        while True:
            try:
                msg = await self._next()
            except _Closed:
                return
            if self.closed:  # unsubscribed while this one waited: its module has stopped
                self.dropped += 1 + len(self.queue)
                self.queue.clear()
                return
            lag = (self.monotonic() - msg.published_mono) * 1000.0
            self.lag_ms_last = lag
            if lag > self.lag_ms_max:
                self.lag_ms_max = lag
            self.handling = True
            try:
                await self.handler(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                stats_errors(msg.topic)
                _log.error(
                    "bus_handler_error",
                    subscriber=self.module,
                    topic=msg.topic,
                    error=repr(exc),
                    exc_info=exc,
                )
            finally:
                self.handling = False
            self.delivered += 1
            # not kept alive through this local while the next one is awaited: a frame's
            # decoded picture is megabytes, and every idle subscription would pin its last
            del msg

    def wake(self) -> None:
        for fut in (self._item, self._space):
            if fut is not None and not fut.done():
                fut.set_result(None)


class Bus:
    """The process-wide message bus."""

    def __init__(
        self,
        *,
        status_interval: float = 10.0,
        default_maxsize: int = 64,
        high_watermark: float = 0.8,
        check_payloads: bool | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        #: what publish stamps and lag is measured on (a test hands in a FakeClock)
        self.clock = clock
        self._monotonic = clock.monotonic
        if check_payloads is None:
            check_payloads = sys.flags.dev_mode or os.environ.get("SPYONCINO_CHECK_PAYLOADS") == "1"
        #: raise on a payload whose type is not its topic's (debug and tests; off in service)
        self.check_payloads = check_payloads
        self._subs: list[Subscription] = []
        self._route_cache: dict[str, tuple[Subscription, ...]] = {}
        self._published: dict[str, int] = {}
        self._topic_errors: dict[str, int] = {}
        self._status_interval = status_interval
        self._default_maxsize = default_maxsize
        self._high_watermark = high_watermark
        self._telemetry_task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._closed = False

    # -- subscribe ---------------------------------------------------------------------------
    @overload
    def subscribe(
        self,
        pattern: Topic[T],
        handler: Callable[[Message[T]], Awaitable[None]],
        *,
        policy: Policy = ...,
        maxsize: int | None = ...,
        module: str = ...,
    ) -> Callable[[], None]: ...

    @overload
    def subscribe(
        self,
        pattern: str | Sequence[str],
        handler: Callable[[Message[object]], Awaitable[None]],
        *,
        policy: Policy = ...,
        maxsize: int | None = ...,
        module: str = ...,
    ) -> Callable[[], None]: ...

    def subscribe(
        self,
        pattern: str | Sequence[str],
        handler: Handler,
        *,
        policy: Policy = "block",
        maxsize: int | None = None,
        module: str = "?",
    ) -> Callable[[], None]:
        """Deliver every message whose topic matches ``pattern`` to ``handler``.

        ``pattern`` may be a topic family (``topics.EVENT``): it means its wildcard pattern.
        Several patterns share one queue, so messages of both families arrive in the order
        they were published (``[topics.EVENT, topics.ARTIFACT]``: a notice before the media
        made for it). Returns a callable that unsubscribes (idempotent). Must be called with
        a running loop.
        """
        patterns = tuple(
            p.pattern() if isinstance(p, Topic) else p
            for p in ((pattern,) if isinstance(pattern, str) else pattern)
        )
        if not patterns:
            raise ValueError("subscribe needs at least one pattern")
        for p in patterns:
            validate_pattern(p)
        pattern = ",".join(patterns)
        size = (
            maxsize if maxsize is not None else (1 if policy == "latest" else self._default_maxsize)
        )
        if size < 1:
            raise ValueError(f"maxsize must be >= 1, got {size}")
        sub = Subscription(
            pattern=pattern,
            patterns=patterns,
            handler=handler,
            policy=policy,
            maxsize=size,
            module=module,
            high_watermark=max(1, int(size * self._high_watermark)),
            monotonic=self._monotonic,
        )
        sub.task = asyncio.get_running_loop().create_task(
            sub.run(self._count_error), name=f"bus:{module}:{pattern}"
        )
        self._subs.append(sub)
        self._route_cache.clear()

        def unsubscribe() -> None:
            """After this returns the handler is never called again (one already running
            finishes); what was still queued is dropped and counted."""
            if sub in self._subs:
                self._subs.remove(sub)
                self._route_cache.clear()
            sub.closed = True
            if sub.queue and not sub.handling:
                sub.dropped += len(sub.queue)
                sub.queue.clear()
            sub.wake()

        return unsubscribe

    def _count_error(self, topic: str) -> None:
        self._topic_errors[topic] = self._topic_errors.get(topic, 0) + 1

    def _routes(self, topic: str) -> tuple[Subscription, ...]:
        subs = self._route_cache.get(topic)
        if subs is None:
            subs = tuple(s for s in self._subs if any(match(p, topic) for p in s.patterns))
            self._route_cache[topic] = subs
        return subs

    # -- publish -----------------------------------------------------------------------------
    def _check(self, topic: str, payload: object) -> None:
        if isinstance(topic, Topic):
            if "{" in topic:
                raise ValueError(f"topic {str(topic)!r} has placeholders: publish on .at(...)")
            expected: tuple[type[Any], ...] = (topic.payload,)
        else:
            expected = tuple(t.payload for t in families_of(topic))
        if expected and not isinstance(payload, expected):
            want = " | ".join(t.__name__ for t in expected)
            raise TypeError(
                f"payload on topic {str(topic)!r} must be {want}, got {type(payload).__name__}"
            )

    async def publish(self, topic: Topic[T], payload: T) -> None:
        """Hand ``payload`` to every matching subscription.

        Returns once every ``block`` subscriber has queued it; never raises because of a
        subscriber (with payload checks on, a payload of the wrong type raises ``TypeError``).
        """
        if self.check_payloads:
            self._check(topic, payload)
        self._published[topic] = self._published.get(topic, 0) + 1
        subs = self._routes(topic)
        if not subs:
            return
        msg = Message(topic, payload, self._monotonic())
        # Everyone with room gets it now; only then wait for the full ``block`` queues, so a
        # stuck subscriber holds back the publisher (nothing lost) but never the others.
        # (A loop, not a list: nearly every publish finds no queue full.)
        full: list[Subscription] | None = None
        for sub in subs:
            if not sub.offer(msg):
                if full is None:
                    full = []
                full.append(sub)
        if full is not None:
            for sub in full:
                await sub.put(msg)

    def publish_nowait(self, topic: Topic[T], payload: T) -> int:
        """Publish from synchronous code; a full ``block`` queue drops and counts the message.

        Returns how many subscribers could not take it. Prefer ``await publish``.
        """
        if self.check_payloads:
            self._check(topic, payload)
        self._published[topic] = self._published.get(topic, 0) + 1
        msg = Message(topic, payload, self._monotonic())
        refused = 0
        for sub in self._routes(topic):
            if not sub.offer(msg):
                sub.dropped += 1
                refused += 1
        return refused

    def has_subscribers(self, topic: str) -> bool:
        return bool(self._routes(topic))

    # -- telemetry ---------------------------------------------------------------------------
    def status(self) -> BusStatus:
        subs = [
            SubscriptionStats(
                module=s.module,
                pattern=s.pattern,
                policy=s.policy,
                depth=len(s.queue),
                max_depth=s.max_depth,
                maxsize=s.maxsize,
                delivered=s.delivered,
                dropped=s.dropped,
                errors=s.errors,
                lag_ms=round(s.lag_ms_last, 3),
                lag_ms_max=round(s.lag_ms_max, 3),
                above_high_watermark=s.above_watermark,
            )
            for s in self._subs
        ]
        topics = [
            TopicStats(topic=t, published=n, handler_errors=self._topic_errors.get(t, 0))
            for t, n in sorted(self._published.items())
        ]
        warnings = [
            f"{s.module} on {s.pattern}: queue at {s.depth}/{s.maxsize}"
            for s in subs
            if s.above_high_watermark
        ]
        return BusStatus(
            uptime_s=round(time.monotonic() - self._started, 3),
            topics=topics,
            subscriptions=subs,
            warnings=warnings,
        )

    async def _telemetry_loop(self) -> None:
        while True:
            await asyncio.sleep(self._status_interval)
            await self.publish(BUS_STATUS, self.status())

    def start_telemetry(self) -> None:
        if self._telemetry_task is None and self._status_interval > 0:
            self._telemetry_task = asyncio.get_running_loop().create_task(
                self._telemetry_loop(), name="bus:telemetry"
            )

    def idle(self, exclude: Iterable[str] = ()) -> bool:
        """True when no queue holds a message and no handler is running."""
        skip = tuple(exclude)
        return not any(
            (s.queue or s.handling)
            for s in self._subs
            if not any(match(p, sp) for p in skip for sp in s.patterns)
        )

    async def wait_idle(self, *topics: str, poll: float = 0.001) -> None:
        """Wait until every subscriber of ``topics`` has an empty queue and no running handler.

        Used by lockstep replay so that every frame is processed before the next one.
        """
        while True:
            busy = False
            for topic in topics:
                for s in self._routes(topic):
                    if s.queue or s.handling:
                        busy = True
                        break
                if busy:
                    break
            if not busy:
                return
            await asyncio.sleep(poll)

    async def drain(self, timeout: float = 5.0, exclude: Iterable[str] = ()) -> bool:
        """Wait until the bus is idle twice in a row (a handler may publish follow-ups)."""
        skip = tuple(exclude)
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            quiet = quiet + 1 if self.idle(skip) else 0
            if quiet >= 3:
                return True
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        self._closed = True
        if self._telemetry_task is not None:
            self._telemetry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._telemetry_task
        subs, self._subs = self._subs, []
        self._route_cache.clear()
        for s in subs:
            s.closed = True
            s.wake()
        tasks = [s.task for s in subs if s.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=2.0)
            for t in pending:
                t.cancel()
            for t in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
