"""The clock code that waits on time reads, so a test can drive time by hand.

A module that paces, backs off or pings on a timer asks ``ctx.clock`` (or takes a ``clock``
argument) for the time and for its sleeps instead of calling :mod:`time` and
:func:`asyncio.sleep` directly. At runtime that is :data:`SYSTEM_CLOCK`; tests pass
:class:`spyoncino.testing.clock.FakeClock` and move it forward, so a 60 s backoff takes no
real time and the test waits on what the code does, not on the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time, monotonic time and the two ways code waits on them."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (stored timestamps, ages, horizons)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals, rate windows)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` on this clock."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait for ``event`` at most ``timeout`` seconds on this clock; True if it was set."""
        ...


class SystemClock:
    """The real clock: :mod:`time` and the event loop."""

    # the C functions themselves, not methods that call them: the bus reads the clock twice a
    # message, and a Python-level wrapper made a message cost ~8 % more
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return event.is_set()


SYSTEM_CLOCK: Clock = SystemClock()
