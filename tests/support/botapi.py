"""A local Telegram Bot API emulator for tests (no network here; no public emulator takes photos).

It speaks the real wire format on ``/bot<token>/<method>`` (JSON, urlencoded or multipart with
``attach://<part>`` or a direct file part), answers valid Bot API objects and records every call
with its files' bytes. Tests inject updates (``push_message``, ``push_callback``) that a bot reads
through ``getUpdates`` long polling, and inject faults: 429 with ``retry_after``, 5xx, a request
that hangs, or the whole server down (``stop``/``start`` on the same port).

In-process (pytest)::

    async def test_x(botapi: BotApiEmulator) -> None:
        ...  # point the module at botapi.base_url
        call = await botapi.wait_for("sendPhoto")
        assert call.file("photo").data.startswith(b"\\xff\\xd8")

As a process (for tests that run ``spyoncino run`` in a subprocess and kill it)::

    python -m tests.support.botapi --port 8081 [--record calls.jsonl]

The process prints ``READY <port>`` when it listens. Its control API (JSON) lives under
``/_emu/``: ``GET calls``, ``POST push_message``, ``POST push_callback``, ``POST fault``,
``POST clear_faults``, ``POST reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest_asyncio
from aiohttp import web

BOT_USERNAME = "spyoncino_test_bot"


@dataclass(frozen=True)
class UploadedFile:
    """One multipart file part."""

    part: str
    filename: str
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Call:
    """One request the emulator received (also those answered with a fault)."""

    method: str
    token: str
    params: dict[str, str]
    files: dict[str, UploadedFile]
    at: float  # time.monotonic() when the request arrived
    wall: float
    answered: str = "ok"  # ok, 429, 500, hang, bad_token
    result: Any = None

    def json(self, name: str) -> Any:
        """A parameter decoded the way the Bot API decodes it (JSON when it parses)."""
        raw = self.params.get(name)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    @property
    def chat_id(self) -> int | None:
        raw = self.params.get("chat_id")
        return int(raw) if raw is not None and raw.lstrip("-").isdigit() else None

    def file(self, name: str) -> UploadedFile:
        """The file sent as parameter ``name``: ``attach://<part>`` or a part named ``name``."""
        ref = self.params.get(name, "")
        if ref.startswith("attach://"):
            return self.files[ref[len("attach://") :]]
        if name in self.files:
            return self.files[name]
        raise KeyError(f"{self.method} has no file for {name!r} (params {sorted(self.params)})")

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": self.params,
            "files": {
                k: {"filename": f.filename, "size": len(f.data), "sha256": f.sha256}
                for k, f in self.files.items()
            },
            "at": self.at,
            "wall": self.wall,
            "answered": self.answered,
        }


@dataclass
class Fault:
    """Answer matching requests with an error instead of the real result."""

    kind: str  # "429", "500", "hang", "400", "413", "garbled" (done, answer unreadable)
    method: str | None = None  # None: every method except getUpdates unless named
    count: int | None = 1  # None: until cleared
    retry_after: int = 3
    description: str = ""

    def matches(self, method: str) -> bool:
        if self.method is None:
            return method not in ("getUpdates", "getMe")
        return self.method.lower() == method.lower()


@dataclass
class _Chat:
    next_message_id: int = 1


class BotApiEmulator:
    """The emulator. ``await start()``, use ``base_url``, ``await stop()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        record_path: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token  # when set, other tokens get 401
        self.record_path = record_path
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.commands: list[dict[str, Any]] = []
        self._chats: dict[int, _Chat] = {}
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._callback_ids = itertools.count(1)
        self._new_update = asyncio.Event()
        self._new_call = asyncio.Event()
        self._release_hang = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.up = False

    # -- lifecycle ----------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/_emu/calls", self._ctl_calls)
        app.router.add_post("/_emu/push_message", self._ctl_push_message)
        app.router.add_post("/_emu/push_callback", self._ctl_push_callback)
        app.router.add_post("/_emu/fault", self._ctl_fault)
        app.router.add_post("/_emu/clear_faults", self._ctl_clear_faults)
        app.router.add_post("/_emu/reset", self._ctl_reset)
        return app

    async def start(self) -> None:
        """Listen (again) on ``port``; the first start picks a free port when it is 0."""
        if self.up:
            return
        if self.port == 0:
            self.port = free_port(self.host)
        self._release_hang = asyncio.Event()
        self._runner = web.AppRunner(self._app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        self.up = True

    async def stop(self) -> None:
        """Go down: connections are refused until ``start`` (same port, same records)."""
        self.up = False
        self._release_hang.set()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._site = None

    async def __aenter__(self) -> BotApiEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- faults -------------------------------------------------------------------------------
    def fail(
        self,
        kind: str,
        method: str | None = None,
        *,
        count: int | None = 1,
        retry_after: int = 3,
        description: str = "",
    ) -> Fault:
        """Answer the next ``count`` matching requests with ``kind`` (429, 500, 400, 413, hang,
        or garbled: carried out, then answered 200 with a body cut short)."""
        f = Fault(str(kind), method, count, retry_after, description)
        self.faults.append(f)
        return f

    def clear_faults(self) -> None:
        self.faults.clear()
        self._release_hang.set()
        self._release_hang = asyncio.Event()

    def _take_fault(self, method: str) -> Fault | None:
        for f in self.faults:
            if f.matches(method):
                if f.count is not None:
                    f.count -= 1
                    if f.count <= 0:
                        self.faults.remove(f)
                return f
        return None

    # -- updates ------------------------------------------------------------------------------
    def push_message(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        *,
        chat_type: str | None = None,
        username: str | None = None,
    ) -> dict[str, Any]:
        """Queue a message update from ``user_id`` in ``chat_id`` (commands get entities)."""
        msg: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "date": int(time.time()),
            "chat": self._chat_obj(chat_id, chat_type),
            "from": {
                "id": user_id,
                "is_bot": False,
                "first_name": f"user{user_id}",
                "username": username or f"user{user_id}",
            },
            "text": text,
        }
        if text.startswith("/"):
            cmd = text.split()[0]
            msg["entities"] = [{"type": "bot_command", "offset": 0, "length": len(cmd)}]
        return self._push({"message": msg})

    def push_callback(
        self,
        chat_id: int,
        user_id: int,
        data: str,
        *,
        message_id: int | None = None,
    ) -> dict[str, Any]:
        """Queue a callback query (an inline keyboard button press) on one of the bot's messages."""
        cq: dict[str, Any] = {
            "id": str(next(self._callback_ids)),
            "from": {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"},
            "chat_instance": str(chat_id),
            "data": data,
        }
        if message_id is not None:
            cq["message"] = {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": self._chat_obj(chat_id, None),
                "from": self.bot_user(),
                "text": "alert",
            }
        return self._push({"callback_query": cq})

    def _push(self, body: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": next(self._update_ids), **body}
        self._updates.append(update)
        self._new_update.set()
        return update

    @property
    def pending_updates(self) -> int:
        return len(self._updates)

    # -- inspection ---------------------------------------------------------------------------
    def calls_to(self, method: str) -> list[Call]:
        """Answered (``ok``) calls of ``method``."""
        m = method.lower()
        return [c for c in self.calls if c.method.lower() == m and c.answered == "ok"]

    def attempts_to(self, method: str) -> list[Call]:
        """Every call of ``method``, faulted ones included."""
        m = method.lower()
        return [c for c in self.calls if c.method.lower() == m]

    def sent(self, chat_id: int | None = None) -> list[Call]:
        """Successful calls that put something in a chat (send*)."""
        return [
            c
            for c in self.calls
            if c.method.startswith("send")
            and c.answered == "ok"
            and (chat_id is None or c.chat_id == chat_id)
        ]

    async def wait_for(
        self,
        method: str,
        count: int = 1,
        timeout: float = 30.0,
        predicate: Callable[[Call], bool] | None = None,
        answered: bool = True,
    ) -> Call:
        """Wait until ``count`` answered calls of ``method`` (matching ``predicate``) arrived;
        ``answered=False``: calls that arrived, faulted or still hanging ones included.
        ``timeout`` only bounds a wait that would never end (it returns at the call): 5 s failed
        a service's first setMyCommands on a loaded 2-core machine beside another test worker."""
        deadline = time.monotonic() + timeout
        calls = self.calls_to if answered else self.attempts_to
        while True:
            waiter = self._new_call
            found = [c for c in calls(method) if predicate is None or predicate(c)]
            if len(found) >= count:
                return found[count - 1]
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [(c.method, c.answered) for c in self.calls[-10:]]
                raise TimeoutError(f"{count} x {method} not received in {timeout}s; last: {seen}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waiter.wait(), min(left, 0.5))

    def reset(self) -> None:
        self.calls.clear()
        self.faults.clear()
        self._updates.clear()

    # -- objects ------------------------------------------------------------------------------
    def bot_user(self) -> dict[str, Any]:
        token = self.token or "1000001:x"
        return {
            "id": int(token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "Spyoncino Test",
            "username": BOT_USERNAME,
        }

    @staticmethod
    def _chat_obj(chat_id: int, chat_type: str | None) -> dict[str, Any]:
        kind = chat_type or ("private" if chat_id > 0 else "supergroup")
        chat: dict[str, Any] = {"id": chat_id, "type": kind}
        if kind == "private":
            chat["first_name"] = f"user{chat_id}"
        else:
            chat["title"] = f"group{chat_id}"
        return chat

    def _next_message_id(self, chat_id: int) -> int:
        chat = self._chats.setdefault(chat_id, _Chat())
        mid = chat.next_message_id
        chat.next_message_id += 1
        return mid

    def _file_obj(self, up: UploadedFile | None, ref: str) -> dict[str, Any]:
        n = next(self._file_ids)
        obj: dict[str, Any] = {"file_id": f"F{n:06d}", "file_unique_id": f"U{n:06d}"}
        if up is not None:
            obj["file_size"] = len(up.data)
        elif ref:
            obj["file_id"] = ref  # re-sent by file_id
        return obj

    def _message(self, call: Call) -> dict[str, Any]:
        p = call.params
        raw_chat = p.get("chat_id", "0")
        chat_id = int(raw_chat) if raw_chat.lstrip("-").isdigit() else 0
        msg: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "date": int(time.time()),
            "chat": self._chat_obj(chat_id, None),
            "from": self.bot_user(),
        }
        if "text" in p:
            msg["text"] = p["text"]
        if "caption" in p:
            msg["caption"] = p["caption"]
        markup = call.json("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            msg["reply_markup"] = markup
        method = call.method.lower()
        kind = {
            "sendphoto": "photo",
            "sendanimation": "animation",
            "sendvideo": "video",
            "senddocument": "document",
        }.get(method)
        if kind is not None:
            try:
                up: UploadedFile | None = call.file(kind)
            except KeyError:
                up = None
            base = self._file_obj(up, p.get(kind, ""))
            if kind == "photo":
                w, h = _jpeg_size(up.data) if up is not None else (0, 0)
                small = dict(
                    base, file_id=base["file_id"] + "s", width=max(1, w // 4), height=max(1, h // 4)
                )
                small["file_unique_id"] = base["file_unique_id"] + "s"
                small.pop("file_size", None)
                msg["photo"] = [small, dict(base, width=max(1, w), height=max(1, h))]
            elif kind in ("animation", "video"):
                msg[kind] = dict(
                    base,
                    width=int(p.get("width", "0") or 0),
                    height=int(p.get("height", "0") or 0),
                    duration=int(float(p.get("duration", "0") or 0)),
                    file_name=up.filename if up is not None else "file",
                )
                if kind == "animation":
                    # a real client also gets a document for animations
                    msg["document"] = dict(base, file_name=msg[kind]["file_name"])
            else:
                msg["document"] = dict(base, file_name=up.filename if up is not None else "file")
        return msg

    # -- HTTP ---------------------------------------------------------------------------------
    async def _read(self, request: web.Request) -> tuple[dict[str, str], dict[str, UploadedFile]]:
        params: dict[str, str] = {k: v for k, v in request.query.items()}
        files: dict[str, UploadedFile] = {}
        ctype = request.content_type
        if ctype == "multipart/form-data":
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not hasattr(part, "filename"):  # nested multipart: not used by Bot API
                    continue
                name = part.name or ""
                data = await part.read(decode=False)
                if part.filename is not None:
                    files[name] = UploadedFile(
                        name,
                        part.filename,
                        part.headers.get("Content-Type", "application/octet-stream"),
                        bytes(data),
                    )
                else:
                    params[name] = bytes(data).decode("utf-8")
        elif ctype == "application/json":
            body = await request.json() if request.can_read_body else {}
            for k, v in dict(body or {}).items():
                params[k] = v if isinstance(v, str) else json.dumps(v)
        elif request.can_read_body:
            post = await request.post()
            for k, v in post.items():
                if isinstance(v, str):
                    params[k] = v
                else:  # a FileField from urlencoded-multipart mixes
                    files[k] = UploadedFile(k, v.filename, v.content_type, v.file.read())
        return params, files

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        method = request.match_info["method"]
        params, files = await self._read(request)
        call = Call(method, token, params, files, time.monotonic(), time.time())
        if method.lower() != "getupdates":
            self._record(call)
        if self.token is not None and token != self.token:
            call.answered = "bad_token"
            return _error(401, "Unauthorized")
        fault = self._take_fault(method)
        if fault is not None and fault.kind == "garbled":
            # delivered, but the answer is cut short: the client cannot know it went through
            call.answered = "garbled"
            call.result = await self._dispatch(method, call)
            self._notify()
            return web.Response(
                status=200,
                text='{"ok": true, "result": {"message_',
                content_type="application/json",
            )
        if fault is not None:
            call.answered = fault.kind
            if method.lower() == "getupdates":
                self._record(call)
            return await self._fault_response(fault)
        try:
            result = await self._dispatch(method, call)
        except _ApiError as e:
            call.answered = str(e.code)
            return _error(e.code, e.description)
        call.result = result
        if method.lower() == "getupdates" and result:
            self._record(call)
        self._notify()
        return web.json_response({"ok": True, "result": result})

    def _notify(self) -> None:
        ev, self._new_call = self._new_call, asyncio.Event()
        ev.set()

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._notify()
        if self.record_path is not None:
            with open(self.record_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(call.summary()) + "\n")

    async def _fault_response(self, fault: Fault) -> web.Response:
        if fault.kind == "429":
            return web.json_response(
                {
                    "ok": False,
                    "error_code": 429,
                    "description": fault.description
                    or f"Too Many Requests: retry after {fault.retry_after}",
                    "parameters": {"retry_after": fault.retry_after},
                },
                status=429,
            )
        if fault.kind == "hang":
            await self._release_hang.wait()
            return _error(502, "Bad Gateway")
        code = int(fault.kind)
        default = {
            500: "Internal Server Error",
            502: "Bad Gateway",
            400: "Bad Request",
            413: "Request Entity Too Large",
        }.get(code, "Error")
        return _error(code, fault.description or default)

    async def _dispatch(self, method: str, call: Call) -> Any:
        m = method.lower()
        if m == "getme":
            return self.bot_user()
        if m == "getupdates":
            return await self._get_updates(call)
        if m in ("sendmessage", "sendphoto", "sendanimation", "sendvideo", "senddocument"):
            if "chat_id" not in call.params:
                raise _ApiError(400, "Bad Request: chat_id is empty")
            if m == "sendmessage" and not call.params.get("text"):
                raise _ApiError(400, "Bad Request: message text is empty")
            if m != "sendmessage":
                kind = m[len("send") :]
                ref = call.params.get(kind, "")
                if not ref and kind not in call.files:
                    raise _ApiError(400, f"Bad Request: there is no {kind} in the request")
                if ref.startswith("attach://") and ref[len("attach://") :] not in call.files:
                    raise _ApiError(400, f"Bad Request: file {ref} not found in the request")
            return self._message(call)
        if m == "setmycommands":
            self.commands = list(call.json("commands") or [])
            return True
        if m == "getmycommands":
            return self.commands
        if m in ("editmessagecaption", "editmessagetext"):
            chat_raw = call.params.get("chat_id", "0")
            chat_id = int(chat_raw) if chat_raw.lstrip("-").isdigit() else 0
            mid = int(call.params.get("message_id", "0") or 0)
            chat = self._chats.get(chat_id)
            if chat is None or not 0 < mid < chat.next_message_id:
                raise _ApiError(400, "Bad Request: message to edit not found")
            field = "caption" if m == "editmessagecaption" else "text"
            msg = {
                "message_id": mid,
                "date": int(time.time()),
                "edit_date": int(time.time()),
                "chat": self._chat_obj(chat_id, None),
                "from": self.bot_user(),
                field: call.params.get(field, ""),
            }
            markup = call.json("reply_markup")
            if isinstance(markup, dict) and "inline_keyboard" in markup:
                msg["reply_markup"] = markup
            return msg
        if m == "editmessagereplymarkup":
            chat_raw = call.params.get("chat_id", "0")
            chat_id = int(chat_raw) if chat_raw.lstrip("-").isdigit() else 0
            msg = {
                "message_id": int(call.params.get("message_id", "1")),
                "date": int(time.time()),
                "chat": self._chat_obj(chat_id, None),
                "from": self.bot_user(),
                "text": "edited",
            }
            markup = call.json("reply_markup")
            if isinstance(markup, dict):
                msg["reply_markup"] = markup
            return msg
        # answerCallbackQuery, deleteWebhook, setMyCommands' kin, sendChatAction, anything else
        return True

    async def _get_updates(self, call: Call) -> list[dict[str, Any]]:
        offset = int(call.params.get("offset", "0") or 0)
        timeout = float(call.params.get("timeout", "0") or 0)
        limit = int(call.params.get("limit", "100") or 100)
        if offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = time.monotonic() + timeout
        while not self._updates:
            left = deadline - time.monotonic()
            if left <= 0 or not self.up:
                return []
            self._new_update.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new_update.wait(), min(left, 0.25))
        return list(self._updates[:limit])

    # -- control API (for the standalone process) --------------------------------------------
    async def _ctl_calls(self, request: web.Request) -> web.Response:
        return web.json_response([c.summary() for c in self.calls])

    async def _ctl_push_message(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            self.push_message(int(body["chat_id"]), int(body["user_id"]), str(body["text"]))
        )

    async def _ctl_push_callback(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            self.push_callback(
                int(body["chat_id"]),
                int(body["user_id"]),
                str(body["data"]),
                message_id=body.get("message_id"),
            )
        )

    async def _ctl_fault(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.fail(
            str(body["kind"]),
            body.get("method"),
            count=body.get("count", 1),
            retry_after=int(body.get("retry_after", 3)),
        )
        return web.json_response({"ok": True})

    async def _ctl_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"ok": True})

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


class _ApiError(Exception):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _error(code: int, description: str) -> web.Response:
    return web.json_response(
        {"ok": False, "error_code": code, "description": description}, status=code
    )


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from a JPEG's SOF marker (0, 0 when it is not a JPEG)."""
    i = 2
    if not data.startswith(b"\xff\xd8"):
        return 0, 0
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2):
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h
        seg = int.from_bytes(data[i + 2 : i + 4], "big")
        i += 2 + seg
    return 0, 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- pytest fixture ------------------------------------------------------------------------------
@pytest_asyncio.fixture
async def botapi() -> AsyncIterator[BotApiEmulator]:
    """A running emulator on a free loopback port, stopped after the test."""
    emu = BotApiEmulator()
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


# -- standalone process --------------------------------------------------------------------------
async def _serve(host: str, port: int, token: str | None, record: str | None) -> None:
    emu = BotApiEmulator(host, port, token=token, record_path=record)
    await emu.start()
    print(f"READY {emu.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emu.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Local Telegram Bot API emulator for tests.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", default=None, help="accept only this bot token")
    ap.add_argument("--record", default=None, help="append every call as a JSON line here")
    args = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.token, args.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
