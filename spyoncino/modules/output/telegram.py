"""Telegram alerts: the event's snapshot photo with a caption, to every allowlisted chat.

Safe by default: the module is enabled but inert until a bot token is configured (secrets file
or ``SPYONCINO_TELEGRAM__TOKEN``), and only the chats listed in ``chat_ids`` ever receive
anything. Alerts respect ``control.state``: nothing is sent while the box is disarmed or the
camera (or ``*``, every camera) is muted; the events are still recorded by the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, SecretStr

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig, ModuleConfigError
from spyoncino.core.files import local_time
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.control import ControlState
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact

if TYPE_CHECKING:
    from aiogram import Bot

ALL_CAMERAS = "*"
CHANNEL = "telegram"


class Config(ModuleConfig):
    type: Literal["telegram"] = "telegram"
    token: SecretStr | None = Field(
        default=None,
        description="Bot token from BotFather; put it in the secrets file or "
        "SPYONCINO_TELEGRAM__TOKEN. Without it the module stays inert.",
    )
    chat_ids: list[int] = Field(
        default_factory=list,
        description="Allowlisted chats (users or groups) that receive alerts; nobody else does.",
        max_length=64,
    )
    api_base_url: str = Field(
        default="https://api.telegram.org",
        description="Bot API server (a local Bot API server or a test emulator).",
        pattern=r"^https?://",
    )
    alert_kinds: tuple[Literal["object", "motion"], ...] = Field(
        default=("object", "motion"),
        description="Event kinds that raise an alert (the tracker decides which it produces).",
    )
    request_timeout_s: float = Field(
        default=30.0, ge=1.0, le=300.0, description="Timeout of one Bot API request."
    )


@dataclass
class _Pending:
    event: EventNotice
    alerted: bool = False


class TelegramOutput(BaseModule):
    category: ClassVar[Any] = "output"
    Config: ClassVar[type[ModuleConfig]] = Config

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.tz: str | None = None
        self.camera_names: dict[str, str] = {}
        self.bot: Bot | None = None
        self.state = ControlState(armed=True)
        self._events: OrderedDict[str, _Pending] = OrderedDict()
        self._queues: dict[int, asyncio.Queue[tuple[MediaArtifact, EventNotice]]] = {}
        self.sent = 0
        self.failed = 0
        self.suppressed = 0

    async def configure(self, app: AppConfig) -> None:
        self.cfg = app.section(self.name or CHANNEL, Config)
        self.tz = app.runtime.timezone
        self.camera_names = {cid: cam.name or cid for cid, cam in app.cameras.items()}
        if self.cfg.token is not None:
            from aiogram.utils.token import TokenValidationError, validate_token

            try:
                validate_token(self.cfg.token.get_secret_value())
            except TokenValidationError as e:
                # never echo the token itself
                raise ModuleConfigError(
                    "telegram.token: not a bot token (expected <digits>:<secret> from BotFather)"
                ) from e

    @property
    def active(self) -> bool:
        return self.cfg.token is not None and bool(self.cfg.chat_ids)

    async def start(self) -> None:
        if self.cfg.token is None:
            self.log.info("telegram_disabled", reason="no token configured")
            self.set_state("ok", "disabled: no token")
            return
        if not self.cfg.chat_ids:
            self.log.warning("telegram_disabled", reason="chat_ids is empty")
            self.set_state("degraded", "no chat_ids: nobody to alert")
            return
        # aiogram builds hundreds of pydantic models on import (~3 s on a Pi-class CPU): keep
        # that off the event loop
        await self.ctx.executor.run(importlib.import_module, "aiogram")
        from aiogram import Bot
        from aiogram.client.session.aiohttp import AiohttpSession
        from aiogram.client.telegram import TelegramAPIServer

        session = AiohttpSession(api=TelegramAPIServer.from_base(self.cfg.api_base_url))
        session.timeout = self.cfg.request_timeout_s
        self.bot = Bot(token=self.cfg.token.get_secret_value(), session=session)
        self.subscribe(topics.CONTROL_STATE.name, self._on_state, policy="latest")
        # one ordered queue for event notices and artifacts: a snapshot never overtakes the
        # notice of the event it belongs to
        self.subscribe("event.#", self._on_event_topic, policy="block", maxsize=256)
        for chat in self.cfg.chat_ids:
            self._queues[chat] = asyncio.Queue(maxsize=1000)
            self.spawn(self._sender(chat), f"sender:{chat}")
        self.set_state("ok", f"{len(self.cfg.chat_ids)} chat(s)")
        self.log.info("telegram_started", chats=len(self.cfg.chat_ids))

    async def stop(self) -> None:
        await super().stop()
        bot, self.bot = self.bot, None
        if bot is not None:
            with contextlib.suppress(Exception):
                await bot.session.close()

    # -- inputs -------------------------------------------------------------------------------
    async def _on_state(self, msg: Message[ControlState]) -> None:
        self.state = msg.payload

    async def _on_event_topic(self, msg: Message[Any]) -> None:
        payload = msg.payload
        if isinstance(payload, EventNotice):
            if payload.phase == "started" and payload.kind in self.cfg.alert_kinds:
                self._events[payload.event_id] = _Pending(payload)
                while len(self._events) > 256:
                    self._events.popitem(last=False)
            elif payload.event_id in self._events:
                self._events[payload.event_id].event = payload
            return
        if isinstance(payload, MediaArtifact) and payload.kind == "snapshot":
            pending = self._events.get(payload.event_id)
            if pending is None or pending.alerted:
                return
            pending.alerted = True
            reason = self.suppressed_reason(payload.camera_id)
            if reason is not None:
                self.suppressed += 1
                self.log.info(
                    "alert_suppressed",
                    event_id=payload.event_id,
                    camera=payload.camera_id,
                    reason=reason,
                )
                return
            for chat, queue in self._queues.items():
                await self._notify(payload, chat, "queued")
                await queue.put((payload, pending.event))

    def suppressed_reason(self, camera_id: str, now: float | None = None) -> str | None:
        """Why no alert goes out for ``camera_id`` now (None: it does)."""
        t = time.time() if now is None else now
        if not self.state.armed:
            return "disarmed"
        for key in (camera_id, ALL_CAMERAS):
            if self.state.muted_until.get(key, 0.0) > t:
                return "muted"
        return None

    # -- output -------------------------------------------------------------------------------
    def caption(self, event: EventNotice) -> str:
        name = self.camera_names.get(event.camera_id, event.camera_id)
        when = local_time(event.started_at, self.tz).strftime("%Y-%m-%d %H:%M:%S")
        if event.kind == "object" and event.labels:
            seen = ", ".join(event.labels) + f" ({event.top_score:.0%})"
        else:
            seen = "motion"
        lines = [f"{name}: {seen}", when]
        if event.zones:
            lines.append("zone: " + ", ".join(event.zones))
        return "\n".join(lines)

    async def _sender(self, chat: int) -> None:
        queue = self._queues[chat]
        while True:
            artifact, event = await queue.get()
            await self._send_photo(chat, artifact, event)

    async def _send_photo(self, chat: int, artifact: MediaArtifact, event: EventNotice) -> None:
        from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter, TelegramServerError
        from aiogram.types import BufferedInputFile

        assert self.bot is not None
        data = await self.ctx.executor.run(Path(artifact.path).read_bytes)
        caption = self.caption(event)
        for attempt in range(1, 6):
            try:
                await self.bot.send_photo(
                    chat_id=chat,
                    photo=BufferedInputFile(data, filename=Path(artifact.path).name),
                    caption=caption,
                )
            except TelegramRetryAfter as e:
                await asyncio.sleep(e.retry_after)
                continue
            except (TelegramNetworkError, TelegramServerError) as e:
                if attempt == 5:
                    self.failed += 1
                    await self._notify(artifact, chat, "failed", attempt, repr(e))
                    return
                await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
                continue
            except Exception as e:
                self.failed += 1
                self.log.warning("telegram_send_failed", chat=chat, error=repr(e))
                await self._notify(artifact, chat, "failed", attempt, repr(e))
                return
            self.sent += 1
            await self._notify(artifact, chat, "sent", attempt)
            return

    async def _notify(
        self,
        artifact: MediaArtifact,
        chat: int,
        status: Literal["queued", "sent", "failed"],
        attempt: int = 1,
        error: str | None = None,
    ) -> None:
        await self.bus.publish(
            topics.NOTIFY.at(channel=CHANNEL, status=status),
            AlertNotification(
                channel=CHANNEL,
                event_id=artifact.event_id,
                camera_id=artifact.camera_id,
                kind="snapshot",
                status=status,
                recipient=str(chat),
                attempt=attempt,
                error=error,
                at=time.time(),
            ),
        )

    def metrics(self) -> dict[str, float | int | str]:
        return {"sent": self.sent, "failed": self.failed, "suppressed": self.suppressed}
