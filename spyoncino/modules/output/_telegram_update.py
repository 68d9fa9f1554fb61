"""Telegram and the over-the-air updater: ``/update``, its confirm button, and the results.

Part of the ``telegram`` module. The updater runs as root in its own unit and is never
imported here (``spyoncino.helpers.updates`` writes its request file and reads its answers):

- ``/update`` (or ``/update check``) asks the updater for a check and shows the running
  version and whether a newer one exists, with an *Update to X* button and *Cancel*;
  ``/update X`` offers X itself (a downgrade too). Only admins (``admin_ids``) may.
- Pressing *Update to X* writes the update request; the updater's result (updated, rolled
  back, already up to date, no such version, ...) is told to every chat in ``chat_ids`` when
  ``result.json`` changes, whoever asked (Telegram, the status page or ``spyoncino update``).
- ``update_check_daily``: once a day a check is asked for, and a newer version is told once.

What was told is remembered in ``telegram.json`` beside the updater's files, so a restart
(an update restarts the service) neither repeats a result nor loses one. Nothing is written
on a box where nothing happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spyoncino import __version__
from spyoncino.core.contracts import BaseModule
from spyoncino.helpers import updates as up
from spyoncino.helpers.files import atomic_write_bytes

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.types import CallbackQuery, InlineKeyboardMarkup

    from spyoncino.modules.output.telegram import TelegramConfig

MARKER = "telegram.json"
DAY_S = 86400.0
USAGE = "Usage: /update [check | <version>], e.g. /update or /update 0.2.0"
NOT_SET_UP = (
    "Over-the-air updates are not set up on this box (installed by hand, without the A/B "
    "slots): upgrade it with pip as docs/install.md says."
)


def _load_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_bytes()[:4096])
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _save_marker(folder: Path, marker: dict[str, Any]) -> None:
    atomic_write_bytes(folder / MARKER, json.dumps(marker, sort_keys=True).encode())


class TelegramUpdates(BaseModule):
    """The update half of the Telegram commands (``TelegramCommands`` inherits it)."""

    cfg: TelegramConfig
    bot: Bot | None
    #: wall clock of the daily check (tests replace it)
    clock: Callable[[], float]
    #: rounds the result watcher has finished (a test waits for rounds, not for time)
    update_rounds: int = 0
    #: what was told already (``telegram.json``); None until first read
    _marker: dict[str, Any] | None
    #: /update checks in flight: their answer is theirs to show, not the daily check's to tell
    _checking: int = 0

    async def _reply(
        self,
        chat_id: int,
        body: str,
        reply_to: int | None,
        markup: InlineKeyboardMarkup | None = None,
    ) -> bool:
        raise NotImplementedError

    def _admin(self, user_id: int | None) -> bool:
        return not self.cfg.admin_ids or user_id in self.cfg.admin_ids

    # -- /update ------------------------------------------------------------------------------
    async def _update_command(self, args: list[str], chat_id: int, reply_to: int | None) -> None:
        """``/update [check | <version>]`` from an admin: answer, with the confirm button."""
        if len(args) > 1 or (args and args[0] != "check" and not up.valid_version(args[0])):
            await self._reply(chat_id, USAGE, reply_to)
            return
        folder = self.cfg.update_dir
        files = await self.ctx.executor.run(up.read_files, folder)
        if files is None:
            await self._reply(chat_id, NOT_SET_UP, reply_to)
            return
        await self._load(files)
        if args and args[0] != "check":
            target = args[0]
            if target == __version__:
                await self._reply(chat_id, f"Already running {target}.", reply_to)
                return
            body = f"Running {__version__}. Update to {target}?"
            await self._reply(chat_id, body, reply_to, self._confirm(target))
            return
        self._checking += 1
        try:
            await self._check_and_answer(folder, files, chat_id, reply_to)
        finally:
            self._checking -= 1

    async def _check_and_answer(
        self, folder: Path, files: up.UpdateFiles, chat_id: int, reply_to: int | None
    ) -> None:
        try:
            check = await self._fresh_check(folder, files)
        except up.RequestPending as e:
            await self._reply(
                chat_id,
                f"Running {__version__}: {e} (the updater is busy, or spyoncino-update.path is "
                "not running); its result comes here.",
                reply_to,
            )
            return
        if check is None:
            last = files.check
            when = ""
            if last is not None:
                when = f" The last check ({_ago(self.clock() - up.stamp(last))}) said: " + str(
                    last.get("message", "")
                )
            await self._reply(
                chat_id,
                f"Running {__version__}. The updater did not answer within "
                f"{self.cfg.update_wait_s:.0f} s (busy with an update, or "
                f"spyoncino-update.path is not running).{when}",
                reply_to,
            )
            return
        outcome = check.get("outcome")
        newer = up.UpdateFiles(None, check, None).newer()
        if newer is not None:
            assert self._marker is not None
            if self._marker.get("announced") != newer:  # the daily check need not tell it again
                await self._remember(announced=newer)
            body = f"Running {__version__}. Spyoncino {newer} is available."
            await self._reply(chat_id, body, reply_to, self._confirm(newer))
        elif outcome == "up_to_date":
            await self._reply(chat_id, f"Running {__version__}: already up to date.", reply_to)
        else:
            why = str(check.get("message", "no answer"))[:600]
            await self._reply(
                chat_id, f"Running {__version__}. Could not check for updates: {why}", reply_to
            )

    async def _fresh_check(self, folder: Path, files: up.UpdateFiles) -> dict[str, Any] | None:
        """Ask the updater for a check and wait for its answer (None: none in time)."""
        before = up.stamp(files.check)
        await self.ctx.executor.run(up.write_request, folder, "check")
        deadline = time.monotonic() + self.cfg.update_wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(min(self.cfg.update_poll_s, 1.0))
            now = await self.ctx.executor.run(up.read_files, folder)
            if now is not None and now.check is not None and up.stamp(now.check) != before:
                return now.check
        return None

    @staticmethod
    def _confirm(version: str) -> InlineKeyboardMarkup:
        from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

        return InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    InlineKeyboardButton(text=f"Update to {version}", callback_data=f"u:{version}"),
                    InlineKeyboardButton(text="Cancel", callback_data="u:-"),
                ]
            ]
        )

    async def _update_button(self, q: CallbackQuery, chat_id: int, value: str) -> None:
        """*Update to X* (``u:X``) or *Cancel* (``u:-``) under an ``/update`` answer."""
        assert self.bot is not None
        if not self._admin(q.from_user.id):
            with contextlib.suppress(Exception):
                await self.bot.answer_callback_query(q.id, text="Only an admin may /update.")
            await self._reply(chat_id, "Only an admin may /update.", None)
            return
        if q.message is not None:  # one press: the buttons go away
            with contextlib.suppress(Exception):
                await self.bot.edit_message_reply_markup(
                    chat_id=chat_id, message_id=q.message.message_id, reply_markup=None
                )
        if value == "-":
            with contextlib.suppress(Exception):
                await self.bot.answer_callback_query(q.id, text="Cancelled")
            await self._reply(chat_id, "Update cancelled.", None)
            return
        try:
            await self.ctx.executor.run(up.write_request, self.cfg.update_dir, "update", value)
        except OSError as e:
            self.log.warning("update_request_failed", error=repr(e))
            with contextlib.suppress(Exception):
                await self.bot.answer_callback_query(q.id)
            missing = not await self.ctx.executor.run(self.cfg.update_dir.is_dir)
            await self._reply(
                chat_id,
                NOT_SET_UP if missing else f"The update could not be asked for: {e.strerror}.",
                None,
            )
            return
        self.log.info("update_requested", version=value, chat_id=chat_id, sender_id=q.from_user.id)
        with contextlib.suppress(Exception):
            await self.bot.answer_callback_query(q.id, text=f"Update to {value} requested")
        await self._reply(
            chat_id,
            f"Update to {value} requested. The box installs it next to {__version__}, checks "
            "it, restarts into it and keeps it only if it stays healthy, else goes back. The "
            "result comes here in a few minutes.",
            None,
        )

    # -- results and the daily check ----------------------------------------------------------
    async def _watch_updates(self) -> None:
        """Tell the chats each new update result, and (daily check) each new version once."""
        folder = self.cfg.update_dir
        while True:
            files = await self.ctx.executor.run(up.read_files, folder)
            if files is not None:
                await self._load(files)
                await self._tell_result(files)
                if self.cfg.update_check_daily:
                    await self._daily(folder, files)
            self.update_rounds += 1
            await asyncio.sleep(self.cfg.update_poll_s)

    async def _load(self, files: up.UpdateFiles) -> None:
        if self._marker is None:
            loaded = await self.ctx.executor.run(_load_marker, self.cfg.update_dir)
            # first start with this feature: what is already there is old news
            self._marker = loaded or {"reported_at": up.stamp(files.result)}

    async def _tell(self, body: str) -> bool:
        sent = [await self._reply(chat, body, None) for chat in self.cfg.chat_ids]
        return any(sent)

    async def _tell_result(self, files: up.UpdateFiles) -> None:
        res = files.result
        assert self._marker is not None
        if res is None or up.stamp(res) <= float(self._marker.get("reported_at", 0.0)):
            return
        if await self._tell(up.result_words(res)):  # all sends failed: the next round retries
            self.log.info("update_result_told", outcome=res.get("outcome"))
            await self._remember(reported_at=up.stamp(res))

    async def _daily(self, folder: Path, files: up.UpdateFiles) -> None:
        assert self._marker is not None
        newer = files.newer()
        fresh = newer is not None and newer not in (__version__, self._marker.get("announced"))
        fresh = fresh and not self._checking
        told = f"Spyoncino {newer} is available (running {__version__}); /update to install."
        if fresh and await self._tell(told):
            await self._remember(announced=newer)
        now = self.clock()
        last = max(float(self._marker.get("checked_at", 0.0)), up.stamp(files.check))
        if now - last >= DAY_S and files.requested is None:
            try:
                await self.ctx.executor.run(up.write_request, folder, "check")
            except OSError as e:
                self.log.warning("update_check_request_failed", error=repr(e))
                return
            self.log.info("update_check_requested")
            await self._remember(checked_at=now)

    async def _remember(self, **values: Any) -> None:
        assert self._marker is not None
        self._marker.update(values)
        try:
            await self.ctx.executor.run(_save_marker, self.cfg.update_dir, dict(self._marker))
        except OSError as e:
            self.log.warning("update_marker_not_saved", error=repr(e))


def _ago(seconds: float) -> str:
    if seconds < 120:
        return "just now"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * DAY_S:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / DAY_S:.0f} days ago"
