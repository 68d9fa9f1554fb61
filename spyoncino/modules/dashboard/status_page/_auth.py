"""Passwords (scrypt), sessions, CSRF tokens and login rate limiting for the status page.

Sessions live in memory only: a restart logs everybody out, which is acceptable for a box on
a LAN and means no session secret ever touches the SD card.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

#: scrypt cost: 2**14 * 8 * 128 = 16 MiB of memory, about 50 ms here and 150 ms on a Pi 4.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_PREFIX = "scrypt"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), for ``status_page.password_hash``."""
    if not password:
        raise ValueError("the password must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"{_PREFIX}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def valid_hash(encoded: str) -> bool:
    try:
        _parse(encoded)
    except ValueError:
        return False
    return True


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _PREFIX:
        raise ValueError(
            "not a scrypt$n$r$p$salt$hash string (make one with `spyoncino hash-password`)"
        )
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError as e:
        raise ValueError("malformed scrypt hash") from e
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or n > 2**20:
        raise ValueError("scrypt parameters out of range")
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("scrypt salt or hash too short")
    return n, r, p, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against a ``hash_password`` string. Blocking (CPU)."""
    try:
        n, r, p, salt, digest = _parse(encoded)
    except ValueError:
        return False
    candidate = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=2**27
    )
    return hmac.compare_digest(candidate, digest)


def tokens_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass
class Session:
    sid: str
    csrf: str
    expires: float


class Sessions:
    """Session id -> CSRF token and expiry; sliding expiry, bounded count."""

    def __init__(self, ttl_s: float, max_sessions: int = 64) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._by_id: dict[str, Session] = {}

    def create(self) -> Session:
        self._expire()
        while len(self._by_id) >= self.max_sessions:
            oldest = min(self._by_id.values(), key=lambda s: s.expires)
            del self._by_id[oldest.sid]
        s = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(24), time.monotonic() + self.ttl_s
        )
        self._by_id[s.sid] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        now = time.monotonic()
        if s.expires < now:
            del self._by_id[sid]
            return None
        s.expires = now + self.ttl_s
        return s

    def drop(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def clear(self) -> None:
        self._by_id.clear()

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [k for k, v in self._by_id.items() if v.expires < now]:
            del self._by_id[sid]

    def __len__(self) -> int:
        return len(self._by_id)


class LoginLimiter:
    """At most ``max_failures`` failed logins per client in ``window_s``; then 429 until the
    oldest failure leaves the window. A global ceiling (``global_factor`` x that) stops a
    distributed guesser too, but never a client that logged in successfully before (at most
    ``trusted_max`` remembered), so an attacker's flood cannot lock the owner out.

    An attempt is counted when it starts (``acquire``, before the slow password hash), not
    when it has failed: concurrent guesses are limited exactly like serial ones. ``succeeded``
    takes the attempt back.
    """

    def __init__(
        self, max_failures: int, window_s: float, global_factor: int = 4, trusted_max: int = 256
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.global_max = max_failures * global_factor
        self.trusted_max = trusted_max
        self._fails: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._trusted: OrderedDict[str, None] = OrderedDict()

    def _trim(self, q: deque[float], now: float) -> None:
        while q and q[0] <= now - self.window_s:
            q.popleft()

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        now = time.monotonic()
        self._trim(self._all, now)
        waits = [0.0]
        q = self._fails.get(client)
        if q is not None:
            self._trim(q, now)
            if len(q) >= self.max_failures:
                waits.append(q[0] + self.window_s - now)
            if not q:
                del self._fails[client]
        if len(self._all) >= self.global_max and client not in self._trusted:
            waits.append(self._all[0] + self.window_s - now)
        return max(waits)

    def acquire(self, client: str) -> float | None:
        """Count one attempt of ``client`` now; None (and nothing counted) when over a limit.

        Synchronous on purpose: no other request can run between the check and the count.
        """
        if self.retry_after(client) > 0:
            return None
        return self.failed(client)

    def failed(self, client: str) -> float:
        """Count a failed attempt of ``client``; returns its timestamp."""
        now = time.monotonic()
        self._fails.setdefault(client, deque()).append(now)
        self._all.append(now)
        if len(self._fails) > 4096:  # bound memory against address spraying
            self._fails.pop(next(iter(self._fails)))
        return now

    def succeeded(self, client: str, attempt: float | None = None) -> None:
        """``client`` logged in: forget its failures (and ``attempt``) and trust it."""
        q = self._fails.pop(client, None)
        for t in q or ():
            with contextlib.suppress(ValueError):
                self._all.remove(t)
        if attempt is not None and q is None:
            with contextlib.suppress(ValueError):
                self._all.remove(attempt)
        self._trusted[client] = None
        self._trusted.move_to_end(client)
        while len(self._trusted) > self.trusted_max:
            self._trusted.popitem(last=False)
