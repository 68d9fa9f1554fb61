"""How tests wait: on the thing they need, never on a fixed sleep.

- :class:`Log` is a list that wakes whoever waits for it to hold enough (test doubles record
  into one, tests ``await log.wait_for(n)``): an event, not a poll.
- :func:`until` polls a condition with a bound. Use it only for state that has no event to wait
  on (a row in SQLite, a file on disk, a counter inside the module under test); say so where
  it is used.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def until(
    cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition", interval: float = 0.01
) -> Any:
    """Wait until ``cond()`` (or the awaitable it returns) is truthy and return that value;
    fail the test after ``timeout`` seconds, naming ``what`` was not met."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        # real time on purpose: the polling interval, for state that fires no event
        await asyncio.sleep(interval)


class Log(list[T]):
    """A list that wakes its waiters when something is appended."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        super().__init__(items)
        self._changed: asyncio.Event | None = None

    def append(self, item: T) -> None:
        super().append(item)
        if self._changed is not None:
            self._changed.set()

    async def wait_for(
        self, count: int = 1, pred: Callable[[T], bool] | None = None, timeout: float = 5.0
    ) -> list[T]:
        """Wait until at least ``count`` items (matching ``pred``) are in; return those."""

        def matching() -> list[T]:
            return [x for x in self if pred is None or pred(x)]

        try:
            async with asyncio.timeout(timeout):
                while len(found := matching()) < count:
                    if self._changed is None or self._changed.is_set():
                        self._changed = asyncio.Event()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{count} item(s) not recorded within {timeout} s; have {len(self)}, "
                f"the last: {list(self)[-3:]!r}"
            ) from None
        return found
