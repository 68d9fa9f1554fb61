"""The orchestrator: discovery, lifecycle, health, reconfiguration and quarantine.

It knows modules only through the ``spyoncino.modules`` entry-point group and the
``BaseModule`` contract; it never names a feature.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import structlog

from spyoncino.core import malloc
from spyoncino.core.bus import Bus, Message
from spyoncino.core.config import (
    AppConfig,
    ConfigError,
    ConfigService,
    dump_config,
    module_view,
    redact_url,
)
from spyoncino.core.contracts import (
    START_ORDER,
    BaseModule,
    BoundedExecutor,
    ModuleConfigError,
    ModuleContext,
    ModuleNotReady,
)
from spyoncino.schemas import topics
from spyoncino.schemas.control import ConfigRejected, ConfigSnapshot, ConfigUpdate
from spyoncino.schemas.status import HealthReport, ModuleHealth

ENTRY_POINT_GROUP = "spyoncino.modules"
_log = structlog.get_logger("spyoncino.orchestrator")


def discover(
    group: str = ENTRY_POINT_GROUP, *, distribution: str | None = None
) -> dict[str, type[BaseModule]]:
    """Load every module class registered under ``group``; broken ones are logged and skipped.

    ``distribution``: only the modules that package registers (``"spyoncino"``: ours, for our
    own docs, so a third-party module installed next to us changes none of them).
    """
    found: dict[str, type[BaseModule]] = {}
    for ep in entry_points(group=group):
        if distribution is not None and (ep.dist is None or ep.dist.name != distribution):
            continue
        try:
            cls = ep.load()
        except Exception as exc:
            _log.error(
                "module_import_failed", entry_point=ep.name, target=ep.value, error=repr(exc)
            )
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModule)):
            _log.error("module_not_a_basemodule", entry_point=ep.name, target=ep.value)
            continue
        cls.name = ep.name
        found[ep.name] = cls
    return found


def input_for(
    registry: Mapping[str, type[BaseModule]], app: AppConfig, source: str
) -> type[BaseModule] | None:
    """The first enabled per-camera module (by name) that reads ``source``."""
    for name in sorted(registry):
        cls = registry[name]
        section = getattr(app, name, None)
        if cls.per_camera and cls.accepts(source) and getattr(section, "enabled", True):
            return cls
    return None


def plan(
    registry: Mapping[str, type[BaseModule]], app: AppConfig
) -> list[tuple[str, type[BaseModule], str | None]]:
    """Which module instances ``app`` asks for: (instance name, class, camera id)."""
    wanted: list[tuple[str, type[BaseModule], str | None]] = []
    for name, cls in sorted(registry.items()):
        section = getattr(app, name, None)
        if cls.per_camera or not getattr(section, "enabled", True):
            continue
        wanted.append((name, cls, None))
    errors: list[str] = []
    for cid, cam in app.cameras.items():
        if not cam.enabled:
            continue
        reader = input_for(registry, app, cam.source)
        if reader is None:
            errors.append(
                f"cameras.{cid}.source: no installed input reads {redact_url(cam.source)!r} "
                "(file path, rtsp://, /dev/video*, csi://N)"
            )
            continue
        wanted.append((f"{reader.name}:{cid}", reader, cid))
    if errors:
        raise ConfigError(errors)
    return wanted


@dataclass
class Slot:
    """One running module instance and its lifecycle bookkeeping."""

    instance: str
    cls: type[BaseModule]
    module: BaseModule
    camera_id: str | None = None
    state: str = "created"  # created, starting, running, retrying, quarantined, stopped
    attempts: int = 0
    last_error: str | None = None
    retry_task: asyncio.Task[None] | None = None

    @property
    def order(self) -> int:
        return START_ORDER.get(self.cls.category, 5)


@dataclass
class RunSummary:
    """What happened during a run; printed when a replay ends."""

    events: Counter[str] = field(default_factory=Counter)
    artifacts: Counter[str] = field(default_factory=Counter)
    notifications: Counter[str] = field(default_factory=Counter)
    frames: Counter[str] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.monotonic)
    artifact_paths: list[str] = field(default_factory=list)


class Orchestrator:
    def __init__(
        self,
        config: ConfigService,
        registry: Mapping[str, type[BaseModule]],
        *,
        bus: Bus | None = None,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
    ) -> None:
        self.config = config
        self.registry = dict(registry)
        app = config.current
        self.bus = bus or Bus(
            status_interval=app.bus.status_interval,
            default_maxsize=app.bus.queue_size,
            high_watermark=app.bus.high_watermark,
        )
        self.executor = BoundedExecutor(workers=app.runtime.workers)
        self.slots: list[Slot] = []
        self.summary = RunSummary()
        self._stop = asyncio.Event()
        #: a camera was added while running (first-run page, API): the run no longer ends
        #: when the file sources do, the owner is using the box
        self.cameras_added_live = False
        self._health_task: asyncio.Task[None] | None = None
        self._trim_task: asyncio.Task[None] | None = None
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._unsubs: list[Any] = []
        self._lock = asyncio.Lock()
        #: every module's ``ctx.started``: set once all of them have started
        self.started = asyncio.Event()
        self.ready = False
        #: a worker thread did not finish on stop: the process must exit hard
        self.stuck = False
        #: hooks run after start and before stop (systemd notifier, mDNS, ...)
        self.on_started: list[Callable[[], Awaitable[None]]] = []
        self.on_stopping: list[Callable[[], Awaitable[None]]] = []

    # -- building ----------------------------------------------------------------------------
    def _wanted(self, app: AppConfig) -> list[tuple[str, type[BaseModule], str | None]]:
        return plan(self.registry, app)

    def _make(
        self,
        instance: str,
        cls: type[BaseModule],
        camera_id: str | None,
        app: AppConfig | None = None,
    ) -> Slot:
        ctx = ModuleContext(
            bus=self.bus,
            executor=self.executor,
            app=app or self.config.current,
            instance=instance,
            camera_id=camera_id,
            pipeline_pending=self.frame_work_pending,
            started=self.started,
        )
        return Slot(instance=instance, cls=cls, module=cls(ctx), camera_id=camera_id)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        runtime = self.config.current.runtime
        # before any module starts a thread: arenas are made per thread as they first allocate
        tuned = malloc.tune(
            arena_max=runtime.malloc_arena_max,
            mmap_threshold=runtime.malloc_mmap_threshold_kb * 1024,
        )
        if tuned:
            _log.debug("malloc_tuned", **tuned)
        self._watch_summary()
        self.bus.start_telemetry()
        self._unsubs.append(
            self.bus.subscribe(
                topics.CONFIG_UPDATE.name, self._on_config_update, module="orchestrator"
            )
        )
        for instance, cls, cid in self._wanted(self.config.current):
            self.slots.append(self._make(instance, cls, cid))
        self.slots.sort(key=lambda s: (s.order, s.instance))
        for slot in self.slots:
            await self._configure(slot, self.config.current)
        for slot in self.slots:
            if slot.state != "quarantined":
                await self._start_slot(slot)
        self.ready = True
        self.started.set()
        self._health_task = asyncio.get_running_loop().create_task(
            self._health_loop(), name="orchestrator:health"
        )
        if malloc.available():
            self._trim_task = asyncio.get_running_loop().create_task(
                self._trim_loop(), name="orchestrator:malloc-trim"
            )
        await self.publish_health()
        for hook in self.on_started:
            await hook()
        _log.info(
            "started",
            modules=[s.instance for s in self.slots if s.state == "running"],
            quarantined=[s.instance for s in self.slots if s.state == "quarantined"],
            sources=self.config.sources,
        )

    async def _configure(self, slot: Slot, app: AppConfig) -> None:
        slot.module.ctx.app = app
        try:
            await slot.module.configure(app)
        except ModuleConfigError as e:
            self._quarantine(slot, str(e))
        except Exception as e:
            self._quarantine(slot, f"configure failed: {e!r}")

    def _quarantine(self, slot: Slot, reason: str) -> None:
        slot.state = "quarantined"
        slot.last_error = reason
        slot.module.set_state("quarantined", "quarantined", reason)
        _log.error("module_quarantined", module=slot.instance, reason=reason)

    async def _start_slot(self, slot: Slot) -> None:
        slot.state = "starting"
        slot.attempts += 1
        try:
            await slot.module.start()
        except ModuleConfigError as e:
            with contextlib.suppress(Exception):
                await slot.module.stop()
            self._quarantine(slot, str(e))
            return
        except Exception as e:
            slot.last_error = str(e) if isinstance(e, ModuleNotReady) else repr(e)
            with contextlib.suppress(Exception):
                await slot.module.stop()
            if slot.attempts >= self.config.current.runtime.max_start_attempts:
                self._quarantine(slot, f"failed to start {slot.attempts} times: {slot.last_error}")
                return
            delay = min(self._retry_cap, self._retry_base * 2 ** (slot.attempts - 1))
            delay *= 0.75 + random.random() / 2
            slot.state = "retrying"
            slot.module.set_state("degraded", f"retrying in {delay:.1f}s", slot.last_error)
            _log.warning(
                "module_start_failed",
                module=slot.instance,
                attempt=slot.attempts,
                retry_in_s=round(delay, 2),
                error=slot.last_error,
            )
            slot.retry_task = asyncio.get_running_loop().create_task(self._retry(slot, delay))
            return
        slot.state = "running"
        if slot.attempts > 1 or slot.module.health().state == "starting":
            slot.module.set_state("ok")

    async def _retry(self, slot: Slot, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._stop.is_set() and slot.state == "retrying":
            await self._start_slot(slot)

    async def stop(self) -> None:
        """Stop in data-path order within ``runtime.shutdown_budget_s``.

        Inputs first, then the processing stage, then the event stage (an event source before
        the media makers: ``stop_rank``), then dashboards, outputs and storage last. Before
        each stage stops, what the stages before it published is let through (bounded), so
        an event closed at stop still reaches its GIF, clip and index row. Each module learns
        its deadline (``stop_deadline``) and persists what it cannot finish by then; a later
        stage always keeps a share of the budget.
        """
        self._stop.set()
        loop = asyncio.get_running_loop()
        runtime = self.config.current.runtime
        deadline = loop.time() + runtime.shutdown_budget_s
        for hook in self.on_stopping:
            try:
                await hook()
            except Exception as e:
                _log.error("stop_hook_failed", error=repr(e))
        for task in (self._health_task, self._trim_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        stages: list[list[Slot]] = []
        for slot in sorted(self.slots, key=lambda s: (-s.order, -s.cls.stop_rank, s.instance)):
            if slot.retry_task is not None:
                slot.retry_task.cancel()
            if slot.state in ("stopped", "quarantined") and slot.retry_task is None:
                continue
            key = (slot.order, slot.cls.stop_rank)
            if stages and (stages[-1][0].order, stages[-1][0].cls.stop_rank) == key:
                stages[-1].append(slot)
            else:
                stages.append([slot])
        # what every later stage (and the executor) is sure to get, even after a slow one
        share = min(1.0, runtime.shutdown_budget_s / (2 * (len(stages) + 1)))
        for i, stage in enumerate(stages):
            later = share * (len(stages) - i)
            if i:  # at most half of what this stage has: its modules need time to stop
                await self._settle(loop.time() + max(0.0, deadline - later - loop.time()) / 2)
            for slot in stage:
                until = min(deadline - later, loop.time() + runtime.stop_timeout)
                slot.module.stop_deadline = until
                try:
                    await asyncio.wait_for(
                        slot.module.stop(), timeout=max(0.1, until - loop.time())
                    )
                except TimeoutError:
                    _log.error(
                        "module_stop_timeout",
                        module=slot.instance,
                        timeout_s=round(max(0.1, until - loop.time()), 2),
                    )
                except Exception as e:
                    _log.error("module_stop_failed", module=slot.instance, error=repr(e))
                slot.state = "stopped"
        for unsub in self._unsubs:
            unsub()
        await self.bus.close()
        wait_s = max(share, deadline - loop.time())
        try:
            # a native call that never returns (a wedged driver) must not hang the exit
            await asyncio.wait_for(loop.run_in_executor(None, self.executor.shutdown), wait_s)
        except TimeoutError:
            self.stuck = True
            _log.error("executor_stuck", timeout_s=round(wait_s, 2))
        _log.info("stopped", took_s=round(runtime.shutdown_budget_s - (deadline - loop.time()), 2))

    async def _settle(self, until: float) -> None:
        """Let the modules still running take what is queued for them (bounded by ``until``)."""
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            if self.bus.idle(exclude=("status.#",)):
                await asyncio.sleep(0.02)  # a handler may have just published a follow-up
                if self.bus.idle(exclude=("status.#",)):
                    return
            await asyncio.sleep(0.02)

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """A stop was asked for (a signal, ``request_stop``) or is under way."""
        return self._stop.is_set()

    def inputs_finished(self) -> bool:
        inputs = [s for s in self.slots if s.cls.per_camera and s.state != "quarantined"]
        if not inputs or self.cameras_added_live:
            return False
        # a finite source (a file) that failed for good will not deliver more either
        return all(
            s.module.is_finished() or (s.cls.finite and s.module.health().state == "failed")
            for s in inputs
        )

    def _finish_poll_s(self) -> float:
        """How often ``run`` checks whether the inputs ended: often while a finite input (a
        file) may end by itself, rarely with live cameras only, which never end (five wake-ups
        a second, each with a task and a timer, that an idle box does not need)."""
        live_only = all(not s.cls.finite for s in self.slots if s.cls.per_camera)
        return 5.0 if live_only else 0.2

    async def run(self, *, install_signals: bool = True, exit_when_inputs_end: bool = True) -> int:
        """Start, run until a signal (or until every non-looping input ended), stop."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            while not self._stop.is_set():
                if exit_when_inputs_end and self.inputs_finished():
                    _log.info(
                        "inputs_finished", draining_s=self.config.current.runtime.drain_timeout
                    )
                    await self.drain()
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._finish_poll_s()):
                        await self._stop.wait()
        finally:
            await self.stop()
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(sig)
        return 0

    def pending(self) -> int:
        """Work accepted but not finished, summed over the running modules."""
        total = 0
        for s in self.slots:
            if s.state == "running":
                try:
                    total += s.module.pending()
                except Exception as e:
                    _log.warning("pending_failed", module=s.instance, error=repr(e))
        return total

    def frame_work_pending(self) -> int:
        """Per-frame work still queued in the modules that declare ``frame_stage``.

        Lockstep replay waits for this before the next frame. Event-length work (a clip
        waiting for its post-roll) must not count: it only ends when more frames arrive.
        """
        return sum(
            s.module.pending() for s in self.slots if s.state == "running" and s.cls.frame_stage
        )

    async def drain(self) -> None:
        """Wait for queues to empty and for modules with pending work (media, alerts)."""
        deadline = time.monotonic() + self.config.current.runtime.drain_timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if not self.pending() and self.bus.idle(exclude=("status.#",)):
                # idle twice in a row: a handler may have just published a follow-up
                await asyncio.sleep(0.1)
                if self.bus.idle(exclude=("status.#",)) and not self.pending():
                    return
            await asyncio.sleep(0.05)
        _log.warning("drain_timeout", timeout_s=self.config.current.runtime.drain_timeout)

    # -- health ------------------------------------------------------------------------------
    def health(self) -> HealthReport:
        reports: list[ModuleHealth] = []
        for slot in self.slots:
            try:
                h = slot.module.health()
            except Exception as e:
                h = ModuleHealth(module=slot.instance, state="failed", last_error=repr(e))
            if slot.state == "quarantined":
                h = h.model_copy(update={"state": "quarantined", "last_error": slot.last_error})
            elif slot.state == "retrying":
                h = h.model_copy(update={"state": "degraded", "last_error": slot.last_error})
            reports.append(h.model_copy(update={"restarts": max(0, slot.attempts - 1)}))
        states = {r.state for r in reports}
        overall: Any = (
            "failed"
            if "failed" in states and all(r.state in ("failed", "quarantined") for r in reports)
            else ("degraded" if states & {"failed", "quarantined", "degraded"} else "ok")
        )
        return HealthReport(overall=overall, modules=tuple(reports), at=time.time())

    async def publish_health(self) -> None:
        await self.bus.publish(topics.HEALTH.name, self.health())

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.current.runtime.health_interval)
            await self.publish_health()

    async def _trim_loop(self) -> None:
        """Hand the heaps' free pages back every ``runtime.malloc_trim_s`` (see core.malloc):
        a closed activity frees tens of MB (its clip's packets, the decoded animation frames)
        in the middle of the heaps, which would otherwise stay resident."""
        while True:
            every = self.config.current.runtime.malloc_trim_s
            await asyncio.sleep(every or 60.0)
            if every:
                await self.executor.run(malloc.trim)

    # -- reconfiguration ---------------------------------------------------------------------
    async def _on_config_update(self, msg: Message[ConfigUpdate]) -> None:
        await self.apply(msg.payload)

    async def apply(self, update: ConfigUpdate) -> bool:
        async with self._lock:
            result = await self.config.apply_changes(update.changes, self._reconfigure)
        if result.ok:
            await self.bus.publish(
                topics.CONFIG_SNAPSHOT.name,
                ConfigSnapshot(
                    version=result.version,
                    config=dump_config(self.config.current),
                    changed_modules=result.changed_modules,
                    request_id=update.request_id,
                ),
            )
            _log.info("config_applied", version=result.version, modules=result.changed_modules)
        else:
            await self.bus.publish(
                topics.CONFIG_REJECTED.name,
                ConfigRejected(
                    version=result.version,
                    reason=result.reason,
                    errors=result.errors,
                    request_id=update.request_id,
                ),
            )
            _log.warning("config_rejected", reason=result.reason)
        return result.ok

    async def _reconfigure(self, old: AppConfig, new: AppConfig) -> list[str]:
        if (old.storage.root, old.storage.scratch_dir) != (
            new.storage.root,
            new.storage.scratch_dir,
        ):
            # the index, the outbox, media and the status page's password file live there
            raise ModuleConfigError(
                "storage.root/storage.scratch: moving the storage needs a restart"
            )
        new_plan = self._wanted(new)
        new_keys = {(i, c) for i, _, c in new_plan}
        old_keys = {(s.instance, s.camera_id) for s in self.slots}
        added = [self._make(i, cls, c, new) for i, cls, c in new_plan if (i, c) not in old_keys]
        removed = [s for s in self.slots if (s.instance, s.camera_id) not in new_keys]
        replanned = bool(added or removed)
        changed: list[Slot] = []
        restart: list[Slot] = []
        done: list[Slot] = []
        for slot in self.slots:
            if slot.state == "quarantined" or slot in removed:
                continue
            name = slot.cls.name
            if module_view(old, name, camera_id=slot.camera_id) != module_view(
                new, name, camera_id=slot.camera_id
            ):
                # a module that set its subscriptions up per camera at start cannot take a
                # camera added or removed in place: it restarts with the new pipeline
                if replanned and not slot.cls.follows_cameras:
                    restart.append(slot)
                else:
                    changed.append(slot)
        # a transaction: every changed or new module checks its part before any adopts it,
        # so a refusal leaves every module as it was
        # a module that restarts is checked as the new instance it will be (the running one
        # may refuse, as "needs a restart", exactly what the restart does)
        fresh = [self._make(s.instance, s.cls, s.camera_id, new) for s in restart]
        for slot in [*added, *fresh, *changed]:
            try:
                await slot.module.check(new)
            except Exception as e:
                raise ModuleConfigError(f"{slot.instance} refused the change: {e}") from e
        try:
            for slot in changed:
                slot.module.ctx.app = new
                await slot.module.configure(new)
                done.append(slot)
        except Exception as e:
            # configure refused what check accepted: put back everyone it reached, the
            # refusing module too (it may have adopted part of the change before refusing)
            failing = changed[len(done)]
            for slot in reversed([*done, failing]):
                slot.module.ctx.app = old
                try:
                    await slot.module.configure(old)
                except Exception as rollback_error:
                    _log.error("rollback_failed", module=slot.instance, error=repr(rollback_error))
            raise ModuleConfigError(f"{failing.instance} refused the change: {e}") from e
        if replanned:
            await self._replan(new, added, removed, restart, fresh)
            if any(s.cls.per_camera for s in added):
                self.cameras_added_live = True
        return [s.instance for s in [*changed, *restart, *added, *removed]]

    async def _replan(
        self,
        new: AppConfig,
        added: list[Slot],
        removed: list[Slot],
        restart: list[Slot],
        fresh: list[Slot],
    ) -> None:
        """Cameras or modules came or went: stop what goes, replace what cannot follow by its
        ``fresh`` instance, start what is new (each as at start: a refusal quarantines it, a
        failure retries)."""
        timeout = self.config.current.runtime.stop_timeout / 2
        for slot in sorted([*removed, *restart], key=lambda s: (-s.order, s.instance)):
            if slot.retry_task is not None:
                slot.retry_task.cancel()
            try:
                await asyncio.wait_for(slot.module.stop(), timeout=timeout)
            except Exception as e:  # a timeout too: the new instance replaces it anyway
                _log.error("module_stop_failed", module=slot.instance, error=repr(e))
            slot.state = "stopped"
            self.slots.remove(slot)
        starting = sorted([*fresh, *added], key=lambda s: (s.order, s.instance))
        self.slots.extend(starting)
        self.slots.sort(key=lambda s: (s.order, s.instance))
        for slot in starting:
            await self._configure(slot, new)
        for slot in starting:
            if slot.state != "quarantined":
                await self._start_slot(slot)
        _log.info(
            "pipeline_replanned",
            added=[s.instance for s in added],
            removed=[s.instance for s in removed],
            restarted=[s.instance for s in restart],
        )

    # -- summary -----------------------------------------------------------------------------
    def _watch_summary(self) -> None:
        async def on_event(msg: Message[Any]) -> None:
            parts = msg.topic.split(".")
            if parts[-1] == "ready":
                self.summary.artifacts[parts[1]] += 1
                path = getattr(msg.payload, "path", None)
                if path:
                    self.summary.artifact_paths.append(str(path))
            else:
                self.summary.events[f"{parts[1]}.{parts[2]}"] += 1

        async def on_notify(msg: Message[Any]) -> None:
            parts = msg.topic.split(".")
            self.summary.notifications[f"{parts[1]}.{parts[2]}"] += 1

        self._unsubs.append(
            self.bus.subscribe(["event.#", topics.ARTIFACT], on_event, module="summary")
        )
        self._unsubs.append(self.bus.subscribe("notify.#", on_notify, module="summary"))
