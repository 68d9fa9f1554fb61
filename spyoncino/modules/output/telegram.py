"""Telegram: rich alerts to allowlisted chats, and commands from them.

Safe by default: the module is enabled but inert until a bot token is configured (secrets file
or ``SPYONCINO_TELEGRAM__TOKEN``); only chats listed in ``chat_ids`` receive alerts or may
command, and anything from anyone else is ignored without a reply (logged with the sender id and
counted), so no stranger can claim the bot or learn that it exists.

Alerts: when an event starts, its snapshot photo with a caption and an inline keyboard (Mute 1 h,
Snapshot, Disarm); then the GIF (``sendAnimation``) or clip (``sendVideo``) as a reply to that
photo; text instead of a file over Telegram's limits; silent during quiet hours. Nothing is sent
while disarmed or muted (``control.state``). Every message goes through the persistent outbox
(``spyoncino.core.outbox``): stored before sending, in order per chat, 429-aware, retried.

Commands travel as ``control.command`` on the bus and are carried out by the modules that own
the state (arming, snapshot/clip writers); this module only asks and reports the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import secrets
import sqlite3
import time
from datetime import time as dtime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from pydantic import Field, SecretStr

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig, ModuleConfigError, ModuleNotReady
from spyoncino.core.files import local_time
from spyoncino.core.outbox import (
    ALL_CAMERAS,
    AlertGate,
    Outbox,
    OutboxItem,
    OutboxSettings,
    PermanentError,
    RetryAfter,
    TransientError,
)
from spyoncino.modules.output import _telegram_text as text
from spyoncino.schemas import topics
from spyoncino.schemas.control import CommandName, ControlCommand, ControlState
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact
from spyoncino.schemas.status import HealthReport

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Update
    from aiogram.types import Message as TgMessage

CHANNEL = "telegram"
MB = 1024 * 1024


class Config(ModuleConfig):
    type: Literal["telegram"] = "telegram"
    token: SecretStr | None = Field(
        default=None,
        description="Bot token from BotFather; put it in the secrets file or "
        "SPYONCINO_TELEGRAM__TOKEN. Without it the module stays inert.",
    )
    chat_ids: list[int] = Field(
        default_factory=list,
        max_length=64,
        description="Allowlist: the chats (users or groups) that receive alerts and may command.",
    )
    admin_ids: list[int] = Field(
        default_factory=list,
        max_length=64,
        description="User ids allowed to /arm and /disarm; empty: everyone in chat_ids.",
    )
    api_base_url: str = Field(
        default="https://api.telegram.org",
        pattern=r"^https?://",
        description="Bot API server (the public one, a local Bot API server or a test emulator).",
    )
    alert_kinds: tuple[Literal["object", "motion"], ...] = Field(
        default=("object", "motion"),
        description="Event kinds that raise an alert (the tracker decides which it produces).",
    )
    followup: Literal["gif", "clip", "both", "none"] = Field(
        default="gif", description="What is sent as a reply to the alert photo when it is ready."
    )
    status_page_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Base URL of the status page; captions then link to the event.",
    )
    quiet_hours_start: dtime | None = Field(
        default=None, description="Local time (HH:MM) from which alerts arrive silently."
    )
    quiet_hours_end: dtime | None = Field(
        default=None, description="Local time (HH:MM) at which quiet hours end (may wrap midnight)."
    )
    max_photo_bytes: int = Field(
        default=10 * MB, ge=1024, le=10 * MB, description="Larger snapshots are sent as text."
    )
    max_file_bytes: int = Field(
        default=50 * MB,
        ge=1024,
        le=2000 * MB,
        description="Larger GIFs/clips are sent as text (50 MB on the public Bot API).",
    )
    group_per_minute: int = Field(
        default=20, ge=1, le=60, description="Messages per minute to a group chat (Telegram: 20)."
    )
    commands: bool = Field(default=True, description="Read commands (long polling getUpdates).")
    poll_timeout_s: int = Field(
        default=25, ge=0, le=50, description="Long-polling timeout of getUpdates."
    )
    command_timeout_s: float = Field(
        default=15.0, ge=0.5, le=300.0, description="How long a command waits for its answer."
    )
    request_timeout_s: float = Field(
        default=30.0, ge=1.0, le=300.0, description="Timeout of one Bot API request."
    )
    outbox: OutboxSettings = Field(
        default_factory=OutboxSettings, description="Delivery: retries, horizon, rate limits."
    )


TelegramConfig = Config


def _read_limited(path: str, limit: int) -> bytes | str:
    size = Path(path).stat().st_size
    if size > limit:
        return f"{size / MB:.1f} MB is over the {limit / MB:.0f} MB limit"
    return Path(path).read_bytes()


class TelegramOutput(BaseModule):
    category: ClassVar[Any] = "output"
    Config: ClassVar[type[ModuleConfig]] = Config

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.tz: str | None = None
        self.names: dict[str, str] = {}
        self.db_path = Path("events.sqlite3")
        self.storage_root = Path(".")
        self.bot: Bot | None = None
        self.outbox: Outbox | None = None
        self.state = ControlState(armed=True)
        self.health_report: HealthReport | None = None
        self.gate = AlertGate()
        self._waiters: dict[str, asyncio.Future[MediaArtifact]] = {}
        self._state_waiters: list[asyncio.Future[ControlState]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._started_mono = time.monotonic()
        self.counts: dict[str, int] = {"unauthorized": 0, "commands": 0}

    # -- lifecycle ----------------------------------------------------------------------------
    async def configure(self, app: AppConfig) -> None:
        old = self.cfg
        self.cfg = app.section(self.name or CHANNEL, Config)
        self.tz = app.runtime.timezone
        self.names = {cid: cam.name or cid for cid, cam in app.cameras.items() if cam.enabled}
        self.db_path = app.storage.db_path
        self.storage_root = app.storage.root
        if self.cfg.token is not None:
            from aiogram.utils.token import TokenValidationError, validate_token

            try:
                validate_token(self.cfg.token.get_secret_value())
            except TokenValidationError as e:
                # never echo the token itself
                raise ModuleConfigError(
                    "telegram.token: not a bot token (expected <digits>:<secret> from BotFather)"
                ) from e
        if self.bot is not None:
            self._apply_live(old)

    def _apply_live(self, old: TelegramConfig) -> None:
        """Adopt a config update while running; what the bot session was built from cannot."""
        for key in ("token", "api_base_url", "commands", "request_timeout_s"):
            if getattr(old, key) != getattr(self.cfg, key):
                self.cfg = old
                raise ModuleConfigError(f"telegram.{key}: a change takes effect on restart")
        if self.outbox is not None:
            self.outbox.settings = self.cfg.outbox
        self.gate.kinds = frozenset(self.cfg.alert_kinds)

    async def start(self) -> None:
        self._started_mono = time.monotonic()
        if self.cfg.token is None:
            self.log.info("telegram_disabled", reason="no token configured")
            self.set_state("ok", "disabled: no token")
            return
        if not self.cfg.chat_ids:
            self.log.warning("telegram_disabled", reason="chat_ids is empty: nobody to alert")
            self.set_state("degraded", "no chat_ids: nobody to alert")
            return
        # aiogram builds hundreds of pydantic models on import (~3 s here, more on a Pi): keep
        # that off the event loop
        await self.ctx.executor.run(importlib.import_module, "aiogram")
        from aiogram import Bot
        from aiogram.client.session.aiohttp import AiohttpSession
        from aiogram.client.telegram import TelegramAPIServer

        session = AiohttpSession(api=TelegramAPIServer.from_base(self.cfg.api_base_url))
        session.timeout = self.cfg.request_timeout_s
        self.bot = Bot(token=self.cfg.token.get_secret_value(), session=session)
        self.outbox = Outbox(
            channel=CHANNEL,
            db_path=self.db_path,
            bus=self.bus,
            executor=self.ctx.executor,
            sender=self._deliver,
            settings=self.cfg.outbox,
            rate_for=self._rate,
            module=self.ctx.instance,
        )
        self.gate = AlertGate(self.cfg.alert_kinds, budget=self.outbox.admit)
        self.gate.state = self.state
        try:
            await self.outbox.start()
        except sqlite3.Error as e:
            raise ModuleNotReady(f"cannot open the outbox in {self.db_path}: {e}") from e
        self.subscribe(topics.CONTROL_STATE.name, self._on_state, policy="latest")
        self.subscribe(topics.HEALTH.name, self._on_health, policy="latest")
        # one ordered queue for notices and artifacts: a snapshot never overtakes its event
        self.subscribe("event.#", self._on_event_topic, policy="block", maxsize=256)
        if self.cfg.commands:
            self.spawn(self._poll(), "poll")
        self.set_state("ok", f"{len(self.cfg.chat_ids)} chat(s)")
        self.log.info("telegram_started", chats=len(self.cfg.chat_ids), commands=self.cfg.commands)

    async def stop(self) -> None:
        handlers = list(self._handlers)
        for t in handlers:
            t.cancel()
        for t in handlers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await super().stop()
        outbox, self.outbox = self.outbox, None
        if outbox is not None:
            await outbox.close()
        bot, self.bot = self.bot, None
        if bot is not None:
            with contextlib.suppress(Exception):
                await bot.session.close()

    def _rate(self, recipient: str) -> tuple[float, int]:
        o = self.cfg.outbox
        if recipient.startswith("-"):  # groups and channels have negative ids
            return o.min_interval_s, min(
                o.per_minute or self.cfg.group_per_minute, self.cfg.group_per_minute
            )
        return o.min_interval_s, o.per_minute

    # -- bus inputs ---------------------------------------------------------------------------
    async def _on_state(self, msg: Message[ControlState]) -> None:
        self.state = msg.payload
        self.gate.state = msg.payload
        waiters, self._state_waiters = self._state_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(msg.payload)

    async def _on_health(self, msg: Message[HealthReport]) -> None:
        self.health_report = msg.payload

    async def _on_event_topic(self, msg: Message[Any]) -> None:
        payload = msg.payload
        if isinstance(payload, EventNotice):
            self.gate.notice(payload)
        elif isinstance(payload, MediaArtifact):
            waiter = self._waiters.get(payload.event_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(payload)
                return
            await self._on_artifact(payload)

    def suppressed_reason(self, camera_id: str, now: float | None = None) -> str | None:
        """Why no alert goes out for ``camera_id`` now (None: it does)."""
        return self.gate.reason(camera_id, now)

    async def _on_artifact(self, art: MediaArtifact) -> None:
        outbox = self.outbox
        assert outbox is not None
        before = self.gate.suppressed
        for ev, item in self.gate.artifact(art):
            payload = self._media_payload(item)
            if item.kind == "snapshot":
                payload["caption"] = text.caption(self._info(ev), self.tz, self.cfg.status_page_url)
                payload["over_budget"] = outbox.take_over_budget(item.camera_id)
            elif self.cfg.followup not in (item.kind, "both"):
                continue
            for chat in self.cfg.chat_ids:
                await outbox.enqueue(
                    recipient=str(chat),
                    event_id=item.event_id,
                    camera_id=item.camera_id,
                    kind=item.kind,
                    payload=payload,
                )
        if self.gate.suppressed > before:
            self.log.info(
                "alert_suppressed",
                event_id=art.event_id,
                camera=art.camera_id,
                reason=self.gate.last_reason,
            )

    def _info(self, ev: EventNotice) -> text.AlertInfo:
        return text.AlertInfo(
            event_id=ev.event_id,
            camera_id=ev.camera_id,
            camera_name=self.names.get(ev.camera_id, ev.camera_id),
            kind=ev.kind,
            labels=ev.labels,
            score=ev.top_score,
            zones=ev.zones,
            started_at=ev.started_at,
        )

    def _media_payload(self, art: MediaArtifact) -> dict[str, Any]:
        return {
            "path": art.path,
            "relpath": art.relpath,
            "size_bytes": art.size_bytes,
            "sha256": art.sha256,
            "mime": art.mime,
            "width": art.width,
            "height": art.height,
            "duration_s": art.duration_s,
            "camera_name": self.names.get(art.camera_id, art.camera_id),
        }

    # -- delivery (called by the outbox worker of one chat) -----------------------------------
    def quiet_now(self, now: float | None = None) -> bool:
        t = local_time(time.time() if now is None else now, self.tz).time()
        return text.in_quiet_hours(t, self.cfg.quiet_hours_start, self.cfg.quiet_hours_end)

    def keyboard(self, camera_id: str) -> InlineKeyboardMarkup:
        from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

        return InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    InlineKeyboardButton(text="Mute 1 h", callback_data=f"m:{camera_id}:3600"),
                    InlineKeyboardButton(text="Snapshot", callback_data=f"s:{camera_id}"),
                    InlineKeyboardButton(text="Disarm", callback_data="d"),
                ]
            ]
        )

    async def _read(self, path: str, limit: int) -> bytes | str:
        """The file's bytes, or why it cannot be sent (read on the outbox's I/O thread)."""
        run = self.outbox.run_io if self.outbox is not None else self.ctx.executor.run
        try:
            return await run(_read_limited, path, limit)
        except OSError as e:
            return f"file unavailable ({e.strerror or type(e).__name__})"

    async def _deliver(self, item: OutboxItem) -> str | None:
        from aiogram.exceptions import (
            TelegramAPIError,
            TelegramEntityTooLarge,
            TelegramNetworkError,
            TelegramRetryAfter,
            TelegramServerError,
        )

        try:
            return await self._send_item(item)
        except TelegramRetryAfter as e:
            raise RetryAfter(e.retry_after, "429 Too Many Requests") from e
        except TelegramEntityTooLarge as e:
            raise PermanentError("file too large for the Bot API") from e
        except (TelegramNetworkError, TelegramServerError) as e:
            raise TransientError(f"{type(e).__name__}: {e.message}") from e
        except TelegramAPIError as e:
            raise PermanentError(f"{type(e).__name__}: {e.message}") from e

    async def _send_item(self, item: OutboxItem) -> str | None:
        from aiogram.types import BufferedInputFile, ReplyParameters

        bot = self.bot
        assert bot is not None
        chat = int(item.recipient)
        p = item.payload
        silent = self.quiet_now()
        name = str(p.get("camera_name") or item.camera_id)
        if item.kind == "snapshot":
            lines = []
            if item.coalesced:
                lines.append(text.summary_line(item.coalesced + 1, name))
            lines.append(str(p.get("caption", "")))
            if p.get("over_budget"):
                lines.append(text.over_budget_line(int(p["over_budget"]), name))
            cap = "\n".join(lines)
            data = await self._read(str(p["path"]), self.cfg.max_photo_bytes)
            if isinstance(data, str):
                sent = await bot.send_message(
                    chat_id=chat,
                    text=f"{cap}\n(photo not sent: {data})",
                    reply_markup=self.keyboard(item.camera_id),
                    disable_notification=silent,
                )
            else:
                sent = await bot.send_photo(
                    chat_id=chat,
                    photo=BufferedInputFile(data, filename=Path(str(p["path"])).name),
                    caption=cap[:1024],
                    reply_markup=self.keyboard(item.camera_id),
                    disable_notification=silent,
                )
            return str(sent.message_id)
        if item.kind in ("gif", "clip"):
            reply_to = item.related.get("snapshot")
            reply = (
                ReplyParameters(message_id=int(reply_to), allow_sending_without_reply=True)
                if reply_to
                else None
            )
            data = await self._read(str(p["path"]), self.cfg.max_file_bytes)
            label = "GIF" if item.kind == "gif" else "Clip"
            if isinstance(data, str):
                sent = await bot.send_message(
                    chat_id=chat,
                    text=f"{label} of {name} not sent: {data}. On the box: {p.get('relpath')}",
                    reply_parameters=reply,
                    disable_notification=True,
                )
                return str(sent.message_id)
            file = BufferedInputFile(data, filename=Path(str(p["path"])).name)
            dims: dict[str, Any] = {
                "width": p.get("width"),
                "height": p.get("height"),
                "duration": round(float(p["duration_s"])) if p.get("duration_s") else None,
            }
            if item.kind == "gif":
                sent = await bot.send_animation(
                    chat_id=chat,
                    animation=file,
                    reply_parameters=reply,
                    disable_notification=True,
                    **dims,
                )
            else:
                sent = await bot.send_video(
                    chat_id=chat,
                    video=file,
                    supports_streaming=True,
                    reply_parameters=reply,
                    disable_notification=True,
                    **dims,
                )
            return str(sent.message_id)
        sent = await bot.send_message(
            chat_id=chat, text=str(p.get("text", "")), disable_notification=silent
        )
        return str(sent.message_id)

    # -- commands -----------------------------------------------------------------------------
    async def _poll(self) -> None:
        from aiogram.exceptions import TelegramRetryAfter, TelegramUnauthorizedError
        from aiogram.types import BotCommand

        bot = self.bot
        assert bot is not None
        delay = 1.0
        ready = False
        offset: int | None = None
        while True:
            try:
                if not ready:
                    await bot.delete_webhook(drop_pending_updates=False)
                    await bot.set_my_commands(
                        [BotCommand(command=c, description=d) for c, d in text.COMMANDS]
                    )
                    ready = True
                updates = await bot.get_updates(
                    offset=offset,
                    timeout=self.cfg.poll_timeout_s,
                    allowed_updates=["message", "callback_query"],
                    request_timeout=self.cfg.poll_timeout_s + 15,
                )
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except TelegramUnauthorizedError:
                self.set_state("failed", "the bot token was refused (401)")
                self.log.error("telegram_token_refused")
                await asyncio.sleep(300.0)
                continue
            except TelegramRetryAfter as e:
                await asyncio.sleep(e.retry_after)
                continue
            except Exception as e:
                self.log.info("telegram_poll_error", error=type(e).__name__, retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            for upd in updates:
                offset = upd.update_id + 1
                self._handle_soon(upd)

    def _handle_soon(self, upd: Update) -> None:
        task = asyncio.get_running_loop().create_task(self._handle_update(upd))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def allowed(self, chat_id: int | None) -> bool:
        return chat_id is not None and chat_id in self.cfg.chat_ids

    def _refuse(self, kind: str, chat_id: int | None, user_id: int | None) -> None:
        self.counts["unauthorized"] += 1
        self.log.warning("telegram_unauthorized", update=kind, chat_id=chat_id, sender_id=user_id)

    async def _handle_update(self, upd: Update) -> None:
        try:
            if upd.message is not None:
                await self._on_message(upd.message)
            elif upd.callback_query is not None:
                await self._on_callback(upd.callback_query)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.error("telegram_update_failed", error=repr(e), exc_info=e)

    async def _on_message(self, m: TgMessage) -> None:
        user_id = m.from_user.id if m.from_user else None
        if not self.allowed(m.chat.id):
            self._refuse("message", m.chat.id, user_id)
            return
        body = (m.text or "").strip()
        if not body.startswith("/"):
            return
        parts = body.split()
        cmd = parts[0][1:].split("@", 1)[0].lower()
        self.counts["commands"] += 1
        self.log.info("telegram_command", command=cmd, chat_id=m.chat.id, sender_id=user_id)
        reply = await self.run_command(cmd, parts[1:], m.chat.id, user_id)
        if reply:
            await self._reply(m.chat.id, reply, m.message_id)

    async def _on_callback(self, q: CallbackQuery) -> None:
        chat_id = q.message.chat.id if q.message is not None else None
        if not self.allowed(chat_id):
            self._refuse("callback", chat_id, q.from_user.id)
            return
        assert self.bot is not None
        assert chat_id is not None
        data = (q.data or "").split(":")
        if data[0] == "m" and len(data) == 3:
            args, cmd = [f"{int(float(data[2]))}s", data[1]], "mute"
        elif data[0] == "s" and len(data) == 2:
            args, cmd = [data[1]], "snapshot"
        elif data[0] == "d":
            args, cmd = [], "disarm"
        else:
            return
        self.counts["commands"] += 1
        with contextlib.suppress(Exception):
            await self.bot.answer_callback_query(q.id, text=f"/{cmd} {' '.join(args)}".strip())
        reply = await self.run_command(cmd, args, chat_id, q.from_user.id)
        if reply:
            await self._reply(chat_id, reply, None)

    async def run_command(
        self, cmd: str, args: list[str], chat_id: int, user_id: int | None
    ) -> str | None:
        """Carry out one command from an allowlisted chat; returns the reply text."""
        if cmd in ("help", "start"):
            return text.HELP
        if cmd == "status":
            return await self._status_text()
        if cmd == "health":
            return text.health_text(self.health_report)
        if cmd == "events":
            n = 5
            if args:
                try:
                    n = max(1, min(50, int(args[0])))
                except ValueError:
                    return "Usage: /events [n]"
            rows = await self.ctx.executor.run(text.read_events, self.db_path, n)
            return text.events_text(rows, self.names, self.tz)
        if cmd in ("arm", "disarm"):
            if self.cfg.admin_ids and user_id not in self.cfg.admin_ids:
                return f"Only an admin may /{cmd}."
            state = await self._command_state(cast("CommandName", cmd), None, None, chat_id)
            if state is None:
                return f"/{cmd}: no answer from the arming module."
            return text.state_text(state, time.time(), self.tz, self.names)
        if cmd in ("mute", "unmute"):
            return await self._mute(cmd, args, chat_id)
        if cmd in ("snapshot", "clip"):
            return await self._media_command(cmd, args, chat_id)
        return f"Unknown command /{cmd}. Send /help for the list."

    async def _mute(self, cmd: str, args: list[str], chat_id: int) -> str:
        camera: str | None = None
        duration: float | None = None
        rest = list(args)
        if cmd == "mute":
            if not rest:
                return "Usage: /mute <duration> [camera], e.g. /mute 30m or /mute 2h front_door"
            try:
                duration = text.parse_duration(rest.pop(0))
            except ValueError as e:
                return f"{e}. Usage: /mute <duration> [camera]"
        if rest:
            camera = rest[0]
            if camera not in self.names:
                return self._unknown_camera(camera)
        state = await self._command_state(cast("CommandName", cmd), camera, duration, chat_id)
        if state is None:
            return f"/{cmd}: no answer from the arming module."
        who = self.names.get(camera, camera) if camera else "all cameras"
        if cmd == "unmute":
            return f"Unmuted {who}.\n" + text.state_text(state, time.time(), self.tz, self.names)
        until = state.muted_until.get(camera or ALL_CAMERAS, time.time() + (duration or 0))
        return (
            f"Muted {who} for {text.format_duration(duration or 0)} "
            f"(until {local_time(until, self.tz).strftime('%H:%M')})."
        )

    def _unknown_camera(self, camera: str) -> str:
        return f"Unknown camera {camera!r}. Cameras: {', '.join(self.names) or 'none'}"

    async def _command_state(
        self, cmd: CommandName, camera: str | None, duration: float | None, chat_id: int
    ) -> ControlState | None:
        fut: asyncio.Future[ControlState] = asyncio.get_running_loop().create_future()
        self._state_waiters.append(fut)
        await self.bus.publish(
            topics.CONTROL.name,
            ControlCommand(
                command=cmd,
                camera_id=camera,
                duration_s=duration,
                source=f"telegram:{chat_id}",
                request_id=secrets.token_hex(6),
            ),
        )
        try:
            return await asyncio.wait_for(fut, self.cfg.command_timeout_s)
        except TimeoutError:
            return None
        finally:
            if fut in self._state_waiters:
                self._state_waiters.remove(fut)

    async def _media_command(self, cmd: str, args: list[str], chat_id: int) -> str | None:
        rest = list(args)
        seconds: float | None = None
        cameras = list(self.names)
        if rest and rest[0] in self.names:
            cameras = [rest.pop(0)]
        elif rest and not rest[0].replace(".", "", 1).isdigit():
            return self._unknown_camera(rest[0])
        if cmd == "clip":
            try:
                seconds = max(1.0, min(60.0, float(rest[0]))) if rest else 10.0
            except ValueError:
                return "Usage: /clip [camera] [seconds]"
            cameras = cameras[:1]
        if not cameras:
            return "No camera is configured."
        results = await asyncio.gather(
            *(self._ask_media(cmd, cam, seconds, chat_id) for cam in cameras)
        )
        missing = [self.names[c] for c, ok in zip(cameras, results, strict=True) if not ok]
        if missing:
            return f"No {cmd} from {', '.join(missing)} (camera offline or busy?)."
        return None

    async def _ask_media(self, cmd: str, camera: str, seconds: float | None, chat_id: int) -> bool:
        from aiogram.types import BufferedInputFile

        rid = secrets.token_hex(6)
        key = f"manual-{rid}"
        fut: asyncio.Future[MediaArtifact] = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        try:
            await self.bus.publish(
                topics.CONTROL.name,
                ControlCommand(
                    command="snapshot" if cmd == "snapshot" else "clip",
                    camera_id=camera,
                    duration_s=seconds,
                    source=f"telegram:{chat_id}",
                    request_id=rid,
                ),
            )
            art = await asyncio.wait_for(fut, self.cfg.command_timeout_s + (seconds or 0.0))
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(key, None)
        assert self.bot is not None
        name = self.names.get(camera, camera)
        when = local_time(art.created_at, self.tz).strftime("%Y-%m-%d %H:%M:%S")
        limit = (
            self.cfg.max_photo_bytes if art.kind.startswith("snapshot") else self.cfg.max_file_bytes
        )
        data = await self._read(art.path, limit)
        if isinstance(data, str):
            await self._reply(chat_id, f"{name} {when}: not sent: {data}", None)
            return True
        file = BufferedInputFile(data, filename=Path(art.path).name)
        cap = f"{name}, {when}"
        with contextlib.suppress(Exception):
            if art.kind == "clip":
                await self.bot.send_video(
                    chat_id=chat_id, video=file, caption=cap, supports_streaming=True
                )
            elif art.kind == "gif":
                await self.bot.send_animation(chat_id=chat_id, animation=file, caption=cap)
            else:
                await self.bot.send_photo(chat_id=chat_id, photo=file, caption=cap)
        return True

    async def _status_text(self) -> str:
        rows = await self.ctx.executor.run(text.read_events, self.db_path, 3)
        disk = await self.ctx.executor.run(text.disk_free, self.storage_root)
        temp = await self.ctx.executor.run(text.cpu_temperature)
        return text.status_text(
            state=self.state,
            health=self.health_report,
            names=self.names,
            events=rows,
            disk=disk,
            uptime_s=time.monotonic() - self._started_mono,
            temperature_c=temp,
            now=time.time(),
            tz=self.tz,
        )

    async def _reply(self, chat_id: int, body: str, reply_to: int | None) -> None:
        from aiogram.exceptions import TelegramRetryAfter
        from aiogram.types import ReplyParameters

        assert self.bot is not None
        reply = (
            ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
            if reply_to
            else None
        )
        for _ in range(3):
            try:
                await self.bot.send_message(
                    chat_id=chat_id, text=body[:4096], reply_parameters=reply
                )
                return
            except TelegramRetryAfter as e:
                await asyncio.sleep(e.retry_after)
            except Exception as e:
                self.log.warning("telegram_reply_failed", chat_id=chat_id, error=repr(e))
                return

    def metrics(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = dict(self.counts)
        out["suppressed"] = self.gate.suppressed
        if self.outbox is not None:
            out.update(self.outbox.metrics())
        return out
