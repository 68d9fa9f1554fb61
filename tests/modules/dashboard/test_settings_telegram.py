"""The status page's Telegram form over real HTTP, against the Bot API emulator on loopback:
the owner pastes a token and a chat id, the bot starts without a restart, and both survive one
(chat id in the overlay, token in the owner-only secrets file beside it)."""

from __future__ import annotations

import re
import stat
from html import unescape
from pathlib import Path
from typing import Any

import yaml

from spyoncino.core.config import ConfigService
from tests.support.botapi import BOT_USERNAME, BotApiEmulator

from .conftest import SAMPLE, TOKEN, Running

BOT_TOKEN = "123456:TEST-token_abcdef"
CHAT = 4242
FORM = "/settings/telegram"


async def _start(start_page: Any, tmp_path: Path, emu: BotApiEmulator) -> tuple[Running, Path]:
    r: Running = await start_page(
        modules=("status_page", "arming", "telegram"),
        extra={"telegram": {"api_base_url": emu.base_url}},
    )
    overlay = tmp_path / "state" / "config.overlay.yaml"
    r.orch.config.attach_overlay(overlay)
    return r, overlay


def _telegram(r: Running) -> Any:
    return next(s.module for s in r.orch.slots if s.instance == "telegram")


def _result(html: str) -> str:
    m = re.search(r'id="tg-result"[^>]*>([^<]*)<', html)
    return unescape(m.group(1)) if m else ""


async def test_the_owner_pastes_a_token_and_the_bot_runs_without_a_restart(
    start_page: Any, tmp_path: Path
) -> None:
    async with BotApiEmulator(token=BOT_TOKEN) as emu:
        r, overlay = await _start(start_page, tmp_path, emu)
        layers = list(r.orch.config.layers)
        assert _telegram(r).bot is None  # inert: no token yet
        status, csrf = await r.login()
        assert status == 303
        async with r.http.get(r.url(FORM)) as resp:
            page = await resp.text()
        assert resp.status == 200
        assert "Bot token: not set" in page
        assert 'name="csrf_token"' in page  # the form works without JavaScript

        form = {"csrf_token": csrf, "token": BOT_TOKEN, "chat_id": str(CHAT), "check": "1"}
        # no CSRF token: refused before anything is looked at
        async with r.http.post(r.url(FORM), data={**form, "csrf_token": "x"}) as resp:
            assert resp.status == 403
        # not a token: the page again, the chat id kept, the text never echoed
        async with r.http.post(r.url(FORM), data={**form, "token": "hello"}) as resp:
            page = await resp.text()
        assert resp.status == 422
        assert "not a bot token" in _result(page)
        assert f'value="{CHAT}"' in page
        assert "hello" not in page
        # a well-formed token Telegram does not know: getMe on the emulator says so
        wrong = "999:WRONG-token_abcdef"
        async with r.http.post(r.url(FORM), data={**form, "token": wrong}) as resp:
            page = await resp.text()
        assert resp.status == 422
        assert "Telegram refused the token: Unauthorized" in _result(page)
        assert wrong not in page
        assert not overlay.exists()  # nothing saved

        # the right one: 303 back to the page, which says what was done, once
        async with r.http.post(r.url(FORM), data=form, allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == FORM
        async with r.http.get(r.url(FORM)) as resp:
            page = await resp.text()
        assert _result(page) == f"Saved: alerts go to chat {CHAT} from @{BOT_USERNAME}."
        assert "Bot token: set" in page and f"Allowed chats: {CHAT}" in page
        assert BOT_TOKEN not in page
        async with r.http.get(r.url(FORM)) as resp:
            assert _result(await resp.text()) == ""  # the message was shown once

        # the bot runs now, no restart: a command from the allowed chat is answered
        await r.wait(lambda: _telegram(r).bot is not None)
        emu.push_message(CHAT, CHAT, "/status")
        reply = await emu.wait_for("sendMessage", timeout=30)
        assert reply.chat_id == CHAT

        # saved: the chat id in the overlay, the token only in the 0600 secrets file beside it
        saved = yaml.safe_load(overlay.read_text())
        assert saved["telegram"]["chat_ids"] == [CHAT]
        assert BOT_TOKEN not in overlay.read_text()
        secrets = overlay.with_name("secrets.overlay.yaml")
        assert yaml.safe_load(secrets.read_text())["telegram"]["token"] == BOT_TOKEN
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
        # and a restart finds both
        again = ConfigService(r.orch.config.model, layers)
        again.attach_overlay(overlay)
        tg = again.current.telegram  # type: ignore[attr-defined]
        assert tg.token.get_secret_value() == BOT_TOKEN
        assert tg.chat_ids == [CHAT]


async def test_a_fetch_client_gets_json(start_page: Any, tmp_path: Path) -> None:
    async with BotApiEmulator(token=BOT_TOKEN) as emu:
        r, _ = await _start(start_page, tmp_path, emu)
        auth = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
        body = {"token": "nope", "chat_id": str(CHAT)}
        async with r.http.post(r.url(FORM), headers=auth, json=body) as resp:
            assert resp.status == 422
            assert (await resp.json())["ok"] is False
        body = {"token": BOT_TOKEN, "chat_id": str(CHAT)}
        async with r.http.post(r.url(FORM), headers=auth, json=body) as resp:
            got = await resp.json()
        assert resp.status == 200, got
        assert got["ok"] is True and got["bot"] == BOT_USERNAME
        # the check can be skipped (a box that cannot reach Telegram yet)
        await emu.stop()
        body = {"token": BOT_TOKEN, "chat_id": "-100123", "check": "0"}
        async with r.http.post(r.url(FORM), headers=auth, json=body) as resp:
            got = await resp.json()
        assert resp.status == 200, got
        assert r.orch.config.current.telegram.chat_ids == [-100123]  # type: ignore[attr-defined]


# -- the first-run form without JavaScript ------------------------------------------------------
def _setup_result(html: str) -> str:
    m = re.search(r'id="setup-result"[^>]*>([^<]*)<', html)
    return unescape(m.group(1)) if m else ""


async def test_first_run_form_without_javascript_redirects_to_a_page_that_says_what_happened(
    start_page: Any,
) -> None:
    r: Running = await start_page(modules=("status_page", "arming", "motion", "tracker"))
    _, csrf = await r.login()
    async with r.http.get(r.url("/setup")) as resp:
        page = await resp.text()
    assert f'name="csrf_token" value="{csrf}"' in page  # a plain form POST carries it
    form = {"csrf_token": csrf, "source": str(SAMPLE), "camera_id": "Bad Id", "name": ""}
    # refused: 303 back to /setup, which says why (not a JSON body a person cannot read)
    async with r.http.post(r.url("/api/setup/camera"), data=form, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/setup"
    async with r.http.get(r.url("/setup")) as resp:
        assert resp.content_type == "text/html"
        said = _setup_result(await resp.text())
    assert said.startswith("Not saved: camera_id:"), said
    # accepted: the same, with the camera starting
    form["camera_id"] = "porch"
    async with r.http.post(r.url("/api/setup/camera"), data=form) as resp:  # follows the 303
        assert resp.status == 200 and str(resp.url).endswith("/setup")
        assert _setup_result(await resp.text()) == "Saved: camera porch is starting."
    await r.wait(lambda: "porch" in r.page.frames)
    # a fetch() client still gets JSON (what setup.js reads)
    async with r.http.post(
        r.url("/api/setup/camera"),
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
        json={"source": str(SAMPLE), "camera_id": "yard"},
    ) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["ok"] is True, body
    # and a form that asks for JSON gets JSON too
    async with r.http.post(
        r.url("/api/setup/camera"),
        headers={"Accept": "application/json"},
        data={**form, "camera_id": "Bad Id"},
    ) as resp:
        assert resp.status == 400
