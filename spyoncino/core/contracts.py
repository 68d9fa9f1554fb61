"""Module contracts: what every module (ours or a third party's) implements.

A module is one class registered under the ``spyoncino.modules`` entry-point group. Its
entry-point name is its config section: ``motion = "pkg.mod:Motion"`` reads ``motion:`` from
the config file, and, when it declares ``CameraOptions``, ``cameras.<id>.motion:`` too.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Literal,
    ParamSpec,
    TypeVar,
    cast,
    overload,
)

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator
from typing_extensions import TypeVar as DefaultTypeVar  # PEP 696 defaults on 3.11

from spyoncino.core.clock import Clock, SystemClock
from spyoncino.schemas.status import HealthState, ModuleHealth
from spyoncino.schemas.topics import Topic

if TYPE_CHECKING:
    from spyoncino.core.bus import Bus, Message, Policy
    from spyoncino.core.config import AppConfig

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

Category = Literal["storage", "output", "dashboard", "event", "process", "input", "service"]

#: Start order, consumers first so that nothing a producer publishes at start-up is missed.
#: Stop runs in reverse: producers stop first, then the queues drain into the consumers.
START_ORDER: dict[str, int] = {
    "storage": 0,
    "service": 1,
    "output": 2,
    "dashboard": 3,
    "event": 4,
    "process": 5,
    "input": 6,
}


class ModuleConfigError(Exception):
    """A permanent problem (bad settings, missing library): the module is quarantined."""


class ModuleNotReady(Exception):
    """A temporary problem (device busy, server down): start is retried with backoff."""


_log = structlog.get_logger("spyoncino.config")


class _Retiring(BaseModel):
    """Settings a release stopped reading still load: an unknown key is an error (a typo must
    not pass silently), but a key an older release documented is in the section's ``retired``
    (name -> what replaced it), is dropped with a warning naming it, and so never makes an
    update's ``check-config`` refuse the owner's config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: keys this section had in an older release and no longer reads: name -> why / instead
    retired: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        if not cls.retired or not isinstance(data, dict):
            return data
        gone = sorted(k for k in data if k in cls.retired and k not in cls.model_fields)
        kind = cls.model_fields.get("type")
        section = str(kind.default) if kind is not None else cls.__name__
        for key in gone:
            _log.warning("config_key_retired", key=f"{section}.{key}", instead=cls.retired[key])
        return {k: v for k, v in data.items() if k not in gone} if gone else data


class ModuleConfig(_Retiring):
    """Base of every module's top-level config section.

    Subclasses add ``type: Literal["<name>"] = "<name>"`` and fields with descriptions and
    ranges. Instances are frozen and replaced whole on reload. A field that is removed goes
    into ``retired`` (name -> what to use instead), so a config file written for the older
    release still loads and says what changed.
    """

    enabled: bool = Field(default=True, description="Run this module.")

    @classmethod
    def profile_defaults(cls, profile: Any) -> dict[str, Any]:
        """This section's defaults on the board's hardware profile (a
        ``spyoncino.platform.profiles.Profile``): they form the layer just above the packaged
        defaults, so the config file, the environment and secrets still override them. A
        section with nothing to say about the hardware keeps the default, nothing."""
        return {}


#: a module's own config section; a bare ``BaseModule`` subclass has a plain ``ModuleConfig``
ConfigT = DefaultTypeVar("ConfigT", bound=ModuleConfig, default=ModuleConfig)


class CameraOptions(_Retiring):
    """Base of the per-camera options a module reads from ``cameras.<id>.<section>``
    (``retired`` as for ``ModuleConfig``)."""


class BoundedExecutor:
    """A thread pool with a cap on queued work, for CPU work and blocking I/O.

    numpy, OpenCV, PyAV and LiteRT release the GIL, so threads give real parallelism for the
    heavy parts while the event loop stays free. ``run`` waits for a slot instead of letting
    a backlog of frames pile up in memory.
    """

    def __init__(self, workers: int = 2, queue_limit: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spyoncino")
        self._slots: asyncio.Semaphore | None = None
        self._limit = workers + queue_limit
        self.workers = workers

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _started_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass
class ModuleContext:
    """What the orchestrator hands a module: the bus, the executor and the app config."""

    bus: Bus
    executor: BoundedExecutor
    app: AppConfig
    instance: str
    camera_id: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: per-frame work queued in the processing stage (lockstep replay waits for 0)
    pipeline_pending: Callable[[], int] = field(default=lambda: 0)
    #: the time the module reads and sleeps on (a test hands in a ``FakeClock``)
    clock: Clock = field(default_factory=SystemClock)
    #: set once the orchestrator has started every module (at once for a module run on its
    #: own): a module that takes commands from outside (MQTT, Telegram) holds them until
    #: then, or they would go out on a bus whose listeners (arming, snapshot) are not there
    started: asyncio.Event = field(default_factory=_started_event)


class BaseModule(ABC, Generic[ConfigT]):
    """A unit of the pipeline. Talks to other modules only through the bus.

    ``class Motion(BaseModule[MotionConfig])`` with ``Config = MotionConfig`` gives a typed
    ``self.config`` (the section it was last configured with) and ``self.config_of(app)``
    (its section of a config being checked or adopted); ``self.ctx`` is a ``ModuleContext``.

    Lifecycle: ``configure`` (first with the initial config, later on every change that
    touches this module, after ``check``; raise ``ModuleConfigError`` to refuse), ``start``,
    ``health`` (polled),
    ``stop`` (must be safe to call twice and after a failed start).
    """

    #: entry-point name, set by the orchestrator from the registration
    name: ClassVar[str] = ""
    category: ClassVar[Category] = "process"
    Config: ClassVar[type[ModuleConfig]] = ModuleConfig
    #: per-camera options model, read from ``cameras.<id>.<name>``; None when there are none
    Camera: ClassVar[type[CameraOptions] | None] = None
    #: one instance per camera whose source this module accepts (inputs)
    per_camera: ClassVar[bool] = False
    #: True when ``configure`` takes a camera added or removed in place (its subscriptions
    #: follow the config); False: the orchestrator restarts the module when cameras change
    follows_cameras: ClassVar[bool] = False
    #: within its category, a higher rank stops first: an event source stops (and closes its
    #: events) before the media makers of the same category that consume them
    stop_rank: ClassVar[int] = 0
    #: a source that ends (a file that does not loop): a replay ends once every input has
    #: finished, and one of these that failed for good will not deliver more either
    finite: ClassVar[bool] = False
    #: a per-frame stage (motion, detection): its ``pending()`` is per-frame work, which a
    #: lockstep file replay lets finish before it reads the next frame. Work that lasts as
    #: long as an event (a clip waiting for its post-roll) must not be declared so: it only
    #: ends when more frames arrive
    frame_stage: ClassVar[bool] = False

    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx
        self.bus = ctx.bus
        self.log = structlog.get_logger("spyoncino").bind(module=ctx.instance)
        self._state: HealthState = "starting"
        self._detail = ""
        self._last_error: str | None = None
        self._unsubscribers: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        #: set by the orchestrator before ``stop``: the event-loop time (``loop.time()``) by
        #: which stop must return; work that cannot finish by then is persisted, not dropped
        self.stop_deadline: float | None = None

    def config_of(self, app: AppConfig) -> ConfigT:
        """This module's own section of ``app``: the one under its entry-point name (before
        registration, the name its ``Config.type`` declares)."""
        model = type(self).Config
        section = self.name
        if not section:
            field = model.model_fields.get("type")
            section = str(field.default) if field is not None else type(self).__name__.lower()
        return cast("ConfigT", app.section(section, model))

    @property
    def config(self) -> ConfigT:
        """This module's section of the config it was last handed (``ctx.app``)."""
        return self.config_of(self.ctx.app)

    @classmethod
    def accepts(cls, source: str) -> bool:
        """For ``per_camera`` modules: whether this module reads ``source``."""
        return False

    @classmethod
    def preflight(cls, app: AppConfig, camera_id: str | None) -> list[str]:
        """Problems ``check-config`` reports before anything runs (a missing file, say).

        Each is one line naming the key and the bad value. Must have no side effects and
        be quick: it runs on the operator's command, not in the service.
        """
        return []

    async def check(self, app: AppConfig) -> None:
        """Refuse (raise ``ModuleConfigError``) settings this module cannot adopt; change nothing.

        A config update is a transaction: every changed module's ``check`` runs first and
        only when all accept does any ``configure`` run. Put here whatever ``configure`` would
        refuse (a token that is not one, a source that does not exist, a key that needs a
        restart while running) and call it at the top of ``configure``. The schema has already
        validated ``app``; the default accepts it.
        """
        return

    @abstractmethod
    async def configure(self, app: AppConfig) -> None:
        """Validate and adopt the settings in ``app``. Must not keep state on the config.

        Refusing (raising) must leave the module as it was: check first, assign after.
        """

    @abstractmethod
    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Unsubscribe and cancel this module's tasks. Override and call ``super().stop()``."""
        for unsubscribe in self._unsubscribers:
            unsubscribe()
        self._unsubscribers.clear()
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                self.log.warning("task_failed_on_stop", error=repr(exc))
        self.set_state("stopped")

    def health(self) -> ModuleHealth:
        return ModuleHealth(
            module=self.ctx.instance,
            state=self._state,
            detail=self._detail,
            last_error=self._last_error,
            metrics=self.metrics(),
        )

    def metrics(self) -> dict[str, float | int | str]:
        """Numbers worth showing on the status page and in Prometheus."""
        return {}

    def pending(self) -> int:
        """Work this module has accepted but not finished (queued jobs, running encodes).

        A replay drains until every module reports 0. Defaults to ``metrics()["pending"]``.
        """
        value = self.metrics().get("pending", 0)
        return value if isinstance(value, int) else 0

    def is_finished(self) -> bool:
        """Inputs: True once a non-looping source has delivered its last frame."""
        return False

    # -- helpers for subclasses ---------------------------------------------------------------
    def set_state(self, state: HealthState, detail: str = "", error: str | None = None) -> None:
        self._state = state
        self._detail = detail
        if error is not None:
            self._last_error = error

    @overload
    def subscribe(
        self,
        pattern: Topic[T],
        handler: Callable[[Message[T]], Awaitable[None]],
        *,
        policy: Policy = ...,
        maxsize: int | None = ...,
    ) -> None: ...

    @overload
    def subscribe(
        self,
        pattern: str | Sequence[str],
        handler: Callable[[Message[object]], Awaitable[None]],
        *,
        policy: Policy = ...,
        maxsize: int | None = ...,
    ) -> None: ...

    def subscribe(
        self,
        pattern: str | Sequence[str],
        handler: Callable[[Any], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        """Subscribe ``handler(message)`` to a pattern, a topic family or several of them (one
        queue, publish order kept); unsubscribed automatically on ``stop``."""
        self._unsubscribers.append(
            self.bus.subscribe(pattern, handler, module=self.ctx.instance, **kwargs)
        )

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run a background task owned by this module; its crash is logged and recorded."""

        async def guarded() -> Any:
            try:
                return await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.set_state("failed", f"{name} crashed", repr(exc))
                self.log.error("task_crashed", task=name, error=repr(exc), exc_info=exc)
                return None

        task = asyncio.get_running_loop().create_task(guarded(), name=f"{self.ctx.instance}:{name}")
        if asyncio.iscoroutine(coro):
            # stopped before the task ever ran: close the coroutine it would have awaited
            task.add_done_callback(lambda t: coro.close() if t.cancelled() else None)
        self._tasks.append(task)
        return task


def now() -> float:
    """Wall-clock time; one place to read it so tests can reason about it."""
    return time.time()
