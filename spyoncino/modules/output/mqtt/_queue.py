"""What waits to be published: events in order (bounded) and states latest-wins.

The same queue serves a connected and a disconnected broker, so an outage changes nothing but
how long things wait. Events (QoS 1) keep their order; past ``max_events`` the oldest are
dropped and counted, and one ``summary`` document saying how many and over which span goes
out first when the broker is back. States (retained) keep only their newest value per topic:
after an outage Home Assistant sees the current state, not the history.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class PublishQueue:
    def __init__(self, max_events: int, summary_topic: str) -> None:
        self.max_events = max_events
        self.summary_topic = summary_topic
        self.events: deque[Outgoing] = deque()
        self.states: dict[str, Outgoing] = {}
        self.dropped = 0
        self.dropped_total = 0
        self._dropped_span: tuple[float, float] | None = None
        self.ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self.events) + len(self.states) + (1 if self.dropped else 0)

    def event(self, topic: str, payload: bytes) -> None:
        if self.max_events == 0:
            self._drop()
            return
        while len(self.events) >= self.max_events:
            self.events.popleft()
            self._drop()
        self.events.append(Outgoing(topic, payload, 1, False))
        self.ready.set()

    def state(self, topic: str, payload: bytes, *, retain: bool = True, qos: int = 1) -> None:
        self.states.pop(topic, None)  # re-insert: a state changed last goes out last
        self.states[topic] = Outgoing(topic, payload, qos, retain)
        self.ready.set()

    def _drop(self) -> None:
        now = time.time()
        first = self._dropped_span[0] if self._dropped_span else now
        self._dropped_span = (first, now)
        self.dropped += 1
        self.dropped_total += 1
        self.ready.set()

    def pop(self) -> Outgoing | None:
        """The next thing to publish: the drop summary, then events in order, then states."""
        if self.dropped:
            span = self._dropped_span or (time.time(), time.time())
            doc = {
                "schema_version": 1,
                "type": "summary",
                "dropped_events": self.dropped,
                "first_dropped_at": span[0],
                "last_dropped_at": span[1],
            }
            self.dropped, self._dropped_span = 0, None
            return Outgoing(self.summary_topic, json.dumps(doc).encode(), 1, False)
        if self.events:
            return self.events.popleft()
        if self.states:
            topic = next(iter(self.states))
            return self.states.pop(topic)
        self.ready.clear()
        return None

    def put_back(self, item: Outgoing) -> None:
        """A publish that failed mid-way goes back to the front (at least once, in order)."""
        if item.retain:
            self.states.setdefault(item.topic, item)
        else:
            self.events.appendleft(item)
        self.ready.set()
