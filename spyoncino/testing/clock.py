"""A clock that moves only when the test says so (see :mod:`spyoncino.core.clock`).

Example::

    clock = FakeClock()
    box = Outbox(..., clock=clock)
    await clock.sleeping()        # the code under test now waits on the clock
    clock.advance(60)             # one minute passes at once; due sleepers wake
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Any


class FakeClock:
    """Wall and monotonic time that only :meth:`advance` moves; sleeps wake when due.

    Both start at the real values at construction, so timestamps stored by the code under
    test look ordinary.
    """

    def __init__(self, wall: float | None = None, mono: float | None = None) -> None:
        self._wall0 = time.time() if wall is None else wall
        self._mono0 = time.monotonic() if mono is None else mono
        self._elapsed = 0.0
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._new_sleeper: asyncio.Event | None = None

    # -- the Clock protocol ---------------------------------------------------------------------
    def time(self) -> float:
        return self._wall0 + self._elapsed

    def monotonic(self) -> float:
        return self._mono0 + self._elapsed

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + max(0.0, seconds), next(self._seq), fut))
        if self._new_sleeper is not None:
            self._new_sleeper.set()
        try:
            await fut
        finally:
            if not fut.done():  # cancelled: forget it
                self._sleepers = [s for s in self._sleepers if s[2] is not fut]
                heapq.heapify(self._sleepers)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        # the deadline is taken now, not when a task would first run: a test advancing the
        # clock in between must not push it later (that wait then never woke)
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + max(0.0, timeout), next(self._seq), timer))
        if self._new_sleeper is not None:
            self._new_sleeper.set()
        try:
            pending: set[asyncio.Future[Any]] = {waiter, timer}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not timer.done():  # woken by the event: forget the deadline
                timer.cancel()
                self._sleepers = [x for x in self._sleepers if x[2] is not timer]
                heapq.heapify(self._sleepers)
        return event.is_set()

    # -- what tests do --------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``; every sleep that is then due wakes."""
        self._elapsed += seconds
        while self._sleepers and self._sleepers[0][0] <= self._elapsed + 1e-9:
            _due, _n, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting on this clock now."""
        return sum(1 for s in self._sleepers if not s[2].done())

    def next_due(self) -> float | None:
        """Seconds from now until the earliest sleep is due (None: nobody sleeps)."""
        due = [d for d, _n, f in self._sleepers if not f.done()]
        return min(due) - self._elapsed if due else None

    async def sleeping(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait (in real time, bounded) until at least ``count`` sleeps wait on this clock:
        the code under test has done what it does before it waits for time to pass."""
        async with asyncio.timeout(timeout):
            while self.sleepers < count:
                if self._new_sleeper is None or self._new_sleeper.is_set():
                    self._new_sleeper = asyncio.Event()
                await self._new_sleeper.wait()
