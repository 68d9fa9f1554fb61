"""The systemd notifier against a fake NOTIFY_SOCKET and a real orchestrator with real inputs.

The socket is an abstract unix datagram socket the test binds and reads from a thread, so the
arrival time of every message is known even while the event loop is blocked on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from spyoncino.core.config import ConfigService, Layer, build_app_model
from spyoncino.core.contracts import BaseModule
from spyoncino.core.orchestrator import Orchestrator
from spyoncino.core.systemd import SystemdNotifier, camera_liveness, watchdog_usec
from spyoncino.helpers.camera import CameraInput, RawFrame, SourceError
from tests.support.wait import until

LUMA = np.zeros((48, 64), dtype=np.uint8)


class NotifySocket:
    """A stand-in for systemd's notification socket: records (monotonic time, message)."""

    def __init__(self) -> None:
        self.address = f"@spyoncino-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._halt.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode("latin-1")))

    def times(self, line: str) -> list[float]:
        return [t for t, m in self.messages if line in m.split("\n")]

    def statuses(self) -> list[str]:
        return [
            part[len("STATUS=") :]
            for _, m in self.messages
            for part in m.split("\n")
            if part.startswith("STATUS=")
        ]

    async def wait_for(self, line: str, timeout: float = 5.0) -> float:
        # polled: the reader thread records messages, it fires no event on the loop
        found = await until(lambda: self.times(line), timeout, f"{line!r} in {self.messages!r}")
        return float(found[0])

    async def pings_after(self, t: float, count: int, timeout: float = 10.0) -> list[float]:
        """Wait for ``count`` WATCHDOG=1 pings after monotonic time ``t``; return them all."""
        return list(
            await until(
                lambda: len(p := [x for x in self.times("WATCHDOG=1") if x > t]) >= count and p,
                timeout,
                f"{count} pings after {t}: {self.messages!r}",
            )
        )

    def close(self) -> None:
        self._halt.set()
        self._thread.join(1.0)
        self.sock.close()


# -- real inputs whose source misbehaves in a chosen way ------------------------------------------
class OkInput(CameraInput):
    """A camera that delivers a frame every 20 ms."""

    name: ClassVar[str] = "okcam"

    @classmethod
    def accepts(cls, source: str) -> bool:
        return source.startswith("ok://")

    def open(self) -> None:
        pass

    def read(self) -> RawFrame:
        time.sleep(0.02)
        return RawFrame(width=64, height=48, image=LUMA, luma=LUMA)

    def close(self) -> None:
        pass


class HangInput(OkInput):
    """Delivers frames until the test flips ``hang``; then ``read`` never returns.

    The stall timeout is long, as with a driver that blocks inside the read: the camera
    still says ``streaming`` while its frame age grows.
    """

    name: ClassVar[str] = "hangcam"
    hang = threading.Event()
    release = threading.Event()
    hung_at: ClassVar[list[float]] = []

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.stall_timeout = 600.0

    @classmethod
    def accepts(cls, source: str) -> bool:
        return source.startswith("hang://")

    def read(self) -> RawFrame:
        if self.hang.is_set():
            self.hung_at.append(time.monotonic())
            self.release.wait(30)
            raise SourceError("released by the test")
        return super().read()


class OfflineInput(OkInput):
    """A camera that is unplugged: every open fails, the input reconnects with backoff."""

    name: ClassVar[str] = "offcam"
    backoff_base: ClassVar[float] = 0.05
    backoff_cap: ClassVar[float] = 0.3

    @classmethod
    def accepts(cls, source: str) -> bool:
        return source.startswith("offline://")

    def open(self) -> None:
        time.sleep(0.05)
        raise SourceError("connection refused")


class WedgedInput(OkInput):
    """A camera whose driver hangs in ``open`` for good: every attempt costs a thread."""

    name: ClassVar[str] = "wedgedcam"
    abandon_after: ClassVar[float] = 0.1
    backoff_base: ClassVar[float] = 0.05
    backoff_cap: ClassVar[float] = 0.3
    release = threading.Event()  # set only at teardown, to let the leaked threads go

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.open_timeout = 0.2

    @classmethod
    def accepts(cls, source: str) -> bool:
        return source.startswith("wedged://")

    def open(self) -> None:
        self.release.wait()


REGISTRY: dict[str, type[BaseModule]] = {
    "okcam": OkInput,
    "hangcam": HangInput,
    "offcam": OfflineInput,
    "wedgedcam": WedgedInput,
}


def make_orchestrator(cameras: dict[str, str], workers: int = 2) -> Orchestrator:
    data = {
        "cameras": {cid: {"source": src} for cid, src in cameras.items()},
        "runtime": {"workers": workers, "health_interval": 60},
        "bus": {"status_interval": 0},
    }
    model = build_app_model(REGISTRY)
    return Orchestrator(ConfigService(model, [Layer("test", data)]), REGISTRY)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    ns = NotifySocket()
    yield ns
    ns.close()


def env(ns: NotifySocket, interval_s: float | None) -> dict[str, str]:
    out = {"NOTIFY_SOCKET": ns.address}
    if interval_s is not None:
        out["WATCHDOG_USEC"] = str(int(interval_s * 1e6))
    return out


@contextlib.asynccontextmanager
async def running(orch: Orchestrator, notifier: SystemdNotifier) -> AsyncIterator[None]:
    """The order ``spyoncino run`` uses: notifier first, so READY follows the orchestrator."""
    await notifier.start()
    await orch.start()
    try:
        yield
    finally:
        HangInput.release.set()
        WedgedInput.release.set()
        orch.request_stop()
        await orch.stop()
        await notifier.stop()


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# -- tests ---------------------------------------------------------------------------------------
async def withheld(notifier: SystemdNotifier, count: int = 2) -> None:
    """Wait until the watchdog thread has decided ``count`` more times not to ping: the
    window a test judges spans ping opportunities, whatever the machine's load."""
    first = notifier.pings_withheld
    # polled: the watchdog thread counts its decisions, it fires no event on the loop
    await until(lambda: notifier.pings_withheld >= first + count, 10.0, "pings withheld")


async def test_ready_status_and_pings_at_most_half_the_interval(
    notify_socket: NotifySocket,
) -> None:
    interval = 1.5
    orch = make_orchestrator({"front": "ok://a", "back": "ok://b", "side": "ok://c"})
    notifier = SystemdNotifier(orch, environ=env(notify_socket, interval), status_interval=0.2)
    async with running(orch, notifier):
        ready_at = await notify_socket.wait_for("READY=1")
        pings = await notify_socket.pings_after(ready_at, 5)
        await notify_socket.wait_for("STATUS=3 cameras streaming, 0 events today")
        # the first ping comes within half the interval of READY, then at most half apart
        assert pings[0] - ready_at <= interval / 2
        assert max(gaps(pings)) <= interval / 2, gaps(pings)
        assert "3 cameras streaming, 0 events today" in notify_socket.statuses()


async def test_pings_stop_while_the_event_loop_is_blocked_and_resume(
    notify_socket: NotifySocket,
) -> None:
    interval = 1.0
    orch = make_orchestrator({"front": "ok://a"})
    notifier = SystemdNotifier(orch, environ=env(notify_socket, interval))
    async with running(orch, notifier):
        await notify_socket.wait_for("WATCHDOG=1")
        blocked_at = time.monotonic()
        time.sleep(2.5)  # the fault under test: a blocking call on the loop
        unblocked_at = time.monotonic()
        await notify_socket.pings_after(unblocked_at, 1)
        pings = notify_socket.times("WATCHDOG=1")
        during = [t for t in pings if blocked_at + interval <= t <= unblocked_at]
        assert during == [], f"pings while the loop was blocked: {during}"
        # the last ping before the silence leaves systemd less than the interval
        before = [t for t in pings if t < blocked_at + interval]
        assert before
        assert unblocked_at - before[-1] > interval
        assert [t for t in pings if t > unblocked_at], "pings did not resume"


async def test_pings_stop_when_a_camera_frame_loop_hangs(notify_socket: NotifySocket) -> None:
    interval = 1.0
    frame_deadline = 0.5
    HangInput.hang.clear()
    HangInput.release.clear()
    HangInput.hung_at.clear()
    orch = make_orchestrator({"front": "ok://a", "gate": "hang://b"})
    notifier = SystemdNotifier(
        orch, environ=env(notify_socket, interval), frame_deadline=frame_deadline
    )
    async with running(orch, notifier):
        ready_at = await notify_socket.wait_for("READY=1")
        await notify_socket.pings_after(ready_at, 2)
        HangInput.hang.set()
        await until(lambda: HangInput.hung_at, what="the read hung")
        hung_at = HangInput.hung_at[0]
        await until(lambda: any("gate" in p for p in notifier.problems()), what="gate judged")
        await withheld(notifier)
        pings = notify_socket.times("WATCHDOG=1")
        late = [t for t in pings if t > hung_at + frame_deadline + interval]
        assert late == [], f"pings went on after the frame loop hung: {late}"
        gate = next(s for s in orch.slots if s.camera_id == "gate")
        assert gate.module.metrics()["camera_state"] == "streaming"
        assert any("gate" in p for p in notifier.problems())
        assert "UNHEALTHY" in notifier.status_line()


async def test_pings_continue_while_a_camera_is_only_reconnecting(
    notify_socket: NotifySocket,
) -> None:
    interval = 1.5
    orch = make_orchestrator({"front": "ok://a", "garage": "offline://b"})
    notifier = SystemdNotifier(
        orch, environ=env(notify_socket, interval), frame_deadline=0.5, status_interval=0.2
    )
    async with running(orch, notifier):
        ready_at = await notify_socket.wait_for("READY=1")
        garage = next(s for s in orch.slots if s.camera_id == "garage")
        # polled: the reconnect count is the input's own state
        await until(lambda: garage.module.reconnects >= 3, 10.0, "three reconnects")
        pings = await notify_socket.pings_after(ready_at, 4)
        assert max(gaps(pings)) <= interval / 2
        assert notifier.problems() == ()
        assert any("garage reconnecting" in s for s in notify_socket.statuses())


async def test_pings_stop_when_a_camera_driver_keeps_hanging_in_open(
    notify_socket: NotifySocket,
) -> None:
    interval = 1.0
    WedgedInput.release.clear()
    orch = make_orchestrator({"front": "ok://a", "cellar": "wedged://b"})
    notifier = SystemdNotifier(orch, environ=env(notify_socket, interval), status_interval=0.2)
    async with running(orch, notifier):
        await notify_socket.wait_for("READY=1")
        cellar = next(s for s in orch.slots if s.camera_id == "cellar")
        await until(
            lambda: cellar.module.metrics()["camera_state"] == "wedged", 10.0, "cellar wedged"
        )
        wedged_at = time.monotonic()
        await until(lambda: any("cellar" in p for p in notifier.problems()), what="judged")
        await withheld(notifier)
        # polled: the count of abandoned open() threads is the input's own state
        await until(lambda: cellar.module.metrics()["threads_abandoned"] >= 3, 10.0, "3 threads")
        late = [t for t in notify_socket.times("WATCHDOG=1") if t > wedged_at + interval]
        assert late == [], f"pings went on for a wedged camera: {late}"
        assert any(
            p.startswith("camera cellar: driver hung in open() ") and p.endswith("restart needed")
            for p in notifier.problems()
        ), notifier.problems()
        assert cellar.module.metrics()["threads_abandoned"] >= 3
        assert "cellar wedged" in notifier.status_line()
        assert "UNHEALTHY: camera cellar: driver hung" in notifier.status_line()


async def test_pings_stop_when_every_executor_worker_is_wedged(notify_socket: NotifySocket) -> None:
    interval = 1.0
    orch = make_orchestrator({"front": "offline://a"}, workers=1)
    notifier = SystemdNotifier(orch, environ=env(notify_socket, interval), executor_deadline=0.5)
    release = threading.Event()
    async with running(orch, notifier):
        await notify_socket.wait_for("WATCHDOG=1")
        wedge = asyncio.ensure_future(orch.executor.run(release.wait, 30))
        wedged_at = time.monotonic()
        await until(lambda: any("executor" in p for p in notifier.problems()), what="judged")
        await withheld(notifier)
        late = [t for t in notify_socket.times("WATCHDOG=1") if t > wedged_at + 0.5 + interval]
        assert late == []
        assert any("executor" in p for p in notifier.problems())
        release.set()
        await wedge


async def test_stopping_is_sent_at_shutdown(notify_socket: NotifySocket) -> None:
    orch = make_orchestrator({"front": "ok://a"})
    notifier = SystemdNotifier(orch, environ=env(notify_socket, 1.0))
    async with running(orch, notifier):
        await notify_socket.wait_for("READY=1")
    await notify_socket.wait_for("STOPPING=1", timeout=2.0)
    ready = notify_socket.times("READY=1")
    stopping = notify_socket.times("STOPPING=1")
    assert len(ready) == 1
    assert len(stopping) == 1
    assert stopping[0] > ready[0]
    assert notifier._thread is None


async def test_events_and_armed_state_reach_the_status_line(notify_socket: NotifySocket) -> None:
    from spyoncino.schemas.control import ControlState

    orch = make_orchestrator({"front": "ok://a"})
    notifier = SystemdNotifier(orch, environ=env(notify_socket, None), status_interval=0.1)
    async with running(orch, notifier):
        await notify_socket.wait_for("READY=1")
        await orch.bus.publish("control.state", ControlState(armed=True))
        from spyoncino.schemas.events import EventNotice

        for i in range(2):
            now = time.time()
            await orch.bus.publish(
                "event.object.started",
                EventNotice(
                    event_id=f"e{i}",
                    camera_id="front",
                    kind="object",
                    phase="started",
                    labels=("person",),
                    top_score=0.9,
                    started_at=now,
                    updated_at=now,
                ),
            )
        await notify_socket.wait_for("STATUS=1 camera streaming, armed, 2 events today")
        # no watchdog configured: READY and STATUS only
        assert notify_socket.times("WATCHDOG=1") == []


async def test_outside_systemd_everything_is_a_no_op() -> None:
    orch = make_orchestrator({"front": "ok://a"})
    notifier = SystemdNotifier(orch, environ={"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert not notifier.watchdog_enabled
    await notifier.start()
    notifier.ready()
    notifier.stopping()
    await notifier.stop()
    assert notifier._thread is None
    assert notifier.pings_sent == 0


def test_watchdog_usec_follows_watchdog_pid() -> None:
    assert watchdog_usec({"WATCHDOG_USEC": "30000000"}) == 30_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=1) == 30_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, pid=1) is None
    assert watchdog_usec({"WATCHDOG_USEC": "zero"}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_usec({}) is None


def test_camera_liveness_treats_only_a_silent_streaming_camera_as_hung() -> None:
    class Fake:
        def __init__(self, state: str, age: float) -> None:
            self._m = {"camera_state": state, "last_frame_age_s": age, "last_error": ""}

        def metrics(self) -> dict[str, Any]:
            return self._m

    class SlotStub:
        def __init__(self, cid: str, state: str, age: float, slot_state: str = "running") -> None:
            self.camera_id = cid
            self.instance = f"x:{cid}"
            self.module = Fake(state, age)
            self.state = slot_state

    verdicts = {
        c.camera_id: c.alive
        for c in camera_liveness(
            [
                SlotStub("a", "streaming", 1.0),
                SlotStub("b", "streaming", 99.0),
                SlotStub("c", "reconnecting", 99.0),
                SlotStub("d", "connecting", -1.0),
                SlotStub("e", "stalled", 99.0),
                SlotStub("f", "streaming", 99.0, slot_state="quarantined"),
                SlotStub("g", "wedged", 99.0),
            ],
            frame_deadline=30.0,
        )
    }
    assert verdicts == {"a": True, "b": False, "c": True, "d": True, "e": True, "g": False}
