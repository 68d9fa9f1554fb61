"""Tell systemd how the service is doing: READY, STATUS, a watchdog that means something, STOPPING.

The watchdog ping (``WATCHDOG=1``) is a statement that the pipeline works, not that the
process exists. It is sent from a thread, but only while two things hold:

* the event loop is responsive: a heartbeat task on the loop stamps the time every
  ``beat_interval``; a stale stamp means the loop is blocked (a blocking call, a deadlock);
* the last verdict the heartbeat computed *on the loop* found no hung stage:

  - a camera that says ``streaming`` has published a frame within ``frame_deadline``
    (a frame task that crashed or waits forever keeps ``streaming`` while the frame age grows);
  - a camera that is ``connecting``/``reconnecting``/``stalled`` is alive: it is an offline
    camera, and restarting the service would not bring it back (no restart loops);
  - a camera that is ``wedged`` is not: its driver hung in a call again and again and each
    time a thread was abandoned (``threads_abandoned``); a fresh process is what such a driver
    (a stuck V4L2/USB device, a libcamera pipeline) needs, and every retry leaks a thread;
  - the bounded executor runs a no-op within ``executor_deadline`` (all workers wedged in a
    driver or a detector means no frame is ever processed again);
  - a module that reports ``busy_age_s`` in its metrics (seconds its current blocking job has
    run; 0 when idle) stays under ``busy_deadline`` (a wedged detector).

When the pings stop, systemd waits ``WatchdogSec=`` after the last one, kills the service
with ``SIGABRT`` (``Result=watchdog``) and ``Restart=on-failure`` brings it back. A brief
hiccup (a loop blocked for a few seconds) does not restart anything: the pings resume as
soon as the verdict is healthy again, before the interval runs out.

Outside systemd (no ``NOTIFY_SOCKET``) every method is a no-op. ``sdnotify`` is imported
lazily so that importing this module costs nothing on a desktop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from spyoncino.schemas import topics

_log = structlog.get_logger("spyoncino.systemd")

# not SPYONCINO_-prefixed: those variables are configuration keys (core/config.py)
DEBUG_HOOKS_ENV = "DEBUG_SPYONCINO_HOOKS"


# -- what the notifier needs from the orchestrator ------------------------------------------------
class Supervised(Protocol):
    """The part of ``Orchestrator`` the notifier reads (all of it exists on the orchestrator)."""

    slots: list[Any]
    ready: bool
    executor: Any
    bus: Any


@dataclass(frozen=True, slots=True)
class CameraLiveness:
    """One camera input as the watchdog sees it."""

    camera_id: str
    state: str
    frame_age_s: float | None  # None: no frame yet
    alive: bool
    reason: str = ""


def camera_liveness(slots: list[Any], frame_deadline: float) -> list[CameraLiveness]:
    """Per-camera verdicts from the orchestrator's slots (inputs only, quarantined skipped).

    A quarantined or retrying input is the orchestrator's business (bad settings, a device that
    is not there yet); a restart would not help, so it never withholds the ping.
    """
    out: list[CameraLiveness] = []
    for slot in slots:
        if slot.camera_id is None or slot.state not in ("running", "starting"):
            continue
        try:
            m = slot.module.metrics()
        except Exception as e:  # a metrics bug must not kill the service
            out.append(CameraLiveness(slot.camera_id, "unknown", None, True, repr(e)))
            continue
        state = str(m.get("camera_state", "unknown"))
        raw_age = m.get("last_frame_age_s", -1.0)
        age = float(raw_age) if isinstance(raw_age, (int, float)) and raw_age >= 0 else None
        if state == "wedged":
            why = str(m.get("last_error") or "driver hung; restart needed")
            out.append(
                CameraLiveness(slot.camera_id, state, age, False, f"camera {slot.camera_id}: {why}")
            )
            continue
        if state != "streaming":
            # connecting, reconnecting with backoff, stalled (about to reconnect), ended: alive
            out.append(CameraLiveness(slot.camera_id, state, age, True))
            continue
        deadline = frame_deadline
        max_fps = m.get("max_fps")  # what the input reports, not its private settings
        if isinstance(max_fps, (int, float)) and max_fps > 0:
            deadline = max(deadline, 3.0 / max_fps)  # a deliberately slow camera
        if age is not None and age > deadline:
            out.append(
                CameraLiveness(
                    slot.camera_id,
                    state,
                    age,
                    False,
                    f"camera {slot.camera_id} streaming but no frame for {age:.1f}s",
                )
            )
        else:
            out.append(CameraLiveness(slot.camera_id, state, age, True))
    return out


def camera_states(slots: list[Any]) -> list[tuple[str, str]]:
    """(camera id, state) of every camera input: its camera state while the module runs,
    otherwise the orchestrator's view of the module (retrying, quarantined, stopped)."""
    out: list[tuple[str, str]] = []
    for slot in slots:
        if slot.camera_id is None:
            continue
        state = str(slot.state)
        if state in ("running", "starting"):
            try:
                state = str(slot.module.metrics().get("camera_state", "unknown"))
            except Exception:
                state = "unknown"
        out.append((slot.camera_id, state))
    return out


def busy_problems(slots: list[Any], busy_deadline: float) -> list[str]:
    """Modules whose current blocking job (``busy_age_s`` metric) has run too long."""
    problems = []
    for slot in slots:
        if slot.state != "running":
            continue
        try:
            busy = slot.module.metrics().get("busy_age_s")
        except Exception as e:
            _log.debug("metrics_failed", module=slot.instance, error=repr(e))
            continue
        if isinstance(busy, (int, float)) and busy > busy_deadline:
            problems.append(f"{slot.instance} busy for {busy:.1f}s")
    return problems


def watchdog_usec(environ: Mapping[str, str], pid: int | None = None) -> int | None:
    """The watchdog interval systemd expects from this process, in microseconds, or None.

    Follows sd_watchdog_enabled(3): ``WATCHDOG_USEC`` counts only when ``WATCHDOG_PID`` is
    unset or names this process.
    """
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec if usec > 0 else None


class SystemdNotifier:
    """sd_notify for the orchestrator: READY, STATUS, a liveness-gated WATCHDOG and STOPPING.

    Wiring (``spyoncino run``)::

        notifier = SystemdNotifier(orchestrator)
        await notifier.start()    # before orchestrator.run(); READY follows .ready
        try:
            await orchestrator.run()
        finally:
            await notifier.stop()     # STOPPING=1, thread joined
    """

    def __init__(
        self,
        orchestrator: Supervised,
        *,
        environ: Mapping[str, str] | None = None,
        frame_deadline: float = 30.0,
        executor_deadline: float = 60.0,
        busy_deadline: float = 120.0,
        loop_deadline: float | None = None,
        beat_interval: float | None = None,
        status_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self.orch = orchestrator
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        usec = watchdog_usec(env) if self.socket_path else None
        #: the systemd watchdog interval in seconds; None: no watchdog expected
        self.interval: float | None = usec / 1e6 if usec else None
        iv = self.interval
        # Ping at a third of the interval: the sd_notify(3) advice is "every half", a third
        # leaves room for scheduling jitter on a loaded Pi Zero.
        self.ping_interval = iv / 3 if iv else None
        self.loop_deadline = (
            loop_deadline if loop_deadline is not None else (iv / 2 if iv else 15.0)
        )
        self.beat_interval = beat_interval or min(1.0, self.loop_deadline / 5)
        self.frame_deadline = frame_deadline
        self.executor_deadline = executor_deadline
        self.busy_deadline = busy_deadline
        self.status_interval = status_interval
        self.debug_hooks = env.get(DEBUG_HOOKS_ENV) == "1"
        self._clock = clock
        self._sd: Any = None
        self._send_lock = threading.Lock()
        self._beat_at = 0.0
        self._problems: tuple[str, ...] = ("not started",)
        self._ready_sent = False
        self._stopping_sent = False
        self._last_status = ""
        self._status_at = 0.0
        self._armed: bool | None = None
        self._events_day = ""
        self._events_today = 0
        self._probe_since: float | None = None
        self._probe_task: asyncio.Future[Any] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._unsubs: list[Callable[[], None]] = []
        self._withheld_reason = ""
        self.pings_sent = 0
        #: ping decisions after READY that sent nothing (a test waits on these, not on time)
        self.pings_withheld = 0

    # -- public --------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    @property
    def watchdog_enabled(self) -> bool:
        return self.enabled and self.interval is not None

    async def start(self) -> None:
        """Connect, start the heartbeat task and the watchdog thread. No-op outside systemd."""
        if not self.enabled:
            return
        import socket

        import sdnotify

        self._sd = sdnotify.SystemdNotifier()
        if os.environ.get("NOTIFY_SOCKET") != self.socket_path:
            # an injected environment (tests, or a caller that scrubbed os.environ)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            path = self.socket_path or ""
            sock.connect("\0" + path[1:] if path.startswith("@") else path)
            self._sd.socket = sock
        loop = asyncio.get_running_loop()
        self._beat_at = self._clock()
        self._subscribe()
        self._beat_task = loop.create_task(self._heartbeat(), name="systemd:heartbeat")
        if self.watchdog_enabled:
            self._thread = threading.Thread(
                target=self._watchdog_thread, name="systemd-watchdog", daemon=True
            )
            self._thread.start()
        if self.debug_hooks:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGUSR2, self._debug_block_loop)
        _log.info(
            "systemd_notify_enabled",
            watchdog_s=self.interval,
            ping_every_s=self.ping_interval,
            loop_deadline_s=self.loop_deadline,
            frame_deadline_s=self.frame_deadline,
            debug_hooks=self.debug_hooks,
        )

    def ready(self) -> None:
        """Send READY=1 (once) with the first STATUS line; called by the heartbeat as well."""
        if not self.enabled or self._ready_sent:
            return
        self._ready_sent = True
        status = self.status_line()
        self._last_status = status
        self._status_at = self._clock()
        self._send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")
        _log.info("systemd_ready", status=status)

    def stopping(self) -> None:
        """Send STOPPING=1 (once); the watchdog stops judging cameras (they are being stopped)."""
        if not self.enabled or self._stopping_sent:
            return
        self._stopping_sent = True
        self._send("STOPPING=1\nSTATUS=stopping")
        _log.info("systemd_stopping")

    async def stop(self) -> None:
        """STOPPING=1, then end the heartbeat and the thread."""
        if not self.enabled:
            return
        self.stopping()
        for unsub in self._unsubs:
            with contextlib.suppress(Exception):
                unsub()
        self._unsubs.clear()
        if self._probe_task is not None:
            self._probe_task.cancel()
            self._probe_task = None
        if self._beat_task is not None:
            self._beat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat_task
            self._beat_task = None
        self._halt.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)
            self._thread = None
        sock = getattr(self._sd, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._sd = None
        if self.debug_hooks:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR2)

    def problems(self) -> tuple[str, ...]:
        """Why the watchdog would be withheld right now (empty: healthy)."""
        return self._problems

    # -- status line ------------------------------------------------------------------------
    def status_line(self) -> str:
        """One line for ``systemctl status``: cameras, armed state, events today."""
        cams = camera_states(list(self.orch.slots))
        streaming = [cid for cid, state in cams if state == "streaming"]
        parts = []
        if cams and len(streaming) == len(cams):
            parts.append(f"{len(cams)} camera{'s' if len(cams) != 1 else ''} streaming")
        elif cams:
            others = ", ".join(f"{cid} {state}" for cid, state in cams if state != "streaming")
            parts.append(f"{len(streaming)} of {len(cams)} cameras streaming ({others})")
        else:
            parts.append("no cameras")
        if self._armed is not None:
            parts.append("armed" if self._armed else "disarmed")
        self._roll_day()
        n = self._events_today
        parts.append(f"{n} event{'s' if n != 1 else ''} today")
        if self._problems and self._ready_sent and self._problems != ("not started",):
            parts.append("UNHEALTHY: " + "; ".join(self._problems))
        return ", ".join(parts)

    def _roll_day(self) -> None:
        today = time.strftime("%Y-%m-%d")
        if today != self._events_day:
            self._events_day = today
            self._events_today = 0

    def _subscribe(self) -> None:
        bus = getattr(self.orch, "bus", None)
        if bus is None:
            return

        async def on_event(msg: Any) -> None:
            self._roll_day()
            self._events_today += 1

        async def on_control(msg: Any) -> None:
            armed = getattr(msg.payload, "armed", None)
            if isinstance(armed, bool):
                self._armed = armed

        try:
            self._unsubs.append(
                bus.subscribe("event.*.started", on_event, policy="drop_oldest", module="systemd")
            )
            self._unsubs.append(
                bus.subscribe(
                    topics.CONTROL_STATE.name, on_control, policy="latest", module="systemd"
                )
            )
        except Exception as e:
            _log.warning("systemd_subscribe_failed", error=repr(e))

    # -- the loop side ------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            now = self._clock()
            self._problems = tuple(self._check(now))
            self._beat_at = now
            if not self._ready_sent and getattr(self.orch, "ready", False):
                self.ready()
            if self._is_stopping():
                self.stopping()
            elif self._ready_sent and now - self._status_at >= self.status_interval:
                status = self.status_line()
                self._status_at = now
                if status != self._last_status:
                    self._last_status = status
                    self._send(f"STATUS={status}")
            await asyncio.sleep(self.beat_interval)

    def _is_stopping(self) -> bool:
        if self._stopping_sent:
            return True
        return getattr(self.orch, "stopping", False) is True

    def _check(self, now: float) -> list[str]:
        if self._is_stopping():
            return []  # cameras are being stopped on purpose; only the loop beat matters
        if not getattr(self.orch, "ready", False):
            return []  # start-up: systemd's TimeoutStartSec covers it, not the watchdog
        slots = list(self.orch.slots)
        problems = [c.reason for c in camera_liveness(slots, self.frame_deadline) if not c.alive]
        problems += busy_problems(slots, self.busy_deadline)
        problems += self._probe_executor(now)
        return problems

    def _probe_executor(self, now: float) -> list[str]:
        executor = getattr(self.orch, "executor", None)
        if executor is None or not hasattr(executor, "run"):
            return []
        if self._probe_task is not None and self._probe_task.done():
            if not self._probe_task.cancelled() and self._probe_task.exception() is not None:
                _log.warning("executor_probe_failed", error=repr(self._probe_task.exception()))
            self._probe_task = None
            self._probe_since = None
        if self._probe_task is None:
            self._probe_since = now
            self._probe_task = asyncio.ensure_future(executor.run(_noop))
            return []
        since = self._probe_since if self._probe_since is not None else now
        if now - since > self.executor_deadline:
            return [f"executor ran nothing for {now - since:.1f}s (all workers busy or hung)"]
        return []

    def _debug_block_loop(self) -> None:
        """SIGUSR2 with DEBUG_SPYONCINO_HOOKS=1: block the loop, to prove the watchdog acts."""
        _log.warning("debug_hook_blocking_loop")
        time.sleep(3600)  # deliberately blocking: this is the fault being simulated

    # -- the thread side -----------------------------------------------------------------------
    def _watchdog_thread(self) -> None:
        assert self.ping_interval is not None
        while not self._halt.wait(self.ping_interval):
            self._maybe_ping()

    def _maybe_ping(self) -> bool:
        now = self._clock()
        beat_age = now - self._beat_at
        if not self._ready_sent:
            reason = ""  # before READY systemd does not watch; nothing to say
            ok = False
        elif beat_age > self.loop_deadline:
            reason = f"event loop unresponsive for {beat_age:.1f}s"
            ok = False
        elif self._problems:
            reason = "; ".join(self._problems)
            ok = False
        else:
            reason = ""
            ok = True
        if ok:
            self._send("WATCHDOG=1")
            self.pings_sent += 1
            if self._withheld_reason:
                _log.warning("watchdog_resumed", was=self._withheld_reason)
                self._withheld_reason = ""
        elif self._ready_sent:
            self.pings_withheld += 1
        if not ok and reason and reason != self._withheld_reason:
            # logged once per distinct reason, so a hang leaves one clear line in the journal
            self._withheld_reason = reason
            _log.error("watchdog_withheld", reason=reason, interval_s=self.interval)
        return ok

    # -- sending -----------------------------------------------------------------------------
    def _send(self, message: str) -> None:
        if self._sd is None:
            return
        # sdnotify encodes latin-1; a camera name outside it must not drop the message
        safe = message.encode("latin-1", "replace").decode("latin-1")
        with self._send_lock:
            try:
                self._sd.notify(safe)
            except Exception as e:
                _log.warning("sd_notify_failed", error=repr(e))


def _noop() -> None:
    return None


__all__ = [
    "CameraLiveness",
    "Supervised",
    "SystemdNotifier",
    "busy_problems",
    "camera_liveness",
    "camera_states",
    "watchdog_usec",
]
