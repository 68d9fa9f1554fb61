"""The upload budget (``max_kbps``): one token bucket every upload's bytes pass through.

The bucket starts empty and fills at the budget's rate up to ``burst_s`` seconds of budget;
taking more than it holds goes into debt that later takes wait out, so over any window longer
than a few chunks the rate is the budget. The bytes are metered where they leave: the HTTP
client reads the request body from a worker thread (aiohttp reads file-like bodies in the
default executor), and ``ThrottledBody`` makes that read wait for its tokens. Reads on the event
loop's thread (botocore hashing the body to sign it) are not metered: nothing is sent then.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

#: bytes one read hands the HTTP client: small enough to keep the rate smooth at low budgets
CHUNK = 16 * 1024


class TokenBucket:
    """A thread-safe token bucket in bytes per second; ``clock`` is injectable for tests."""

    def __init__(
        self,
        rate_bytes_s: float,
        *,
        burst_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = float(rate_bytes_s)
        self.capacity = max(float(CHUNK), self.rate * burst_s)
        self.clock = clock
        self._tokens = 0.0
        self._at = clock()
        self._lock = threading.Lock()

    def reserve(self, n: int) -> float:
        """Take ``n`` bytes now; the seconds the caller must wait before sending them."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= n
            return max(0.0, -self._tokens / self.rate)


class Cancelled(OSError):
    """The upload this body belongs to was given up (timeout, stop)."""


class ThrottledBody(io.RawIOBase):
    """A request body read through ``bucket`` when read off the event loop's thread."""

    def __init__(
        self,
        data: bytes,
        bucket: TokenBucket | None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        self._buf = memoryview(data)
        self._pos = 0
        self._bucket = bucket
        self._sleep = sleep
        self._loop_thread = threading.get_ident()
        self.cancelled = threading.Event()
        self.sent = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._buf)}[whence]
        self._pos = max(0, min(len(self._buf), base + offset))
        return self._pos

    def __len__(self) -> int:
        return len(self._buf)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.cancelled.is_set():
            raise Cancelled("upload given up")
        metered = threading.get_ident() != self._loop_thread
        n = min(len(b), len(self._buf) - self._pos, CHUNK if metered else len(b))
        if n <= 0:
            return 0
        if metered and self._bucket is not None:
            wait = self._bucket.reserve(n)
            while wait > 0:  # in steps, so that a cancelled upload frees its thread soon
                step = min(wait, 0.25)
                self._sleep(step)
                wait -= step
                if self.cancelled.is_set():
                    raise Cancelled("upload given up")
        b[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        if metered:
            self.sent += n
        return n
