"""Telegram commands: long polling, the allowlist, and what each command does.

Part of the ``telegram`` module (``telegram.py`` holds its Config, alerts and delivery); split
out because the module passed the house's ~400-line mark. Commands travel as
``control.command`` on the bus and the modules that own the state carry them out; this code
only asks, waits for the answer (``control.state`` or a ``manual-<request_id>`` artifact) and
replies. Anything from a chat that is not allowlisted gets no reply at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from spyoncino.helpers.files import local_time
from spyoncino.helpers.outbox import ALL_CAMERAS
from spyoncino.helpers.requests import Requester, RequestError
from spyoncino.helpers.updates import valid_version
from spyoncino.modules.output import _telegram_text as text
from spyoncino.modules.output._telegram_update import TelegramUpdates
from spyoncino.schemas import topics
from spyoncino.schemas.control import MAX_MUTE_S, CommandName, ControlCommand, ControlState
from spyoncino.schemas.media import MediaArtifact
from spyoncino.schemas.status import HealthReport

#: commands that change what the box does; only admins (when admin_ids is set) may send them,
#: unless ``telegram.member_commands`` lists them
MUTATING = frozenset({"arm", "disarm", "mute", "unmute", "update"})
#: seconds a command waits for the event index's answer
INDEX_TIMEOUT_S = 10.0

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Update
    from aiogram.types import Message as TgMessage

    from spyoncino.modules.output.telegram import TelegramConfig


class TelegramCommands(TelegramUpdates):
    """The command half of ``TelegramOutput`` (which inherits it)."""

    cfg: TelegramConfig
    bot: Bot | None
    names: dict[str, str]
    tz: str | None
    db_path: Path
    index: Requester
    storage_root: Path
    state: ControlState
    health_report: HealthReport | None
    counts: dict[str, int]
    _waiters: dict[str, asyncio.Future[MediaArtifact]]
    _state_waiters: list[asyncio.Future[ControlState]]
    _handlers: set[asyncio.Task[None]]
    _started_mono: float
    _username: str = ""

    async def _read(self, path: str, limit: int) -> bytes | str:
        raise NotImplementedError

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
                    me = await bot.get_me()
                    self._username = (me.username or "").lower()
                    await bot.delete_webhook(drop_pending_updates=False)
                    await bot.set_my_commands(
                        [BotCommand(command=c, description=d) for c, d in text.COMMANDS]
                    )
                    ready = True
                # updates stay with the Bot API until every module has started: a /disarm
                # read before arming listens would go nowhere
                await self.ctx.started.wait()
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
                delay = min(delay * 2, 10.0)  # commands come back soon after an outage
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
        cmd, _, addressee = parts[0][1:].lower().partition("@")
        if addressee and self._username and addressee != self._username:
            return  # /status@another_bot in a shared group
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
        # callback data comes from the client: only what our own buttons carry is accepted
        # (m:<camera>:<whole seconds>, s:<camera>, d), within bounds, for a known camera
        data = (q.data or "")[:64].split(":")
        if (
            data[0] == "m"
            and len(data) == 3
            and data[1] in self.names
            and data[2].isdigit()
            and 0 < int(data[2]) <= MAX_MUTE_S
        ):
            args, cmd = [f"{int(data[2])}s", data[1]], "mute"
        elif data[0] == "s" and len(data) == 2 and data[1] in self.names:
            args, cmd = [data[1]], "snapshot"
        elif data == ["d"]:
            args, cmd = [], "disarm"
        elif data[0] == "u" and len(data) == 2 and (data[1] == "-" or valid_version(data[1])):
            self.counts["commands"] += 1
            await self._update_button(q, chat_id, data[1])  # u:<version> or u:- (cancel)
            return
        else:  # forged, or a button of an older version: stop the client's spinner, do nothing
            with contextlib.suppress(Exception):
                await self.bot.answer_callback_query(q.id)
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
        if not self._admin(user_id) and cmd in MUTATING and cmd not in self.cfg.member_commands:
            return f"Only an admin may /{cmd}."
        if cmd in ("help", "start"):
            return text.HELP
        if cmd == "status":
            return await self._status_text()
        if cmd == "health":
            return text.health_text(self.health_report)
        if cmd == "events":
            flt = text.parse_events_args(args, self.names, time.time(), self.tz)
            if isinstance(flt, str):
                return flt
            try:
                rows = await self._events(flt.limit, flt)
            except RequestError as e:
                return f"/events: the event index does not answer ({e})."
            return text.events_text(rows, self.names, self.tz, flt != text.EventFilter(flt.limit))
        if cmd in ("arm", "disarm"):
            state = await self._command_state(cast("CommandName", cmd), None, None, chat_id)
            if state is None:
                return f"/{cmd}: no answer from the arming module."
            return text.state_text(state, time.time(), self.tz, self.names)
        if cmd in ("mute", "unmute"):
            return await self._mute(cmd, args, chat_id)
        if cmd in ("snapshot", "clip"):
            return await self._media_command(cmd, args, chat_id)
        if cmd == "update":
            await self._update_command(args, chat_id, None)
            return None
        return f"Unknown command /{cmd[:32]}. Send /help for the list."

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
                return f"{e}. Usage: /mute <duration, at most 7 d> [camera]"
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
        return f"Unknown camera {text.quoted(camera)}. Cameras: {', '.join(self.names) or 'none'}"

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

    async def _events(
        self, limit: int, flt: text.EventFilter | None = None
    ) -> list[dict[str, Any]]:
        """The newest events matching ``flt``, as storage/index answers."""
        page = await self.index.ask(
            topics.INDEX_EVENTS,
            text.events_request(limit, flt),
            topics.INDEX_EVENTS_REPLY,
            timeout=INDEX_TIMEOUT_S,
        )
        return text.event_dicts(page)

    async def _status_text(self) -> str:
        try:
            rows = await self._events(3)
        except RequestError:  # the rest of the status is worth sending without them
            rows = []
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

    async def _reply(
        self,
        chat_id: int,
        body: str,
        reply_to: int | None,
        markup: InlineKeyboardMarkup | None = None,
    ) -> bool:
        """Send one text (with ``markup``, an inline keyboard); False when it did not go."""
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
                    chat_id=chat_id, text=body[:4096], reply_parameters=reply, reply_markup=markup
                )
                return True
            except TelegramRetryAfter as e:
                await asyncio.sleep(e.retry_after)
            except Exception as e:
                self.log.warning("telegram_reply_failed", chat_id=chat_id, error=repr(e))
                return False
        return False
