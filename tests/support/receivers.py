"""The far ends of the webhook and email channels, on 127.0.0.1 and a port the OS picks.

- :class:`WebhookReceiver`: an HTTP endpoint that keeps every JSON body; given the secret it
  checks the HMAC signature like a real receiver (401 to a bad one), and can answer errors
  first (``answers``).
- :class:`SmtpInbox` (an aiosmtpd handler) keeps every message with its envelope;
  :func:`smtp_server` runs one, and the ``smtp`` fixture gives ``(inbox, port)``.

Both record into :class:`tests.support.wait.Log`, so a test awaits what arrives.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from aiohttp import web

from spyoncino.modules.output.webhook import SIGNATURE_HEADER
from tests.support.botapi import free_port
from tests.support.wait import Log


class WebhookReceiver:
    """A webhook endpoint; ``received`` holds the JSON bodies it accepted."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.received: Log[dict[str, Any]] = Log()
        #: arrival (monotonic) of every request, answered or not
        self.times: Log[float] = Log()
        self.rejected = 0
        #: (status, headers) answered to the next requests instead of accepting them
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.times.append(time.monotonic())
        if self.answers:
            status, headers = self.answers.pop(0)
            return web.Response(status=status, headers=headers)
        body = await request.read()
        if self.secret is not None:
            digest = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(
                request.headers.get(SIGNATURE_HEADER, ""), f"sha256={digest}"
            ):
                self.rejected += 1
                return web.Response(status=401)
        self.received.append(json.loads(body))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class Mail(NamedTuple):
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


class SmtpInbox:
    """An aiosmtpd handler that keeps each message with its envelope."""

    def __init__(self) -> None:
        self.messages: Log[Mail] = Log()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@contextlib.contextmanager
def smtp_server(port: int | None = None) -> Iterator[tuple[SmtpInbox, int]]:
    """Run an SMTP server on 127.0.0.1 (``port``, or a free one) into a fresh inbox."""
    from aiosmtpd.controller import Controller

    inbox = SmtpInbox()
    port = port or free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpInbox, int]]:
    """``(inbox, port)`` of a running SMTP server."""
    with smtp_server() as served:
        yield served
