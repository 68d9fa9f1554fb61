"""A real orchestrator running the status page with real modules on loopback."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from spyoncino.core.bus import Message
from spyoncino.core.config import ConfigService, Layer, build_app_model
from spyoncino.core.contracts import BaseModule
from spyoncino.core.orchestrator import Orchestrator, discover
from spyoncino.modules.dashboard.status_page import StatusPage, hash_password
from tests.support.wait import until

PASSWORD = "correct horse battery"
TOKEN = "test-token-0123456789abcdef"
PW_HASH = hash_password(PASSWORD, n=2**10)  # cheap for tests; the default cost is 2**14
SAMPLE = Path(__file__).resolve().parents[3] / "spyoncino" / "data" / "sample.mp4"


def registry(*names: str) -> dict[str, type[BaseModule]]:
    found = discover()
    return {n: found[n] for n in names if n in found}


class Running:
    """An orchestrator plus an HTTP client pointed at its status page."""

    def __init__(self, orch: Orchestrator, http: aiohttp.ClientSession) -> None:
        self.orch = orch
        self.http = http
        self.page: StatusPage = next(
            s.module for s in orch.slots if isinstance(s.module, StatusPage)
        )
        self.base = f"http://127.0.0.1:{self.page.port}"
        self.commands: list[Any] = []

    def url(self, path: str) -> str:
        return self.base + path

    async def login(self, password: str = PASSWORD) -> tuple[int, str]:
        """Log in with a fresh jar; returns (status, csrf token of the session)."""
        async with self.http.get(self.url("/login")) as r:
            text = await r.text()
        token = re.search(r'name="csrf_token" value="([^"]+)"', text)
        assert token is not None
        async with self.http.post(
            self.url("/login"),
            data={"csrf_token": token.group(1), "password": password, "next": "/"},
            allow_redirects=False,
        ) as r:
            status = r.status
        if status != 303:
            return status, ""
        async with self.http.get(self.url("/")) as r:
            page = await r.text()
        csrf = re.search(r'data-csrf="([^"]*)"', page)
        return status, csrf.group(1) if csrf else ""

    async def wait(self, cond: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Poll ``cond`` (page state and HTTP answers fire no event the test can await)."""
        return await until(cond, timeout, interval=0.1)


@pytest.fixture
async def start_page(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await start_page(modules=[...], cameras={...}, page={...})`` -> Running."""
    stack = contextlib.AsyncExitStack()

    async def start(
        modules: tuple[str, ...] = ("status_page", "arming"),
        cameras: dict[str, Any] | None = None,
        page: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        root: Path | None = None,
    ) -> Running:
        reg = registry(*modules, "file")
        data: dict[str, Any] = {
            "storage": {"root": str(root or tmp_path / "root")},
            "runtime": {"health_interval": 0.2},
            "bus": {"status_interval": 0.5},
            "cameras": cameras or {},
            "status_page": {
                "listen": "127.0.0.1:0",
                "password_hash": PW_HASH,
                "api_token": TOKEN,
                "storage_probe_s": 0,
                "mdns": False,
                **(page or {}),
            },
            **(extra or {}),
        }
        service = ConfigService(build_app_model(reg), [Layer("test", data)])
        orch = Orchestrator(service, reg)
        await orch.start()
        stack.push_async_callback(orch.stop)
        http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        stack.push_async_callback(http.close)
        running = Running(orch, http)

        async def on_command(msg: Message[Any]) -> None:
            running.commands.append(msg.payload)

        orch.bus.subscribe("control.command", on_command, module="test")
        return running

    try:
        yield start
    finally:
        await stack.aclose()
