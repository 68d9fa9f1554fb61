"""``/update`` on Telegram against the Bot API emulator, with the real updater behind it.

The root unit is played by ``RootUpdater``: it serves each request file the module writes the
way ``spyoncino-update request`` does (``updater._serve_request`` on a fresh ``Updater``),
with the scripted systemd of ``tests/test_updater.py``. Wheels come from a ``file://`` index.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from spyoncino import __version__
from spyoncino import updater as up
from spyoncino.helpers import updates
from tests.modules.output.test_telegram import (
    Harness,
    MakeHarness,
    cfg,
    harness,
    reply_to,
    settled,
)
from tests.support.botapi import BotApiEmulator
from tests.support.wait import until
from tests.test_updater import FakeHost, installed, make_index, make_wheel

__all__ = ["harness"]

ADMIN, MEMBER = 111, 333
NEXT = "0.1.1" if __version__ != "0.1.1" else "0.1.2"


class RootUpdater:
    """What ``spyoncino-update.path`` + ``.service`` do on a box, in a thread."""

    def __init__(self, tmp_path: Path, index_url: str) -> None:
        self.paths = up.Paths(tmp_path / "opt", tmp_path / "state", tmp_path / "exchange")
        self.paths.exchange.mkdir(parents=True)
        self.host = FakeHost()
        self.settings = up.Settings(
            index_url=index_url, probation_s=10, config=str(tmp_path / "config.yaml")
        )
        installed(self.updater(), __version__, tmp_path)  # the running version, marked good
        self.served: list[dict[str, Any]] = []
        self.paused = False

    def updater(self) -> up.Updater:
        return up.Updater(self.paths, self.settings, self.host, clock=time.time)

    def serve_once(self) -> None:
        req = json.loads(self.paths.request.read_text())
        self.served.append(req)
        up._serve_request(argparse.Namespace(json=False), self.updater())

    async def run(self) -> None:
        while True:
            # polled, like the real root service's path unit: a file appearing fires no event
            await until(lambda: self.paths.request.exists() and not self.paused, 1e9, interval=0.02)
            await asyncio.to_thread(self.serve_once)


@pytest.fixture
async def root(tmp_path: Path) -> AsyncIterator[RootUpdater]:
    idx = tmp_path / "idx"
    wheels = [make_wheel(tmp_path / "w", v) for v in (__version__, NEXT)]
    r = RootUpdater(tmp_path / "box", make_index(idx, wheels))
    task = asyncio.create_task(r.run())
    yield r
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def ucfg(botapi: BotApiEmulator, root: RootUpdater, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "admin_ids": [ADMIN],
        "update_dir": str(root.paths.exchange),
        "update_poll_s": 0.05,
        "update_wait_s": 5.0,
    }
    return cfg(botapi, **{**base, **extra})


def buttons(call: Any) -> list[tuple[str, str]]:
    markup = call.json("reply_markup") or {}
    rows = markup.get("inline_keyboard", [])
    return [(b["text"], b["callback_data"]) for row in rows for b in row]


async def rounds(h: Harness, n: int = 3) -> None:
    """Wait until the module's result watcher has looked ``n`` more times: what it has not
    told (or asked) by then it will not. Polled: its round counter fires no event."""
    first = h.module.update_rounds
    await until(lambda: h.module.update_rounds >= first + n, what=f"{n} watcher rounds")


async def test_update_checks_offers_the_newer_version_and_the_result_comes_back(
    harness: MakeHarness, botapi: BotApiEmulator, root: RootUpdater
) -> None:
    h = await harness(**ucfg(botapi, root))
    botapi.push_message(ADMIN, ADMIN, "/update")
    offer = await botapi.wait_for(
        "sendMessage", predicate=lambda c: "is available" in c.params.get("text", "")
    )
    assert offer.params["text"] == f"Running {__version__}. Spyoncino {NEXT} is available."
    assert buttons(offer) == [(f"Update to {NEXT}", f"u:{NEXT}"), ("Cancel", "u:-")]
    assert root.served == [{"action": "check", "at": root.served[0]["at"]}]
    assert root.updater().active_version() == __version__  # a check changes nothing

    botapi.push_callback(ADMIN, ADMIN, f"u:{NEXT}", message_id=offer.result["message_id"])
    assert "requested" in await reply_to(botapi, ADMIN, f"Update to {NEXT} requested")
    edit = await botapi.wait_for("editMessageReplyMarkup")
    assert edit.params["message_id"] == str(offer.result["message_id"])  # one press only
    # the updater built the other slot, passed probation, and the chats are told
    told = await reply_to(botapi, ADMIN, "Updated")
    assert told == f"Updated: updated {__version__} -> {NEXT}: passed probation. Running {NEXT}."
    assert await reply_to(botapi, -222, "Updated") == told
    assert root.served[-1]["action"] == "update" and root.served[-1]["version"] == NEXT
    assert root.updater().active_version() == NEXT
    # told once
    await rounds(h)
    assert len([c for c in botapi.sent(ADMIN) if "Updated" in c.params["text"]]) == 1


async def test_a_release_that_fails_probation_is_told_as_rolled_back(
    harness: MakeHarness, botapi: BotApiEmulator, root: RootUpdater
) -> None:
    h = await harness(**ucfg(botapi, root))
    root.host.behaviour = "crash"
    botapi.push_message(ADMIN, ADMIN, f"/update {NEXT}")
    offer = await botapi.wait_for(
        "sendMessage", predicate=lambda c: "Update to" in c.params.get("text", "")
    )
    assert offer.params["text"] == f"Running {__version__}. Update to {NEXT}?"
    botapi.push_callback(ADMIN, ADMIN, f"u:{NEXT}", message_id=offer.result["message_id"])
    told = await reply_to(botapi, ADMIN, "rolled back")
    assert told.startswith(f"Update failed, rolled back: {NEXT} failed probation")
    assert told.endswith(f"Running {__version__}.")
    await h.module.stop()
    # a fresh module (the service restarted) does not tell it again
    h2 = await harness(**ucfg(botapi, root))
    botapi.push_message(ADMIN, ADMIN, "/help")
    await reply_to(botapi, ADMIN, "Spyoncino commands")
    await rounds(h2)
    assert len([c for c in botapi.sent(ADMIN) if "rolled back" in c.params["text"]]) == 1


async def test_up_to_date_no_such_version_cancel_and_bad_arguments(
    harness: MakeHarness, botapi: BotApiEmulator, tmp_path: Path
) -> None:
    only = make_index(tmp_path / "i1", [make_wheel(tmp_path / "w1", __version__)])
    root = RootUpdater(tmp_path / "box", only)
    task = asyncio.create_task(root.run())
    try:
        await harness(**ucfg(botapi, root))
        botapi.push_message(ADMIN, ADMIN, "/update check")
        assert await reply_to(botapi, ADMIN, "up to date") == (
            f"Running {__version__}: already up to date."
        )
        botapi.push_message(ADMIN, ADMIN, "/update 9.9.9")
        offer = await botapi.wait_for(
            "sendMessage", predicate=lambda c: "Update to 9.9.9?" in c.params.get("text", "")
        )
        botapi.push_callback(ADMIN, ADMIN, "u:9.9.9", message_id=offer.result["message_id"])
        told = await reply_to(botapi, ADMIN, "No such version")
        assert "spyoncino 9.9.9 is not on" in told and f"(it has {__version__})" in told
        assert root.updater().active_version() == __version__

        botapi.push_message(ADMIN, ADMIN, f"/update {NEXT}")
        offer = await botapi.wait_for(
            "sendMessage", predicate=lambda c: f"Update to {NEXT}?" in c.params.get("text", "")
        )
        n = len(root.served)
        botapi.push_callback(ADMIN, ADMIN, "u:-", message_id=offer.result["message_id"])
        await reply_to(botapi, ADMIN, "Update cancelled.")
        assert len(root.served) == n and not root.paths.request.exists()

        for bad in ("/update banana", "/update 1.0 now", "/update ../../etc"):
            botapi.push_message(ADMIN, ADMIN, bad)
        await until(lambda: len(botapi.sent(ADMIN)) >= 8)
        usage = [c for c in botapi.sent(ADMIN) if c.params["text"].startswith("Usage: /update")]
        assert len(usage) == 3
        botapi.push_message(ADMIN, ADMIN, f"/update {__version__}")
        assert await reply_to(botapi, ADMIN, "Already running") == (
            f"Already running {__version__}."
        )
        assert len(root.served) == n
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_members_are_refused_and_forged_buttons_do_nothing(
    harness: MakeHarness, botapi: BotApiEmulator, root: RootUpdater
) -> None:
    h = await harness(**ucfg(botapi, root))
    botapi.push_message(-222, MEMBER, "/update")  # allowlisted group, not an admin
    assert await reply_to(botapi, -222, "admin") == "Only an admin may /update."
    botapi.push_callback(-222, MEMBER, f"u:{NEXT}", message_id=1)  # the admin's button, pressed
    assert await reply_to(botapi, -222, "admin", timeout=5) == "Only an admin may /update."
    await until(lambda: len([c for c in botapi.sent(-222) if "admin" in c.params["text"]]) == 2)
    for forged in ("u:1;rm -rf /", "u:", "u:1.0:extra", f"u:{'9' * 40}"):
        botapi.push_callback(ADMIN, ADMIN, forged, message_id=1)
    await until(lambda: len(botapi.calls_to("answerCallbackQuery")) >= 5)
    await settled(h)  # every button handled
    assert root.served == [] and not root.paths.request.exists()


async def test_without_the_updater_it_says_how_to_upgrade(
    harness: MakeHarness, botapi: BotApiEmulator, tmp_path: Path
) -> None:
    await harness(**cfg(botapi, update_dir=str(tmp_path / "none")))
    botapi.push_message(ADMIN, ADMIN, "/update")
    assert "not set up on this box" in await reply_to(botapi, ADMIN, "pip")


async def test_the_updater_not_answering_is_said_plainly(
    harness: MakeHarness, botapi: BotApiEmulator, root: RootUpdater
) -> None:
    root.paused = True  # spyoncino-update.path not running
    await harness(**ucfg(botapi, root, update_wait_s=0.5))
    botapi.push_message(ADMIN, ADMIN, "/update")
    said = await reply_to(botapi, ADMIN, "did not answer")
    assert "spyoncino-update.path" in said
    assert json.loads(root.paths.request.read_text())["action"] == "check"
    # an update waiting for the busy updater is never replaced by a check
    offer = await harness_offer(botapi, NEXT)
    botapi.push_callback(ADMIN, ADMIN, f"u:{NEXT}", message_id=offer)
    await reply_to(botapi, ADMIN, "requested")
    botapi.push_message(ADMIN, ADMIN, "/update")
    said = await reply_to(botapi, ADMIN, "waits for the updater")
    assert f"an update to {NEXT} was asked for and waits for the updater" in said
    assert json.loads(root.paths.request.read_text())["action"] == "update"


async def harness_offer(botapi: BotApiEmulator, version: str) -> int:
    """``/update <version>`` from the admin; the id of the answer carrying the buttons."""
    botapi.push_message(ADMIN, ADMIN, f"/update {version}")
    offer = await botapi.wait_for(
        "sendMessage", predicate=lambda c: f"Update to {version}?" in c.params.get("text", "")
    )
    return int(offer.result["message_id"])


async def test_daily_check_tells_each_new_version_once(
    harness: MakeHarness, botapi: BotApiEmulator, root: RootUpdater
) -> None:
    now = [time.time()]  # the updater stamps its answers with the wall clock
    h = await harness(**ucfg(botapi, root, update_check_daily=True, chat_ids=[ADMIN]))
    h.module.clock = lambda: now[0]
    first = f"Spyoncino {NEXT} is available (running {__version__}); /update to install."
    assert await reply_to(botapi, ADMIN, "is available") == first
    assert [r["action"] for r in root.served] == ["check"]
    # within the day: no second check; a new day: checked again, the same version not retold
    await rounds(h)
    assert len(root.served) == 1 and not root.paths.request.exists()
    now[0] += updates_day()
    await until(lambda: len(root.served) == 2)
    await rounds(h)
    assert len([c for c in botapi.sent(ADMIN) if "is available" in c.params["text"]]) == 1


async def test_a_version_seen_with_update_is_not_told_again_by_the_daily_check(
    harness: MakeHarness, botapi: BotApiEmulator, root: RootUpdater
) -> None:
    now = [time.time()]
    # checked an hour ago (kept across restarts in telegram.json): no check at start
    (root.paths.exchange / "telegram.json").write_text(json.dumps({"checked_at": now[0] - 3600}))
    h = await harness(**ucfg(botapi, root, update_check_daily=True, chat_ids=[ADMIN]))
    h.module.clock = lambda: now[0]
    await rounds(h)
    assert root.served == [] and not root.paths.request.exists()
    # the watcher sees the check's answer before /update's own wait does (it did, at random)
    fresh_check = h.module._fresh_check

    async def slow_to_notice(*args: Any) -> Any:
        answer = await fresh_check(*args)
        await rounds(h, 6)  # six of the watcher's rounds
        return answer

    h.module._fresh_check = slow_to_notice  # type: ignore[method-assign]
    botapi.push_message(ADMIN, ADMIN, "/update")
    await reply_to(botapi, ADMIN, f"Spyoncino {NEXT} is available.")
    now[0] += updates_day()
    await until(lambda: len(root.served) == 2)  # /update's check, then the daily one
    await rounds(h)
    assert [c for c in botapi.sent(ADMIN) if "/update to install" in c.params["text"]] == []


async def test_daily_check_is_off_by_default(
    harness: MakeHarness, botapi: BotApiEmulator, root: RootUpdater
) -> None:
    h = await harness(**ucfg(botapi, root))
    assert h.module.cfg.update_check_daily is False
    await rounds(h, 5)
    assert root.served == [] and botapi.sent() == []
    # and a box where nothing happens writes nothing
    assert sorted(p.name for p in root.paths.exchange.iterdir()) == []


def updates_day() -> float:
    from spyoncino.modules.output._telegram_update import DAY_S

    return DAY_S + 60


def test_results_are_worded_plainly() -> None:
    words = updates.result_words
    assert words({"outcome": "up_to_date", "message": "already up to date (0.1.0)"}) == (
        "Already up to date: already up to date (0.1.0)."
    )
    assert words({"outcome": "error", "exit_code": 4, "message": "index x is unreachable"}) == (
        "Update failed: index x is unreachable."
    )
    # the updater's own full stop is not doubled, an ellipsis inside is kept
    assert words({"outcome": "pinned", "message": "0.1.0 is pinned... by Ansible."}) == (
        "Update refused: 0.1.0 is pinned... by Ansible."
    )
