"""The Telegram settings form: the owner pastes the bot token and the chat id, nothing else.

``GET /settings/telegram`` shows whether a token is set (never the token), the allowed chats
and the Bot API server in use; ``POST`` (logged in, CSRF like every form) checks the token's
format, optionally asks Telegram ``getMe`` with it on the configured ``telegram.api_base_url``
(so a typo is caught here, not at the first alert), and sends ``{"telegram": {"token",
"chat_ids"}}`` through ``config.update``: the running Telegram module starts with it, no
restart; the config service saves the chat id in the overlay and the token in its owner-only
secrets file beside it (``core.config.save_overlays``). A plain form POST is answered with a
303 back to the page and a one-time message; a ``fetch()`` client that asks for JSON gets JSON.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import aiohttp
from aiohttp import web

from spyoncino.core.logging import add_secrets
from spyoncino.schemas.control import ConfigSnapshot

from ._views import esc

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import UrlDispatcher

#: BotFather's tokens: the bot's numeric id, a colon, a secret of URL-safe characters
TOKEN_RE = re.compile(r"^\d{1,20}:[A-Za-z0-9_-]{10,100}\Z")
CHAT_RE = re.compile(r"^-?\d{1,20}\Z")
GETME_TIMEOUT_S = 10.0
PATH = "/settings/telegram"

#: one-time messages shown after a redirect, per session (bounded), per running page
_FLASH: WeakKeyDictionary[Any, OrderedDict[str, tuple[bool, str]]] = WeakKeyDictionary()


def _web() -> Any:
    from . import _web

    return _web


def wants_json(request: web.Request) -> bool:
    """A fetch() client or an API caller (JSON body, or Accept naming JSON before HTML)."""
    if request.content_type == "application/json":
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def flash(request: web.Request, ok: bool, text: str) -> None:
    w = _web()
    session = w._WHO.get().session
    if session is None:
        return
    box = _FLASH.setdefault(w._page(request), OrderedDict())
    box[session.csrf] = (ok, text)
    while len(box) > 64:
        box.popitem(last=False)


def take_flash(request: web.Request) -> tuple[bool, str] | None:
    w = _web()
    session = w._WHO.get().session
    box = _FLASH.get(w._page(request))
    if session is None or box is None:
        return None
    return box.pop(session.csrf, None)


def message_html(msg: tuple[bool, str] | None, element_id: str) -> str:
    if msg is None:
        return f'<p id="{element_id}" role="status"></p>'
    ok, text = msg
    return f'<p id="{element_id}" role="status" class="{"ok" if ok else "error"}">{esc(text)}</p>'


def page_html(view: dict[str, Any], csrf: str, can_write: bool, msg: Any, chat: str) -> str:
    tg = view.get("telegram")
    if not isinstance(tg, dict):
        return "<h1>Telegram</h1><p>The Telegram module is not installed in this build.</p>"
    has_token = tg.get("token") not in (None, "")
    chats = ", ".join(str(c) for c in tg.get("chat_ids") or []) or "none"
    state = (
        f'<p id="tg-state">Bot token: {"set" if has_token else "not set"}. '
        f"Allowed chats: {esc(chats)}. Bot API: <code>{esc(tg.get('api_base_url', ''))}</code>.</p>"
    )
    if not can_write:
        return f"<h1>Telegram</h1>{state}<p>Log in to change it.</p>"
    return (
        "<h1>Telegram</h1>"
        f"{state}"
        "<p>Create a bot with @BotFather and paste its token. Your chat id: send any message "
        "to @userinfobot (a group's id starts with -). Only that chat gets alerts and may "
        "send commands.</p>"
        f'<form id="tg-form" class="setup" method="post" action="{PATH}">'
        f'<input type="hidden" name="csrf_token" value="{esc(csrf)}">'
        '<label>Bot token <input id="tg-token" name="token" required autocomplete="off" '
        'spellcheck="false" placeholder="123456789:AA..."></label>'
        f'<label>Chat id <input id="tg-chat" name="chat_id" required value="{esc(chat)}" '
        'inputmode="numeric" pattern="-?[0-9]{1,20}"></label>'
        '<label><input type="checkbox" id="tg-check" name="check" value="1" checked> '
        "Check the token with Telegram first</label>"
        '<button type="submit" id="tg-save">Save</button></form>'
        f"{message_html(msg, 'tg-result')}"
    )


async def settings_page(
    request: web.Request, msg: tuple[bool, str] | None = None, chat: str = "", status: int = 200
) -> web.Response:
    w = _web()
    p = w._page(request)
    if msg is None:
        msg = take_flash(request)
    body = page_html(p.config_view(), w._csrf(request), w._can_write(request), msg, chat)
    return w._html(request, "settings", "Telegram", body, status)  # type: ignore[no-any-return]


async def get_me(api: str, token: str) -> str:
    """The bot's @username, or raise ``ValueError`` saying why Telegram refused."""
    url = f"{api.rstrip('/')}/bot{token}/getMe"
    timeout = aiohttp.ClientTimeout(total=GETME_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url) as resp,
        ):
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise ValueError(
            f"cannot reach the Bot API at {api} ({type(e).__name__}); untick the check to "
            "save anyway"
        ) from e
    if not isinstance(data, dict) or not data.get("ok"):
        what = data.get("description") if isinstance(data, dict) else None
        raise ValueError(f"Telegram refused the token: {what or 'no answer'}")
    user = data.get("result") or {}
    return str(user.get("username") or user.get("first_name") or "bot")


async def settings_post(request: web.Request) -> web.StreamResponse:
    w = _web()
    p = w._page(request)
    body = await w._body(request)
    as_json = wants_json(request)
    token = str(body.get("token") or "").strip()
    chat = str(body.get("chat_id") or "").strip()
    check = str(body.get("check", "1" if as_json else "")).lower() in ("1", "true", "on", "yes")

    async def refuse(text: str, status: int = 422) -> web.StreamResponse:
        if as_json:
            return web.json_response({"ok": False, "error": text}, status=status)
        return await settings_page(
            request, (False, text), chat if CHAT_RE.match(chat) else "", status
        )

    view = p.config_view().get("telegram")
    if not isinstance(view, dict):
        return await refuse("The Telegram module is not installed in this build.", 409)
    if not TOKEN_RE.match(token):
        # never echo the token itself
        return await refuse("That is not a bot token: BotFather's look like 123456789:AAE... .")
    if not CHAT_RE.match(chat):
        return await refuse("The chat id is a number (a group's starts with -).")
    bot = ""
    if check:
        try:
            bot = await get_me(str(view.get("api_base_url") or "https://api.telegram.org"), token)
        except ValueError as e:
            return await refuse(str(e))
    add_secrets([token])  # scrubbed from every log line from now on, like the file's secrets
    verdict = await p.update_config(
        {"telegram": {"token": token, "chat_ids": [int(chat)]}}, w._who(request)
    )
    if verdict is None:
        return await refuse("No answer from the configuration service.", 504)
    if not isinstance(verdict, ConfigSnapshot):
        return await refuse("Not saved: " + (verdict.reason or "; ".join(verdict.errors)))
    text = f"Saved: alerts go to chat {chat}" + (f" from @{bot}" if bot else "") + "."
    if as_json:
        return web.json_response(
            {"ok": True, "message": text, "version": verdict.version, "bot": bot or None}
        )
    flash(request, True, text)
    raise web.HTTPSeeOther(PATH)


def add_routes(r: UrlDispatcher) -> None:
    r.add_get(PATH, settings_page)
    r.add_post(PATH, settings_post)


__all__ = ["add_routes", "flash", "message_html", "take_flash", "wants_json"]
