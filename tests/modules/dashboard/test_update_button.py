"""The Health page's update buttons, over real HTTP: login, CSRF, and the request file."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path
from typing import Any

from tests.modules.dashboard.conftest import TOKEN, Running

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def exchange(tmp_path: Path, newer: str | None = "0.2.0") -> Path:
    """The updater's exchange folder as the root unit leaves it after a check."""
    folder = tmp_path / "update"
    folder.mkdir()
    if newer is not None:
        (folder / "check.json").write_text(
            json.dumps(
                {
                    "action": "check",
                    "outcome": "newer",
                    "version": newer,
                    "message": f"newer version available: {newer} (running 0.1.0)",
                    "at": 1.0,
                }
            )
        )
    return folder


async def health(r: Running) -> str:
    async with r.http.get(r.url("/health")) as resp:
        assert resp.status == 200
        return unescape(await resp.text())


async def test_the_update_button_needs_a_login_and_the_csrf_token(
    start_page: Any, tmp_path: Path
) -> None:
    folder = exchange(tmp_path)
    r: Running = await start_page(page={"update_dir": str(folder)})
    request = folder / "request.json"
    form = {"action": "update", "version": "0.2.0"}

    # not logged in: refused, nothing asked
    async with r.http.post(r.url("/update"), data=form, allow_redirects=False) as resp:
        assert resp.status == 401
    status, csrf = await r.login()
    assert status == 303 and csrf
    page = await health(r)
    assert "newer version available: 0.2.0" in page
    install = re.search(r'<form[^>]*id="update-install">(.*?)</form>', page, re.S)
    assert install is not None and "Update to 0.2.0" in install.group(1)
    assert f'name="csrf_token" value="{csrf}"' in install.group(1)

    # logged in, but without the token or with a wrong one: 403, nothing asked
    async with r.http.post(r.url("/update"), data=form) as resp:
        assert resp.status == 403
        assert "CSRF" in (await resp.json())["error"]
    async with r.http.post(r.url("/update"), data={**form, "csrf_token": "x" * len(csrf)}) as resp:
        assert resp.status == 403
    assert not request.exists()

    # with it: the request the root unit's .path watches, and the page says so
    async with r.http.post(r.url("/update"), data={**form, "csrf_token": csrf}) as resp:
        assert resp.status == 200
        answer = unescape(await resp.text())
    assert json.loads(request.read_text()) == {
        "action": "update",
        "version": "0.2.0",
        "at": json.loads(request.read_text())["at"],
    }
    notice = re.search(r'<p class="ok" id="update-notice">(.*?)</p>', answer)
    assert notice is not None
    assert (
        notice.group(1) == "The update to 0.2.0 was requested; the updater's answer appears here."
    )
    assert "An update was asked for and waits for the updater." in answer
    assert "An update was asked for" in await health(r)  # still there on the next visit

    # a check never replaces the update still waiting for the updater
    async with r.http.post(r.url("/update"), data={"action": "check", "csrf_token": csrf}) as resp:
        assert resp.status == 409
        assert "an update to 0.2.0 was asked for" in unescape(await resp.text())
    assert json.loads(request.read_text())["action"] == "update"

    # Check for updates
    request.unlink()
    async with r.http.post(r.url("/update"), data={"action": "check", "csrf_token": csrf}) as resp:
        assert resp.status == 200
    assert json.loads(request.read_text())["action"] == "check"


async def test_the_api_takes_the_bearer_token_and_refuses_bad_input(
    start_page: Any, tmp_path: Path
) -> None:
    folder = exchange(tmp_path, newer=None)
    r: Running = await start_page(page={"update_dir": str(folder)})
    async with r.http.post(r.url("/update"), json={"action": "update"}, headers=AUTH) as resp:
        assert resp.status == 202
        assert await resp.json() == {"ok": True, "requested": "update", "version": None}
    assert json.loads((folder / "request.json").read_text())["action"] == "update"
    (folder / "request.json").unlink()
    for bad in (
        {"action": "shell"},
        {"action": "update", "version": "1.0; reboot"},
        {"action": "update", "version": 3},
        {"action": "rollback"},  # by hand on the box only
    ):
        async with r.http.post(r.url("/update"), json=bad, headers=AUTH) as resp:
            assert resp.status == 400, bad
    assert not (folder / "request.json").exists()


async def test_without_the_updater_the_page_says_so_and_offers_no_button(
    start_page: Any, tmp_path: Path
) -> None:
    r: Running = await start_page(page={"update_dir": str(tmp_path / "none")})
    _, csrf = await r.login()
    page = await health(r)
    assert "The updater is not set up on this box" in page
    assert 'action="/update"' not in page
    async with r.http.post(r.url("/update"), data={"action": "check", "csrf_token": csrf}) as resp:
        assert resp.status == 409
        assert "not set up" in unescape(await resp.text())
    assert not (tmp_path / "none").exists()


async def test_a_read_only_visitor_sees_the_state_but_no_button(
    start_page: Any, tmp_path: Path
) -> None:
    folder = exchange(tmp_path)
    r: Running = await start_page(page={"update_dir": str(folder), "public_readonly": True})
    page = await health(r)
    assert "newer version available: 0.2.0" in page
    assert 'action="/update"' not in page
