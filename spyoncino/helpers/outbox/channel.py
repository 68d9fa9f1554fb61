"""``OutboxChannel``: the base of the channel modules, its outbox, its gate and the bus around
them."""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, cast

from spyoncino.core.bus import Message
from spyoncino.core.contracts import (
    BaseModule,
    Category,
    ModuleConfig,
    ModuleContext,
    ModuleNotReady,
)
from spyoncino.helpers.outbox.delivery import Outbox, OutboxSettings, RateFor
from spyoncino.helpers.outbox.gate import ALL_CAMERAS, AlertGate
from spyoncino.helpers.outbox.store import OutboxItem, outbox_path
from spyoncino.schemas import topics
from spyoncino.schemas.control import ControlState
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.health import CameraHealthNotice
from spyoncino.schemas.media import MediaArtifact


class ChannelConfig(Protocol):
    """What ``OutboxChannel`` reads from a channel's ``Config``."""

    @property
    def alert_kinds(self) -> tuple[str, ...]: ...

    @property
    def snapshot_wait_s(self) -> float: ...

    @property
    def outbox(self) -> OutboxSettings: ...


#: the channel's own section (``OutboxChannel[Config]`` is a ``BaseModule[Config]``)
C = TypeVar("C", bound=ModuleConfig)
#: what ``ChannelConfig`` lists, checked on every channel's ``Config`` (a field or a property)
_CHANNEL_FIELDS = ("alert_kinds", "snapshot_wait_s", "outbox")


class OutboxChannel(BaseModule[C]):
    """A notification channel module: its ``Outbox``, its ``AlertGate`` and the bus around them.

    A channel keeps what is its own: its ``Config`` (set ``self.cfg`` in ``__init__`` and
    ``configure``), ``_enqueue`` (what one alert or follow-up becomes in the outbox; ``art`` is
    None for the text alert of an event whose snapshot never came) and ``_deliver`` (one send,
    raising ``RetryAfter`` / ``TransientError`` / ``PermanentError``). In ``start`` it builds
    its gate after ``open_outbox`` (the gate's budget is the outbox's) and then calls ``listen``.
    ``OutboxChannel[Config]`` is a ``BaseModule[Config]``: ``self.config`` is its section, and
    ``self.cfg`` (typed ``Config``) the one it adopted in ``configure``. Its ``Config`` must have
    what ``ChannelConfig`` lists (``alert_kinds``, ``snapshot_wait_s``, ``outbox``); a channel
    class whose ``Config`` lacks one is refused when it is defined.
    """

    category: ClassVar[Category] = "output"
    #: the ``channel`` of the outbox rows and of ``notify.<channel>.*``
    channel: ClassVar[str] = ""
    cfg: C

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = cls.Config.model_fields
        missing = [k for k in _CHANNEL_FIELDS if k not in fields and not hasattr(cls.Config, k)]
        if missing and cls.Config is not ModuleConfig:
            raise TypeError(f"{cls.__name__}.Config lacks what a channel needs: {missing}")

    @property
    def _channel(self) -> ChannelConfig:
        """``cfg`` as what this base reads of it (its fields are checked at class creation)."""
        return cast("ChannelConfig", self.cfg)

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.outbox: Outbox | None = None
        self.gate = AlertGate()

    @abstractmethod
    async def _enqueue(self, ev: EventNotice, art: MediaArtifact | None) -> None: ...

    @abstractmethod
    async def _deliver(self, item: OutboxItem) -> str | None: ...

    async def _on_update(self, ev: EventNotice) -> None:
        """A notice of an activity already alerted (it grew, or ended): a channel that can
        edit what it sent (Telegram's caption) does so here; the default sends nothing."""

    async def open_outbox(self, db_path: Path, *, rate_for: RateFor | None = None) -> Outbox:
        """Open the outbox and resume what it had pending; ``ModuleNotReady`` when it cannot.

        ``db_path`` is the event index's file (``storage.db_path``): the outbox keeps its own
        file beside it (``outbox_path``) and adopts the table an older release left in it.
        """
        self.outbox = Outbox(
            channel=self.channel,
            db_path=outbox_path(db_path),
            legacy_db=db_path,
            bus=self.bus,
            executor=self.ctx.executor,
            sender=self._deliver,
            settings=self._channel.outbox,
            rate_for=rate_for,
            module=self.ctx.instance,
            clock=self.ctx.clock,
        )
        try:
            await self.outbox.start()
        except Exception as e:
            raise ModuleNotReady(f"cannot open the outbox in {outbox_path(db_path)}: {e}") from e
        # camera-health notices are alerts of their own: no snapshot to wait for, no gate
        self.subscribe(topics.CAMERA_HEALTH, self._on_camera_health, policy="block", maxsize=64)
        return self.outbox

    async def _enqueue_health(self, notice: CameraHealthNotice) -> None:
        """What a camera-health alert or recovery becomes in this channel's outbox (kind
        ``health_alert`` / ``health_recovered``). Channels override it; the default sends
        nothing, so a third party's channel is unaffected."""
        return

    def health_muted(self, camera_id: str) -> bool:
        """Camera-health notices follow mutes (the owner asked for quiet) but not disarming:
        a covered camera matters most when nobody watches it."""
        if not self.gate.respect_state:
            return False
        now = self.ctx.clock.time()
        return any(self.gate.state.muted_until.get(k, 0.0) > now for k in (camera_id, ALL_CAMERAS))

    async def _on_camera_health(self, msg: Message[CameraHealthNotice]) -> None:
        notice = msg.payload
        if self.outbox is None or not getattr(self.cfg, "health_alerts", True):
            return
        if self.health_muted(notice.camera_id):
            self.log.info("health_alert_muted", camera=notice.camera_id, phase=notice.phase)
            return
        try:
            await self._enqueue_health(notice)
        except Exception as e:  # the channel must live on
            self.log.error("health_alert_failed", notice_id=notice.notice_id, error=repr(e))

    def listen(self) -> None:
        """Follow ``control.state`` and ``event.#``, and alert overdue events as text."""
        self.subscribe(topics.CONTROL_STATE.name, self._on_state, policy="latest")
        # one ordered queue for notices and artifacts: a snapshot never overtakes its event
        # one queue for both families: the gate sees a notice before the media made for it
        self.subscribe(
            ["event.#", topics.ARTIFACT], self._on_event_topic, policy="block", maxsize=256
        )
        self.spawn(self._overdue_loop(), "overdue")

    def adopt_settings(self) -> None:
        """A config update while running: delivery settings and alert kinds change in place."""
        if self.outbox is not None:
            self.outbox.settings = self._channel.outbox
        self.gate.kinds = frozenset(self._channel.alert_kinds)

    async def stop(self) -> None:
        await super().stop()
        outbox, self.outbox = self.outbox, None
        if outbox is not None:
            grace = 5.0
            if self.stop_deadline is not None:  # what the shutdown budget leaves this stage
                grace = max(0.0, self.stop_deadline - asyncio.get_running_loop().time() - 0.5)
            await outbox.close(grace)

    async def _on_state(self, msg: Message[ControlState]) -> None:
        self.gate.state = msg.payload

    async def _on_event_topic(self, msg: Message[Any]) -> None:
        p = msg.payload
        if isinstance(p, EventNotice):
            self.gate.notice(p)
            if self.gate.alerted(p.event_id) and self.outbox is not None:
                await self._on_update(p)
        elif isinstance(p, MediaArtifact) and self.outbox is not None:
            await self._on_artifact(p)

    async def _on_artifact(self, art: MediaArtifact) -> None:
        for ev, sendable in self.gate.artifact(art):
            await self._enqueue(ev, sendable)

    async def _overdue_loop(self) -> None:
        retry: list[EventNotice] = []
        while True:
            await asyncio.sleep(1.0)
            due, retry = [*retry, *self.gate.overdue(self._channel.snapshot_wait_s)], []
            for ev in due:
                try:
                    held = self.gate.take_held(ev.event_id)
                    if not held or held[0].kind != "snapshot":
                        await self._enqueue(ev, None)  # no picture at all: a text alert
                    for art in held:
                        await self._enqueue(ev, art)
                except Exception as e:  # the task must live on, and the alert be tried again
                    retry.append(ev)
                    self.log.error("overdue_alert_failed", event_id=ev.event_id, error=repr(e))

    def metrics(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {"suppressed": self.gate.suppressed}
        if self.outbox is not None:
            out.update(self.outbox.metrics())
        return out
