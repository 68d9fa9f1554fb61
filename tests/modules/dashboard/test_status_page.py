"""The status page against a real orchestrator, bus and modules, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from spyoncino.helpers.files import atomic_write_bytes, sha256_file
from spyoncino.modules.dashboard.status_page import Config, hash_password, verify_password
from spyoncino.modules.dashboard.status_page._auth import LoginLimiter
from spyoncino.modules.dashboard.status_page._metrics import Metrics, Reports
from spyoncino.modules.dashboard.status_page._store import EventQuery, resolve_media
from spyoncino.modules.dashboard.status_page._system import (
    collect,
    cpu_temperature,
    read_throttled,
    throttle_flags,
)
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact
from spyoncino.schemas.status import HealthReport, ModuleHealth

from .conftest import PASSWORD, PW_HASH, SAMPLE, TOKEN, Running, registry

CONTROL_POSTS = [
    "/api/arm",
    "/api/disarm",
    "/api/mute",
    "/api/unmute",
    "/api/cameras/cam/snapshot",
    "/api/config",
    "/logout",
    "/config",
]

LOOPING_CAM = {"cam": {"source": str(SAMPLE), "file": {"pace": "realtime", "loop": True}}}


# -- passwords and config ----
def test_hash_password_round_trip_and_salted() -> None:
    h1 = hash_password("s3cret", n=2**10)
    h2 = hash_password("s3cret", n=2**10)
    assert h1 != h2
    assert h1.startswith("scrypt$1024$8$1$")
    assert verify_password("s3cret", h1)
    assert not verify_password("s3cret ", h1)
    assert not verify_password("s3cret", "not-a-hash")


def test_config_rejects_a_password_that_is_not_a_hash() -> None:
    with pytest.raises(ValueError, match="scrypt"):
        Config(password_hash="hunter2")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Config(listen="0.0.0.0:99999")
    assert Config(listen="[::]:8080").host == "::"
    assert Config(public_url="http://spyoncino.local:8080").public_url
    with pytest.raises(ValueError):
        Config(public_url="javascript:alert(1)")


def test_login_limiter_locks_out_after_max_failures() -> None:
    lim = LoginLimiter(max_failures=3, window_s=60)
    for _ in range(3):
        assert lim.retry_after("a") == 0
        lim.failed("a")
    assert lim.retry_after("a") > 50
    assert lim.retry_after("b") == 0


def test_day_filter_uses_the_configured_zone() -> None:
    q = EventQuery(day="2026-03-29", tz="Europe/Rome")  # clocks go forward: a 23-hour day
    bounds = q.day_bounds()
    assert bounds is not None
    assert bounds[1] - bounds[0] == 23 * 3600
    assert bounds[0] == datetime(2026, 3, 28, 23, 0, tzinfo=UTC).timestamp()


# -- auth ----
async def test_unauthenticated_posts_are_refused_and_change_nothing(start_page: Any) -> None:
    r: Running = await start_page(cameras=LOOPING_CAM)
    await r.wait(lambda: r.page.control is not None)
    armed = r.page.control.armed
    version = r.orch.config.version
    for path in CONTROL_POSTS:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
            async with r.http.post(
                r.url(path), json={}, headers=headers, allow_redirects=False
            ) as resp:
                assert resp.status in (401, 403), (path, headers, resp.status)
        async with r.http.post(
            r.url(path), data={"csrf_token": "x"}, allow_redirects=False
        ) as resp:
            assert resp.status in (401, 403), (path, resp.status)
    # open routes (probes, static files, login) never open a door to another route
    for path in (
        "/static/../api/disarm",
        "/static/%2e%2e/api/disarm",
        "/health/live/../../api/disarm",
        "/login/../api/disarm",
        "//api/disarm",
        "/api//disarm",
        "/api/disarm/",
    ):
        async with r.http.post(URL(r.base + path, encoded=True), allow_redirects=False) as resp:
            assert resp.status in (401, 403, 404), (path, resp.status)
    assert await r.orch.bus.drain()  # what any of them published has reached the collector
    assert r.commands == []
    assert r.page.control.armed == armed
    assert r.orch.config.version == version
    # reads are behind login too by default
    for path in ("/api/status", "/api/events", "/media/cam/x.jpg", "/cameras/cam/latest.jpg"):
        async with r.http.get(r.url(path)) as resp:
            assert resp.status == 401, path
    async with r.http.get(
        r.url("/"), allow_redirects=False, headers={"Accept": "text/html"}
    ) as resp:
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/login")


async def test_session_needs_csrf_token_on_every_post(start_page: Any) -> None:
    r: Running = await start_page()
    status, csrf = await r.login()
    assert status == 303
    assert csrf
    await r.wait(lambda: r.page.control is not None)
    assert r.page.control.armed
    # a form post without (or with a wrong) CSRF token is rejected
    async with r.http.post(r.url("/api/disarm"), data={}, allow_redirects=False) as resp:
        assert resp.status == 403
    async with r.http.post(r.url("/api/disarm"), data={"csrf_token": "nope"}) as resp:
        assert resp.status == 403
    async with r.http.post(r.url("/api/disarm"), json={}) as resp:
        assert resp.status == 403
    assert await r.orch.bus.drain()  # what any of them published has reached the collector
    assert r.commands == []
    assert r.page.control.armed
    # with it, the form works and redirects back; the JSON call answers with the new state
    async with r.http.post(
        r.url("/api/disarm"), data={"csrf_token": csrf}, allow_redirects=False
    ) as resp:
        assert resp.status == 303
    await r.wait(lambda: r.page.control is not None and not r.page.control.armed)
    async with r.http.post(r.url("/api/arm"), json={}, headers={"X-CSRF-Token": csrf}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["state"]["armed"] is True
    assert [c.command for c in r.commands] == ["disarm", "arm"]
    assert {c.source for c in r.commands} == {"web"}
    # the session cookie is HttpOnly and SameSite=Strict
    async with r.http.get(r.url("/login")) as resp:
        text = await resp.text()
    assert "csrf_token" in text


async def test_login_cookie_flags_and_logout(start_page: Any) -> None:
    r: Running = await start_page()
    async with r.http.get(r.url("/login")) as resp:
        import re

        token = re.search(r'name="csrf_token" value="([^"]+)"', await resp.text())
        assert token is not None
    async with r.http.post(
        r.url("/login"),
        data={"csrf_token": token.group(1), "password": PASSWORD, "next": "//evil.example/"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/"  # no open redirect
        cookie = resp.headers.getall("Set-Cookie")
    session = next(c for c in cookie if c.startswith("spyoncino_session="))
    assert "HttpOnly" in session
    assert "SameSite=Strict" in session
    # login without the double-submit token is refused
    async with r.http.post(r.url("/login"), data={"password": PASSWORD}) as resp:
        assert resp.status == 403


async def test_bearer_token_drives_the_api(start_page: Any) -> None:
    r: Running = await start_page(cameras=LOOPING_CAM)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with r.http.post(r.url("/api/disarm"), headers=auth) as resp:
        assert resp.status == 200
        assert (await resp.json())["state"]["armed"] is False
    async with r.http.post(
        r.url("/api/mute"), headers=auth, json={"camera_id": "cam", "duration_s": 60}
    ) as resp:
        body = await resp.json()
        assert resp.status == 200
        assert "cam" in body["state"]["muted_until"]
    async with r.http.post(r.url("/api/cameras/cam/snapshot"), headers=auth) as resp:
        assert resp.status == 202  # no snapshot module runs here: the live image is offered
        assert (await resp.json())["image"] == "/cameras/cam/latest.jpg"
    async with r.http.post(r.url("/api/cameras/nope/snapshot"), headers=auth) as resp:
        assert resp.status == 404
    for bad in ({"camera_id": "nope"}, {"camera_id": 3}):
        async with r.http.post(r.url("/api/mute"), headers=auth, json=bad) as resp:
            assert resp.status == 404
    async with r.http.post(r.url("/api/mute"), headers=auth, json={"duration_s": "x"}) as resp:
        assert resp.status == 400
    async with r.http.post(r.url("/api/arm"), headers=auth, data=b"[1]") as resp:
        assert resp.status == 400
    async with r.http.get(r.url("/api/status"), headers=auth) as resp:
        status = await resp.json()
    assert status["control"]["armed"] is False
    assert [c["id"] for c in status["cameras"]] == ["cam"]
    assert status["system"]["version"]
    assert [c.command for c in r.commands] == ["disarm", "mute", "snapshot"]
    assert all(c.source == "api" for c in r.commands)


async def test_ten_wrong_passwords_are_rate_limited(start_page: Any) -> None:
    r: Running = await start_page()
    statuses = [(await r.login("wrong password"))[0] for _ in range(10)]
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    # even the right password waits out the lockout
    status, _ = await r.login(PASSWORD)
    assert status == 429


async def test_fifty_concurrent_wrong_passwords_are_limited_like_serial_ones(
    start_page: Any,
) -> None:
    """The limit was checked before the slow hash and recorded after it: 50 x 401, no 429."""
    r: Running = await start_page()
    async with r.http.get(r.url("/login")) as resp:
        token = re.search(r'name="csrf_token" value="([^"]+)"', await resp.text())
    assert token is not None

    async def wrong() -> int:
        async with r.http.post(
            r.url("/login"),
            data={"csrf_token": token.group(1), "password": "wrong", "next": "/"},
            allow_redirects=False,
        ) as resp:
            return resp.status

    statuses = await asyncio.gather(*(wrong() for _ in range(50)))
    assert statuses.count(401) <= 5  # login_max_failures
    assert statuses.count(429) >= 45
    assert set(statuses) <= {401, 429}


def test_the_global_ceiling_never_locks_out_a_client_that_logged_in_before() -> None:
    lim = LoginLimiter(max_failures=3, window_s=60, global_factor=2)
    assert lim.acquire("owner") is not None
    lim.succeeded("owner")
    for n in range(3):  # a distributed guesser: 6 failures from 3 addresses
        for _ in range(2):
            assert lim.acquire(f"guesser{n}") is not None
    assert lim.retry_after("stranger") > 0  # the global ceiling holds new clients back
    assert lim.acquire("stranger") is None
    assert lim.retry_after("owner") == 0  # but not the owner
    assert lim.acquire("owner") is not None


async def test_public_readonly_opens_pages_but_not_commands(start_page: Any) -> None:
    r: Running = await start_page(page={"public_readonly": True})
    async with r.http.get(r.url("/api/status")) as resp:
        assert resp.status == 200
    async with r.http.get(r.url("/")) as resp:
        assert resp.status == 200
        assert "btn-arm" not in await resp.text()  # no buttons for anonymous visitors
    async with r.http.post(r.url("/api/disarm")) as resp:
        assert resp.status == 401


# -- hostile requests ----
async def test_malformed_requests_get_a_clear_4xx_never_a_500(start_page: Any) -> None:
    r: Running = await start_page()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # a multipart body without a boundary, on the one POST that needs no auth
    async with r.http.post(
        r.url("/login"), data=b"x", headers={"Content-Type": "multipart/form-data"}
    ) as resp:
        assert resp.status == 400, await resp.text()
    # JSON nested deeper than any request needs
    for path in ("/api/config", "/api/arm", "/api/mute"):
        async with r.http.post(
            r.url(path),
            data=b"[" * 100_000,
            headers={**auth, "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400, (path, await resp.text())
    # dates the calendar has but the clock cannot reach
    for day in ("9999-12-31", "0001-01-01", "2026-02-30"):
        async with r.http.get(r.url(f"/api/events?day={day}"), headers=auth) as resp:
            assert resp.status == 400, (day, await resp.text())
        async with r.http.get(r.url(f"/events?day={day}"), headers=auth) as resp:
            assert resp.status == 400, (day, await resp.text())
    for before in ("nan", "inf", "1e400"):
        async with r.http.get(r.url(f"/api/events?before={before}"), headers=auth) as resp:
            assert resp.status == 400, (before, await resp.text())
    # a bad Authorization header on an open route is not a reason to refuse it
    for header in ("Basic Zm9vOmJhcg==", "Bearer wrong", "garbage"):
        async with r.http.get(r.url("/health/live"), headers={"Authorization": header}) as resp:
            assert resp.status == 200, header
        async with r.http.get(r.url("/login"), headers={"Authorization": header}) as resp:
            assert resp.status == 200, header
        async with r.http.get(r.url("/api/status"), headers={"Authorization": header}) as resp:
            assert resp.status == 401, header  # but never on a protected one


async def test_a_symlink_planted_in_the_root_serves_nothing(
    start_page: Any, tmp_path: Path
) -> None:
    """The extension was checked on the link's name: x.jpg -> events.sqlite3 served the index."""
    root = tmp_path / "root"
    day = root / "cam" / "2026-01-01"
    day.mkdir(parents=True)
    (day / "real.jpg").write_bytes(b"\xff\xd8jpeg")
    r: Running = await start_page()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    (root / "events.sqlite3").write_bytes(b"SQLite format 3\x00")
    (day / "db.jpg").symlink_to(root / "events.sqlite3")
    (day / "pw.jpg").symlink_to(root / "status_page.password")
    (day / "alias.jpg").symlink_to(day / "real.jpg")
    (root / "linked").symlink_to(day, target_is_directory=True)
    for path in (
        "cam/2026-01-01/db.jpg",
        "cam/2026-01-01/pw.jpg",
        "cam/2026-01-01/alias.jpg",
        "linked/real.jpg",
    ):
        async with r.http.get(r.url(f"/media/{path}"), headers=auth) as resp:
            assert resp.status == 404, path
    async with r.http.get(r.url("/media/cam/2026-01-01/real.jpg"), headers=auth) as resp:
        assert resp.status == 200


# -- media ----
async def test_media_only_from_the_storage_root(start_page: Any, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "cam" / "2026-01-01").mkdir(parents=True)
    (root / "cam" / "2026-01-01" / "ev.jpg").write_bytes(b"\xff\xd8jpeg")
    (root / "cam" / "2026-01-01" / ".ev.jpg.abcd.part").write_bytes(b"partial")
    (tmp_path / "secret.jpg").write_bytes(b"outside")
    (root / "escape.jpg").symlink_to(tmp_path / "secret.jpg")
    r: Running = await start_page()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with r.http.get(r.url("/media/cam/2026-01-01/ev.jpg"), headers=auth) as resp:
        assert resp.status == 200
        assert await resp.read() == b"\xff\xd8jpeg"
    attacks = [
        "/media/../secret.jpg",
        "/media/cam/../../secret.jpg",
        "/media/%2e%2e/secret.jpg",
        "/media/..%2fsecret.jpg",
        "/media/cam%2f..%2f..%2fsecret.jpg",
        "/media/%2E%2E%2F%2E%2E%2Fsecret.jpg",
        "/media//etc/passwd",
        "/media/%2fetc%2fpasswd",
        f"/media/{tmp_path}/secret.jpg",
        "/media/escape.jpg",
        "/media/cam/2026-01-01/.ev.jpg.abcd.part",
        "/media/events.sqlite3",
        "/media/state.json",
        "/media/..\\secret.jpg",
    ]
    for path in attacks:
        async with r.http.get(URL(r.base + path, encoded=True), headers=auth) as resp:
            body = await resp.read()
            assert resp.status == 404, (path, resp.status)
            assert b"outside" not in body
    assert resolve_media(root, "cam/2026-01-01/ev.jpg") is not None
    assert resolve_media(root, "/etc/passwd") is None


# -- health ----
async def _ready(r: Running) -> tuple[int, dict[str, Any]]:
    async with r.http.get(r.url("/health/ready")) as resp:
        return resp.status, await resp.json()


async def test_ready_follows_storage_writability(start_page: Any, tmp_path: Path) -> None:
    root = tmp_path / "root"
    r: Running = await start_page(cameras=LOOPING_CAM, root=root)
    async with r.http.get(r.url("/health/live")) as resp:
        assert resp.status == 200
        assert (await resp.json())["ok"]
    await r.wait(lambda: _status_is(r, 200))
    # storage root replaced by a regular file: even root cannot write under it
    moved = tmp_path / "moved"
    root.rename(moved)
    root.write_text("not a directory")
    status, body = await _ready(r)
    assert status == 503
    assert body["checks"]["storage"]["ok"] is False
    assert "not writable" in body["checks"]["storage"]["reason"]
    root.unlink()
    moved.rename(root)
    status, body = await _ready(r)
    assert status == 200, body


async def _status_is(r: Running, code: int) -> bool:
    return (await _ready(r))[0] == code


async def test_ready_needs_a_camera_that_streams(start_page: Any, tmp_path: Path) -> None:
    broken = tmp_path / "cam.mp4"
    broken.write_bytes(b"this is not a video")
    cams = {"cam": {"source": str(broken), "file": {"pace": "realtime", "loop": True}}}
    r: Running = await start_page(cameras=cams)
    await r.wait(lambda: r.page.reports.health is not None)
    await r.wait(lambda: _status_is(r, 503))
    status, body = await _ready(r)
    assert status == 503
    assert body["checks"]["cameras"]["ok"] is False
    assert "no camera" in body["checks"]["cameras"]["reason"]
    # fix the source: the input reconnects and the box becomes ready
    shutil.copyfile(SAMPLE, broken)
    await r.wait(lambda: _status_is(r, 200), timeout=30)


async def test_ready_before_first_health_report_says_why(start_page: Any) -> None:
    r: Running = await start_page(extra={"runtime": {"health_interval": 600}})
    await r.wait(lambda: r.page.reports.health is not None)
    r.page.reports.health = None  # as if the orchestrator had not reported yet
    status, body = await _ready(r)
    assert status == 503
    assert "no health report" in body["reasons"][0]


# -- events, live updates, pages ----
def _notice(event_id: str, phase: str = "started", **kw: Any) -> EventNotice:
    now = time.time()
    return EventNotice(
        event_id=event_id,
        camera_id="cam",
        kind="object",
        phase=phase,  # type: ignore[arg-type]
        labels=("person",),
        top_score=0.9,
        started_at=now,
        updated_at=now,
        ended_at=now if phase == "ended" else None,
        **kw,
    )


async def test_events_show_up_live_and_in_the_index(start_page: Any, tmp_path: Path) -> None:
    root = tmp_path / "root"
    r: Running = await start_page(modules=("status_page", "arming", "index"), cameras=LOOPING_CAM)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    got: list[dict[str, Any]] = []

    async def listen() -> None:
        async with r.http.get(r.url("/api/stream"), headers=auth) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            kind = ""
            async for raw in resp.content:
                line = raw.decode().strip()
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "event":
                    got.append(json.loads(line[6:]))

    task = asyncio.create_task(listen())
    await r.wait(lambda: r.page.clients)
    await r.orch.bus.publish("event.object.started", _notice("ev-1"))
    jpg = root / "cam" / "2026-01-01" / "ev-1.jpg"
    digest = atomic_write_bytes(jpg, b"\xff\xd8\xff\xe0fakejpeg")
    art = MediaArtifact(
        event_id="ev-1",
        camera_id="cam",
        kind="snapshot",
        path=str(jpg),
        relpath="cam/2026-01-01/ev-1.jpg",
        size_bytes=jpg.stat().st_size,
        sha256=digest,
        mime="image/jpeg",
        created_at=time.time(),
    )
    await r.orch.bus.publish("media.snapshot.ready", art)
    await r.wait(lambda: any("snapshot" in e["artifacts"] for e in got))
    assert got[0]["id"] == "ev-1"
    assert got[0]["labels"] == ["person"]
    task.cancel()
    # the index flushes within its interval; the API merges index and live rows
    await r.wait(lambda: (root / "events.sqlite3").exists())
    await r.orch.bus.publish("event.object.ended", _notice("ev-1", "ended"))
    async with r.http.get(r.url("/api/events?camera=cam&label=person"), headers=auth) as resp:
        events = (await resp.json())["events"]
    assert [e["id"] for e in events] == ["ev-1"]
    assert events[0]["artifacts"]["snapshot"]["url"] == "/media/cam/2026-01-01/ev-1.jpg"
    async with r.http.get(r.url("/api/events?label=car"), headers=auth) as resp:
        assert (await resp.json())["events"] == []
    async with r.http.get(r.url("/events/ev-1"), headers=auth) as resp:
        page = await resp.text()
    assert 'src="/media/cam/2026-01-01/ev-1.jpg"' in page
    async with r.http.get(r.url("/events?day=2026-13-01"), headers=auth) as resp:
        assert resp.status == 400
    async with r.http.get(r.url("/events/nope"), headers=auth) as resp:
        assert resp.status == 404
    assert sha256_file(jpg) == digest


async def test_pages_render_and_stay_small(start_page: Any) -> None:
    r: Running = await start_page(cameras=LOOPING_CAM)
    await r.login()
    total = 0
    for path in (
        "/",
        "/events",
        "/health",
        "/config",
        "/cameras/cam",
        "/static/app.js",
        "/static/style.css",
    ):
        async with r.http.get(r.url(path)) as resp:
            assert resp.status == 200, path
            body = await resp.read()
            if path in ("/", "/static/app.js", "/static/style.css"):
                total += len(body)
            assert resp.headers["X-Frame-Options"] == "DENY"
    assert total <= 100 * 1024
    async with r.http.get(r.url("/config")) as resp:
        text = await resp.text()
    assert "scrypt$" not in text
    assert TOKEN not in text
    assert "***" in text


async def test_live_images_come_from_the_latest_frame(start_page: Any) -> None:
    r: Running = await start_page(cameras=LOOPING_CAM)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    await r.wait(lambda: "cam" in r.page.frames)
    async with r.http.get(r.url("/cameras/cam/latest.jpg?w=640"), headers=auth) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/jpeg"
        small = await resp.read()
    assert small[:2] == b"\xff\xd8"
    async with r.http.get(r.url("/cameras/cam/stream.mjpeg"), headers=auth) as resp:
        assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        chunk = await resp.content.readuntil(b"\r\n\r\n")
        assert b"image/jpeg" in chunk
    async with r.http.get(r.url("/cameras/nope/latest.jpg"), headers=auth) as resp:
        assert resp.status == 404


async def test_config_update_applies_or_reports_the_reason(start_page: Any) -> None:
    r: Running = await start_page()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with r.http.post(
        r.url("/api/config"), headers=auth, json={"status_page": {"refresh_s": 5}}
    ) as resp:
        body = await resp.json()
    assert resp.status == 200
    assert body["ok"]
    assert body["version"] == 2
    assert r.page.cfg.refresh_s == 5
    assert body["config"]["status_page"]["password_hash"] == "***"
    async with r.http.post(
        r.url("/api/config"), headers=auth, json={"status_page": {"refresh_s": -1}}
    ) as resp:
        body = await resp.json()
    assert resp.status == 422
    assert "refresh_s" in body["reason"]
    async with r.http.post(
        r.url("/api/config"), headers=auth, json={"status_page": {"listen": "127.0.0.1:1"}}
    ) as resp:
        body = await resp.json()
    assert resp.status == 422
    assert "restart" in body["reason"]
    assert r.orch.config.version == 2
    # the form on the config page shows the verdict
    _, csrf = await r.login()
    async with r.http.post(
        r.url("/config"), data={"csrf_token": csrf, "changes": "status_page:\n  refresh_s: 0.1\n"}
    ) as resp:
        text = await resp.text()
    assert "Rejected" in text
    assert "refresh_s" in text


# -- metrics ----
async def _scrape(r: Running) -> str:
    async with r.http.get(r.url("/metrics")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await resp.text()


def _value(text: str, prefix: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_metrics_move_as_the_clip_plays(start_page: Any) -> None:
    mods = ("status_page", "arming", "motion", "detector", "tracker", "snapshot", "index")
    r: Running = await start_page(modules=mods, cameras=LOOPING_CAM)
    await r.wait(lambda: r.page.reports.health is not None and r.page.reports.bus is not None)
    frames = 'spyoncino_camera_frames_total{camera="cam"}'

    async def scrape_when(pred: Callable[[str], bool]) -> str:
        text = await _scrape(r)
        return text if pred(text) else ""

    first = await r.wait(lambda: scrape_when(lambda t: _value(t, frames) > 0))
    second = await r.wait(lambda: scrape_when(lambda t: _value(t, frames) > _value(first, frames)))
    assert _value(second, frames) > _value(first, frames) > 0
    for name in (
        "spyoncino_camera_fps",
        "spyoncino_bus_queue_depth",
        "spyoncino_bus_lag_seconds",
        "spyoncino_storage_free_bytes",
        "spyoncino_module_state",
        "spyoncino_build_info",
    ):
        assert name in second, name
    if "motion" in registry("motion"):
        await r.wait(
            lambda: _value(r.page.prom.render().decode(), "spyoncino_motion_events_total") > 0
        )
    if "detector" in registry("detector"):
        await r.wait(
            lambda: _value(r.page.prom.render().decode(), "spyoncino_detections_total{") > 0,
            timeout=40,
        )
        text = await _scrape(r)
        assert 'label="person"' in text
        assert _value(text, "spyoncino_inference_latency_seconds_count") > 0
    else:
        pytest.skip("no 'detector' entry point: detections by label not checked")


async def test_metrics_pass_promtool(start_page: Any) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing (Debian package 'prometheus')")
    mods = ("status_page", "arming", "motion", "detector", "tracker", "snapshot", "index")
    r: Running = await start_page(modules=mods, cameras=LOOPING_CAM)
    await r.wait(lambda: r.page.reports.health is not None and r.page.reports.bus is not None)
    if "detector" in registry("detector"):  # so the histogram and labelled counters are there
        await r.wait(
            lambda: _value(r.page.prom.render().decode(), "spyoncino_detections_total{") > 0,
            timeout=40,
        )
    text = await _scrape(r)
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_metrics_and_health_detail_are_private_by_default_off_loopback() -> None:
    """/metrics and /health/ready told anyone on the LAN the camera names and the storage path."""
    lan = Config(listen="0.0.0.0:8080")
    assert lan.metrics_open is False and lan.health_detail_open is False
    box = Config(listen="127.0.0.1:8080")
    assert box.metrics_open is True and box.health_detail_open is True
    assert Config(listen="[::1]:8080").metrics_open is True
    assert Config(listen="localhost:8080").metrics_open is True
    said = Config(listen="0.0.0.0:8080", metrics_public=True, health_detail_public=True)
    assert said.metrics_open is True and said.health_detail_open is True


async def test_health_detail_can_be_kept_from_anonymous_clients(start_page: Any) -> None:
    r: Running = await start_page(page={"health_detail_public": False})
    async with r.http.get(r.url("/health/ready")) as resp:
        body = await resp.json()
    assert set(body) == {"ready"}  # the verdict only: no camera names, no paths
    async with r.http.get(
        r.url("/health/ready"), headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        assert "checks" in await resp.json()


async def test_metrics_can_require_the_token(start_page: Any) -> None:
    r: Running = await start_page(page={"metrics_public": False})
    async with r.http.get(r.url("/metrics")) as resp:
        assert resp.status == 401
    async with r.http.get(r.url("/metrics"), headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200


async def test_first_start_without_password_writes_one(start_page: Any, tmp_path: Path) -> None:
    r: Running = await start_page(page={"password_hash": None})
    pw_file = tmp_path / "root" / "status_page.password"
    assert pw_file.stat().st_mode & 0o077 == 0
    password = pw_file.read_text().strip()
    assert (await r.login("guess"))[0] == 401
    assert (await r.login(password))[0] == 303


def test_hash_password_default_cost_is_accepted() -> None:
    h = hash_password("pw")
    assert Config(password_hash=h).password_hash is not None  # type: ignore[arg-type]
    assert PW_HASH.startswith("scrypt$")


@pytest.mark.parametrize("listen", ["127.0.0.1:0"])
async def test_port_zero_reports_the_bound_port(start_page: Any, listen: str) -> None:
    r: Running = await start_page(page={"listen": listen})
    assert r.page.port > 0
    async with aiohttp.ClientSession() as s, s.get(r.url("/health/live")) as resp:
        assert resp.status == 200


# -- mDNS ----
async def test_mdns_advertises_the_page(start_page: Any) -> None:
    zeroconf = pytest.importorskip("zeroconf.asyncio", reason="the 'mdns' extra is not installed")
    name = f"Spyoncino test {time.time_ns()}"
    r: Running = await start_page(page={"listen": "0.0.0.0:0", "mdns": True, "mdns_name": name})
    await r.wait(lambda: r.page._mdns is not None and r.page._mdns._info is not None, timeout=15)
    azc = zeroconf.AsyncZeroconf()
    try:
        info = await azc.async_get_service_info(
            "_http._tcp.local.", f"{name}._http._tcp.local.", timeout=5000
        )
    finally:
        await azc.async_close()
    assert info is not None
    assert info.port == r.page.port
    assert info.properties[b"path"] == b"/"


async def test_mdns_skipped_on_loopback(start_page: Any) -> None:
    r: Running = await start_page(page={"mdns": True})
    mdns = next(t for t in r.page._tasks if t.get_name().endswith(":mdns"))
    await asyncio.wait_for(mdns, 5)  # the advertiser's task decided and ended
    assert r.page._mdns is None


# -- system probe ----
def test_cpu_temperature_prefers_the_cpu_zone(tmp_path: Path) -> None:
    for i, (kind, milli) in enumerate([("acpitz", "41000"), ("cpu-thermal", "55312")]):
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    assert cpu_temperature(tmp_path) == pytest.approx(55.312)
    assert cpu_temperature(tmp_path / "none") is None


async def test_throttling_read_from_vcgencmd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "vcgencmd"  # the Pi firmware tool's output format
    fake.write_text("#!/bin/sh\necho throttled=0x50005\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    value = await read_throttled()
    assert value == 0x50005
    assert throttle_flags(value) == (
        "under-voltage",
        "throttled",
        "under-voltage occurred",
        "throttling occurred",
    )
    info = collect(tmp_path, time.monotonic(), "1.0", value)
    assert info.as_dict()["throttled"] == "0x50005"
    assert info.mem_total > 0


# -- pages with every kind of content ----
async def test_event_health_and_events_pages_show_everything(
    start_page: Any, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    r: Running = await start_page(cameras=LOOPING_CAM)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    await r.wait(lambda: r.page.reports.bus is not None and r.page.reports.health is not None)
    for i in range(3):
        await r.orch.bus.publish("event.object.started", _notice(f"ev-{i}"))
    for kind, ext, mime in (
        ("snapshot", "jpg", "image/jpeg"),
        ("gif", "gif", "image/gif"),
        ("clip", "mp4", "video/mp4"),
    ):
        f = root / "cam" / "2026-01-01" / f"ev-0.{ext}"
        digest = atomic_write_bytes(f, b"data")
        art = MediaArtifact(
            event_id="ev-0",
            camera_id="cam",
            kind=kind,  # type: ignore[arg-type]
            path=str(f),
            relpath=f"cam/2026-01-01/ev-0.{ext}",
            size_bytes=4,
            sha256=digest,
            mime=mime,
            created_at=time.time(),
            duration_s=2.0 if kind == "clip" else None,
        )
        await r.orch.bus.publish(f"media.{kind}.ready", art)
    await r.wait(lambda: (e := r.page.live.get("ev-0")) is not None and len(e.artifacts) == 3)
    async with r.http.get(r.url("/events/ev-0"), headers=auth) as resp:
        page = await resp.text()
    assert 'id="gif"' in page
    assert 'id="clip"' in page
    assert 'src="/media/cam/2026-01-01/ev-0.mp4"' in page
    async with r.http.get(r.url("/api/events/ev-0"), headers=auth) as resp:
        assert (await resp.json())["artifacts"]["clip"]["duration_s"] == 2.0
    async with r.http.get(r.url("/api/events/nope"), headers=auth) as resp:
        assert resp.status == 404
    async with r.http.get(r.url("/events?limit=2&camera=cam"), headers=auth) as resp:
        page = await resp.text()
    assert "Older events" in page
    async with r.http.get(r.url("/health"), headers=auth) as resp:
        page = await resp.text()
    assert "status_page" in page
    assert "camera.cam.frame" in page
    assert "ready" in page
    async with r.http.get(r.url("/api/events?limit=x"), headers=auth) as resp:
        assert resp.status == 400


def test_report_metrics_cover_outbox_cameras_and_modules() -> None:
    cam = ModuleHealth(
        module="file:cam",
        state="ok",
        metrics={
            "camera": "cam",
            "camera_state": "streaming",
            "fps": 9.5,
            "frames": 42,
            "frames_capped": 3,
            "frames_decoded": 51,
            "dropped_fps_cap": 3,
            "dropped_queue_full": 5,
            "dropped_decode_error": 1,
            "reconnects": 1,
            "threads_abandoned": 2,
            "last_frame_age_s": 0.1,
        },
    )
    wedged = ModuleHealth(
        module="usb:cellar",
        state="failed",
        metrics={"camera": "cellar", "camera_state": "wedged", "threads_abandoned": 3},
    )
    tg = ModuleHealth(module="telegram", state="degraded", metrics={"outbox_pending": 4})
    motion = ModuleHealth(
        module="motion", state="ok", metrics={"cam.cam.frames": 40, "cam.cam.skipped": 7}
    )
    reports = Reports(
        health=HealthReport(overall="degraded", modules=(cam, wedged, tg, motion), at=time.time())
    )
    text = Metrics(lambda: reports, "9.9").render().decode()
    assert 'spyoncino_camera_threads_abandoned_total{camera="cellar"} 3.0' in text
    assert 'spyoncino_camera_up{camera="cellar"} 0.0' in text
    assert 'spyoncino_camera_up{camera="cam"} 1.0' in text
    assert 'spyoncino_outbox_depth{module="telegram"} 4.0' in text
    assert 'spyoncino_camera_frames_total{camera="cam"} 42.0' in text
    assert 'spyoncino_camera_frames_dropped_total{camera="cam",reason="fps_cap"} 3.0' in text
    assert 'spyoncino_camera_frames_dropped_total{camera="cam",reason="queue_full"} 5.0' in text
    assert 'spyoncino_camera_frames_dropped_total{camera="cam",reason="decode_error"} 1.0' in text
    assert 'spyoncino_camera_frames_dropped_total{camera="cam",reason="motion_busy"} 7.0' in text
    assert 'spyoncino_camera_frames_decoded_total{camera="cam"} 51.0' in text
    assert 'spyoncino_module_state{module="telegram",state="degraded"} 1.0' in text
    assert 'spyoncino_build_info{version="9.9"} 1.0' in text


async def test_stop_is_quick_with_live_viewers_connected(start_page: Any) -> None:
    r: Running = await start_page(cameras=LOOPING_CAM)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    await r.wait(lambda: "cam" in r.page.frames)
    sse = await r.http.get(r.url("/api/stream"), headers=auth)
    mjpeg = await r.http.get(r.url("/cameras/cam/stream.mjpeg"), headers=auth)
    await mjpeg.content.readuntil(b"\r\n\r\n")
    await r.wait(lambda: r.page.clients and r.page.streams)
    t0 = time.monotonic()
    await r.page.stop()
    assert time.monotonic() - t0 < 3.0
    assert not r.page.clients
    await r.page.stop()  # idempotent
    sse.close()
    mjpeg.close()


async def test_snapshot_now_returns_the_stored_file(start_page: Any) -> None:
    r: Running = await start_page(
        modules=("status_page", "arming", "snapshot"), cameras=LOOPING_CAM
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    await r.wait(lambda: "cam" in r.page.frames)
    async with r.http.post(r.url("/api/cameras/cam/snapshot"), headers=auth) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert body["stored"].startswith("cam/")
    async with r.http.get(r.url(body["image"]), headers=auth) as resp:
        assert resp.status == 200
        assert (await resp.read())[:2] == b"\xff\xd8"


async def test_ready_fails_when_the_only_camera_is_quarantined(
    start_page: Any, tmp_path: Path
) -> None:
    cams = {"cam": {"source": str(tmp_path / "missing.mp4")}}
    r: Running = await start_page(cameras=cams)
    await r.wait(lambda: r.page.reports.health is not None)
    status, body = await _ready(r)
    assert status == 503
    assert body["checks"]["cameras"]["states"] == {"cam": "quarantined"}
    async with r.http.get(
        r.url("/api/status"), headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        assert (await resp.json())["cameras"][0]["state"] == "quarantined"


async def test_activities_with_their_objects_filter_by_severity_zone_and_time(
    start_page: Any, tmp_path: Path
) -> None:
    from spyoncino.schemas.events import TrackedObject
    from spyoncino.schemas.frames import Box

    root = tmp_path / "root"
    r: Running = await start_page(modules=("status_page", "arming", "index"), cameras=LOOPING_CAM)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    box = Box(x1=1, y1=1, x2=20, y2=40)
    people = tuple(
        TrackedObject(track_id=i, label="person", score=0.8, box=box, zones=("porch",))
        for i in (1, 2)
    )
    car = TrackedObject(track_id=3, label="car", score=0.7, box=box)
    alert = _notice("act-alert", "ended", objects=(*people, car), zones=("porch",))
    quiet = _notice("act-car", "ended", objects=(car,), severity="detection")
    for ev in (alert, quiet):
        await r.orch.bus.publish("event.object.ended", ev)
    await r.wait(lambda: (root / "events.sqlite3").exists())

    async def ids(query: str) -> list[str]:
        async with r.http.get(r.url(f"/api/events?{query}"), headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            return sorted(e["id"] for e in (await resp.json())["events"])

    assert await ids("severity=alert") == ["act-alert"]
    assert await ids("severity=detection") == ["act-car"]
    assert await ids("zone=porch") == ["act-alert"]
    assert await ids(f"after={time.time() + 60}") == []
    async with r.http.get(r.url("/api/events?severity=loud"), headers=auth) as resp:
        assert resp.status == 400
    async with r.http.get(r.url("/api/events/act-alert"), headers=auth) as resp:
        doc = await resp.json()
    assert doc["severity"] == "alert"
    assert [o["label"] for o in doc["objects"]] == ["person", "person", "car"]
    async with r.http.get(r.url("/events?severity=alert"), headers=auth) as resp:
        page = await resp.text()
    assert "2 people, 1 car" in page and "act-car" not in page
    async with r.http.get(r.url("/events/act-alert"), headers=auth) as resp:
        assert "2 people, 1 car" in await resp.text()
