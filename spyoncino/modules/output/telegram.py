"""Telegram: rich alerts to allowlisted chats, and commands from them.

Safe by default: the module is enabled but inert until a bot token is configured (secrets file
or ``SPYONCINO_TELEGRAM__TOKEN``); only chats listed in ``chat_ids`` receive alerts or may
command, and anything from anyone else is ignored without a reply (logged with the sender id and
counted), so no stranger can claim the bot or learn that it exists.

Alerts: one per activity (``docs/events.md``), the first moment it is an ``alert``: its snapshot
photo with a caption (``2 people, 1 car · Front door · 14:02-14:03``) and an inline keyboard
(Mute 1 h, Snapshot, Disarm). As the activity grows the caption of that photo is edited
(``editMessageCaption``, through the outbox: a newer edit supersedes one still pending), no new
message; when it closes the GIF (``sendAnimation``) or clip (``sendVideo``) follows as a reply to
that photo. Activities that stay ``detection`` are not sent. Text instead of a file over
Telegram's limits; silent during quiet hours. Nothing is sent while disarmed or muted
(``control.state``). Every message goes through the persistent outbox
(``spyoncino.helpers.outbox``): stored before sending, in order per chat, 429-aware, retried.

Commands travel as ``control.command`` on the bus and are carried out by the modules that own
the state (arming, snapshot/clip writers); this module only asks and reports the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from datetime import time as dtime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, SecretStr

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import ModuleConfig, ModuleConfigError
from spyoncino.helpers.files import local_time
from spyoncino.helpers.outbox import (
    AlertGate,
    DeliveredUnknown,
    OutboxChannel,
    OutboxItem,
    OutboxSettings,
    PermanentError,
    RetryAfter,
    ServerError,
    TransientError,
)
from spyoncino.helpers.requests import Requester
from spyoncino.helpers.updates import DEFAULT_DIR as UPDATE_DIR
from spyoncino.modules.output import _aiogram
from spyoncino.modules.output import _telegram_text as text
from spyoncino.modules.output._telegram_commands import TelegramCommands
from spyoncino.schemas import topics
from spyoncino.schemas.control import ControlState
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.health import CameraHealthNotice
from spyoncino.schemas.media import MediaArtifact
from spyoncino.schemas.status import HealthReport

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.types import InlineKeyboardMarkup

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
        description="User ids allowed to /arm, /disarm, /mute and /unmute (and the buttons); "
        "empty: everyone in chat_ids.",
    )
    member_commands: tuple[Literal["arm", "disarm", "mute", "unmute"], ...] = Field(
        default=(),
        max_length=4,
        description="State-changing commands members who are not in admin_ids may send too "
        "(reading ones, /status /events /health /snapshot /clip, are always allowed).",
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
    snapshot_wait_s: float = Field(
        default=10.0,
        ge=1.0,
        le=600.0,
        description="An event still without a snapshot this long after it started is alerted "
        "as text (the snapshot writer failed: disk full, no picture).",
    )
    followup: Literal["gif", "clip", "both", "none"] = Field(
        default="gif", description="What is sent as a reply to the alert photo when it is ready."
    )
    status_page_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Base URL of the status page; captions then link to the event.",
    )
    health_alerts: bool = Field(
        default=True,
        description="Send camera-health alerts and recoveries (stream lost, covered, frozen, "
        "moved); they follow mutes, not disarming.",
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
    update_dir: Path = Field(
        default=UPDATE_DIR,
        description="The over-the-air updater's exchange folder: /update writes its request "
        "there, and each new result.json is told to the chats (docs/updates.md).",
    )
    update_check_daily: bool = Field(
        default=False,
        description="Ask the updater once a day whether a newer version exists, and tell the "
        "chats once per new version.",
    )
    update_poll_s: float = Field(
        default=5.0,
        ge=0.05,
        le=600.0,
        description="Seconds between looks at the updater's result files (a stat; no writes).",
    )
    update_wait_s: float = Field(
        default=60.0,
        ge=0.5,
        le=600.0,
        description="How long /update waits for the updater's answer to its check.",
    )


TelegramConfig = Config


class UnreadableSuccess(Exception):
    """The Bot API answered 2xx, but the body could not be read: the message most likely went."""


def _session_class(base: type[Any]) -> type[Any]:
    """aiogram's session, telling a 2xx it could not read from any other unreadable answer.

    aiogram raises the same ``ClientDecodeError`` for both; only the first means the request
    was carried out (re-sending would repeat the message), so it becomes ``UnreadableSuccess``.
    """

    class Session(base):  # type: ignore[misc]
        def check_response(self, bot: Any, method: Any, status_code: int, content: str) -> Any:
            from aiogram.exceptions import ClientDecodeError

            try:
                return super().check_response(bot, method, status_code, content)
            except ClientDecodeError as e:
                if 200 <= status_code < 300:
                    raise UnreadableSuccess(
                        f"{status_code} but the answer could not be read ({len(content)} bytes)"
                    ) from e
                raise

    return Session


def _read_limited(path: str, limit: int) -> bytes | str:
    size = Path(path).stat().st_size
    if size > limit:
        return f"{size / MB:.1f} MB is over the {limit / MB:.0f} MB limit"
    return Path(path).read_bytes()


class TelegramOutput(TelegramCommands, OutboxChannel[Config]):
    Config: ClassVar[type[ModuleConfig]] = Config
    channel: ClassVar[str] = CHANNEL

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.tz: str | None = None
        self.names: dict[str, str] = {}
        self.db_path = Path("events.sqlite3")
        self.storage_root = Path(".")
        #: asks storage/index for /events and /status (the bot never opens the index)
        self.index = Requester(self.bus, ctx.instance)
        self.bot: Bot | None = None
        self.state = ControlState(armed=True)
        self.health_report: HealthReport | None = None
        self._waiters: dict[str, asyncio.Future[MediaArtifact]] = {}
        self._state_waiters: list[asyncio.Future[ControlState]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._started_mono = time.monotonic()
        #: started without a token or chats: a change that brings both starts the bot (_inert)
        self._inert = False
        self.counts: dict[str, int] = {"unauthorized": 0, "commands": 0}
        #: event id -> the caption last sent or queued for it (edits only when it changes)
        self._captions: OrderedDict[str, str] = OrderedDict()
        self.clock = time.time
        self._marker = None
        self._bot_ready = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------
    async def check(self, app: AppConfig) -> None:
        cfg = app.section(self.name or CHANNEL, Config)
        # aiogram's own check, without importing aiogram on the event loop at configure time
        # (its import is what start() moves to a worker): <digits>:<secret>, no whitespace
        token = cfg.token.get_secret_value() if cfg.token is not None else None
        if token is not None:
            left, sep, right = token.partition(":")
            if any(c.isspace() for c in token) or not sep or not left.isdigit() or not right:
                # never echo the token itself
                raise ModuleConfigError(
                    "telegram.token: not a bot token (expected <digits>:<secret> from BotFather)"
                )
        if self._live():
            # running: what the bot session was built from cannot change in place
            for key in ("token", "api_base_url", "commands", "request_timeout_s"):
                if getattr(self.cfg, key) != getattr(cfg, key):
                    raise ModuleConfigError(f"telegram.{key}: a change takes effect on restart")

    async def configure(self, app: AppConfig) -> None:
        await self.check(app)  # refuses before anything is adopted
        self.cfg = app.section(self.name or CHANNEL, Config)
        self.tz = app.runtime.timezone
        self.names = app.camera_names(enabled_only=True)
        self.db_path = app.storage.db_path
        self.storage_root = app.storage.root
        if self._live():
            self.adopt_settings()
        elif self._inert and self.cfg.token is not None and self.cfg.chat_ids:
            # a token and chats given at run time (the status page's Telegram form): _inert
            await self.start()

    async def start(self) -> None:
        self._started_mono = time.monotonic()
        self._inert = True  # until both a token and chats are configured
        if self.cfg.token is None:
            self.log.info("telegram_disabled", reason="no token configured")
            self.set_state("ok", "disabled: no token")
            return
        if not self.cfg.chat_ids:
            self.log.warning("telegram_disabled", reason="chat_ids is empty: nobody to alert")
            self.set_state("degraded", "no chat_ids: nobody to alert")
            return
        self._inert = False
        self._bot_ready = asyncio.Event()
        self.index = Requester(self.bus, self.ctx.instance)
        # alerts are taken (and kept in the outbox) from now on; the bot itself is built in
        # the background, so the modules started after this one (cameras) do not wait for it
        outbox = await self.open_outbox(self.db_path, rate_for=self._rate)
        self.gate = AlertGate(self.cfg.alert_kinds, budget=outbox.admit, clock=self.ctx.clock)
        self.gate.state = self.state
        self.listen()
        self.subscribe(topics.HEALTH.name, self._on_health, policy="latest")
        self.spawn(self._connect(), "connect")
        self.set_state("ok", f"{len(self.cfg.chat_ids)} chat(s)")

    def _live(self) -> bool:
        """Started with a token and chats (its bot may still be being built)."""
        return not self._inert and getattr(self, "outbox", None) is not None

    async def _connect(self) -> None:
        """Import aiogram and build the bot, then start polling; deliveries wait for it."""
        # aiogram builds hundreds of pydantic models on import (~3 s and 128 MB here): import
        # it off the event loop, with its models built on first use (_aiogram.py)
        warm = _aiogram.SENDING + (_aiogram.POLLING if self.cfg.commands else ())
        await self.ctx.executor.run(_aiogram.load, *warm)
        from aiogram import Bot
        from aiogram.client.session.aiohttp import AiohttpSession
        from aiogram.client.telegram import TelegramAPIServer

        assert self.cfg.token is not None
        session = _session_class(AiohttpSession)(
            api=TelegramAPIServer.from_base(self.cfg.api_base_url)
        )
        session.timeout = self.cfg.request_timeout_s
        self.bot = Bot(token=self.cfg.token.get_secret_value(), session=session)
        self._bot_ready.set()
        if self.cfg.commands:
            self.spawn(self._poll(), "poll")
        self.spawn(self._watch_updates(), "updates")
        self.log.info("telegram_started", chats=len(self.cfg.chat_ids), commands=self.cfg.commands)

    async def stop(self) -> None:
        handlers = list(self._handlers)
        for t in handlers:
            t.cancel()
        for t in handlers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await super().stop()
        self.index.close()
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
        await super()._on_state(msg)
        self.state = msg.payload
        waiters, self._state_waiters = self._state_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(msg.payload)

    async def _on_health(self, msg: Message[HealthReport]) -> None:
        self.health_report = msg.payload

    def suppressed_reason(self, camera_id: str, now: float | None = None) -> str | None:
        """Why no alert goes out for ``camera_id`` now (None: it does)."""
        return self.gate.reason(camera_id, now)

    async def _on_artifact(self, art: MediaArtifact) -> None:
        # a command's own snapshot or clip (manual-<request_id>) answers it, it is no alert
        waiter = self._waiters.get(art.event_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(art)
            return
        before = self.gate.suppressed
        await super()._on_artifact(art)
        if self.gate.suppressed > before:
            self.log.info(
                "alert_suppressed",
                event_id=art.event_id,
                camera=art.camera_id,
                reason=self.gate.last_reason,
            )

    async def _enqueue(self, ev: EventNotice, art: MediaArtifact | None) -> None:
        outbox = self.outbox
        assert outbox is not None
        kind = "text" if art is None else art.kind
        if art is None:
            self.log.warning("alert_without_snapshot", event_id=ev.event_id, camera=ev.camera_id)
            cap = text.caption(self._info(ev), self.tz, self.cfg.status_page_url)
            self._remember_caption(ev.event_id, cap)
            payload: dict[str, Any] = {
                "text": f"{cap}\n(no picture: the snapshot was not made)",
                "camera_name": self.names.get(ev.camera_id, ev.camera_id),
                "keyboard": True,
            }
        elif art.kind == "snapshot":
            payload = self._media_payload(art)
            payload["caption"] = text.caption(self._info(ev), self.tz, self.cfg.status_page_url)
            self._remember_caption(ev.event_id, payload["caption"])
            payload["over_budget"] = outbox.take_over_budget(art.camera_id)
        elif self.cfg.followup in (art.kind, "both"):
            payload = self._media_payload(art)
        else:
            return
        for chat in self.cfg.chat_ids:
            await outbox.enqueue(
                recipient=str(chat),
                event_id=ev.event_id,
                camera_id=ev.camera_id,
                kind=kind,
                payload=payload,
            )

    def _remember_caption(self, event_id: str, cap: str) -> None:
        self._captions[event_id] = cap
        self._captions.move_to_end(event_id)
        while len(self._captions) > 512:
            self._captions.popitem(last=False)

    async def _on_update(self, ev: EventNotice) -> None:
        """An alerted activity grew or closed: edit its photo's caption when the text changed."""
        old = self._captions.get(ev.event_id)
        cap = text.caption(self._info(ev), self.tz, self.cfg.status_page_url)
        if old is None or old == cap or self.outbox is None:
            return
        self._remember_caption(ev.event_id, cap)
        for chat in self.cfg.chat_ids:
            await self.outbox.enqueue(
                recipient=str(chat),
                event_id=ev.event_id,
                camera_id=ev.camera_id,
                kind="caption",
                payload={"caption": cap},
                supersede=True,
            )

    def _info(self, ev: EventNotice) -> text.AlertInfo:
        counts: dict[str, int] = {}
        for o in sorted(ev.objects, key=lambda o: o.label != "person"):  # people first
            counts[o.label] = counts.get(o.label, 0) + 1
        return text.AlertInfo(
            event_id=ev.event_id,
            camera_id=ev.camera_id,
            camera_name=self.names.get(ev.camera_id, ev.camera_id),
            kind=ev.kind,
            labels=ev.labels,
            score=ev.top_score,
            zones=ev.zones,
            started_at=ev.started_at,
            counts=tuple(counts.items()),
            until=ev.ended_at if ev.ended_at is not None else ev.updated_at,
        )

    async def _enqueue_health(self, notice: CameraHealthNotice) -> None:
        assert self.outbox is not None
        payload = {
            "text": text.health_notice_text(notice, self.tz),
            "camera_name": notice.camera_name,
            "keyboard": False,
        }
        for chat in self.cfg.chat_ids:
            await self.outbox.enqueue(
                recipient=str(chat),
                event_id=notice.notice_id,
                camera_id=notice.camera_id,
                kind=f"health_{notice.phase}",
                payload=payload,
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
        # built in the background by start(); nothing of aiogram is imported on the event
        # loop before its import in the worker has finished
        await self._bot_ready.wait()
        from aiogram.exceptions import (
            ClientDecodeError,
            TelegramAPIError,
            TelegramEntityTooLarge,
            TelegramNetworkError,
            TelegramRetryAfter,
            TelegramServerError,
        )

        try:
            return await self._send_item(item)
        except UnreadableSuccess as e:
            raise DeliveredUnknown(str(e)) from e
        except ClientDecodeError as e:  # an error page instead of the API's answer
            raise TransientError(f"unreadable answer: {e.message}") from e
        except TelegramRetryAfter as e:
            raise RetryAfter(e.retry_after, "429 Too Many Requests") from e
        except TelegramEntityTooLarge as e:
            raise PermanentError("file too large for the Bot API") from e
        except TelegramServerError as e:  # the server is up: the chat's queue goes on
            raise ServerError(f"{type(e).__name__}: {e.message}") from e
        except TelegramNetworkError as e:
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
        if item.kind == "caption":
            return await self._edit_caption(bot, chat, item)
        if item.kind in ("gif", "clip"):
            reply_to = item.related.get("snapshot") or item.related.get("text")
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
            chat_id=chat,
            text=str(p.get("text", ""))[:4096],
            disable_notification=silent,
            reply_markup=self.keyboard(item.camera_id) if p.get("keyboard") else None,
        )
        return str(sent.message_id)

    async def _edit_caption(self, bot: Bot, chat: int, item: OutboxItem) -> str | None:
        """Edit the alert's photo caption (or its text, when it went as text)."""
        from aiogram.exceptions import TelegramBadRequest

        cap = str(item.payload.get("caption", ""))
        photo, note = item.related.get("snapshot"), item.related.get("text")
        try:
            if photo:
                await bot.edit_message_caption(
                    chat_id=chat,
                    message_id=int(photo),
                    caption=cap[:1024],
                    reply_markup=self.keyboard(item.camera_id),
                )
                return photo
            if note:
                await bot.edit_message_text(
                    chat_id=chat,
                    message_id=int(note),
                    text=f"{cap}\n(no picture: the snapshot was not made)"[:4096],
                    reply_markup=self.keyboard(item.camera_id),
                )
                return note
        except TelegramBadRequest as e:
            if "not modified" in e.message:
                return None  # the same text: nothing to do
            raise
        return None  # the alert itself was never delivered: nothing to edit

    def metrics(self) -> dict[str, float | int | str]:
        return {**self.counts, **super().metrics()}
