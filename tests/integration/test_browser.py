"""The status page in a real headless Chromium against ``spyoncino run`` replaying the clip.

Debian's ``chromium`` driven by Python Playwright (never ``playwright install``: the browser
comes from the distribution). Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from spyoncino.core.orchestrator import discover

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "browser test password"
TOKEN = "browser-test-token-0123456789"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str | None = TOKEN) -> tuple[int, Any]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, OSError):
        return 0, None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium)")
    pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed")
    from spyoncino.modules.dashboard.status_page import hash_password

    registered = discover()
    if "status_page" not in registered:
        pytest.skip("status_page entry point not installed: pip install -e .")
    tmp = tmp_path_factory.mktemp("browser")
    port = _free_port()
    config: dict[str, Any] = {
        "cameras": {
            "sample": {
                "name": "Sample street",
                "source": "spyoncino:sample.mp4",
                "file": {"pace": "realtime", "loop": True},
            }
        },
        "storage": {"root": str(tmp / "root")},
        "runtime": {"health_interval": 1.0},
        "bus": {"status_interval": 2.0},
        "log": {"format": "json"},
        "status_page": {
            "listen": f"127.0.0.1:{port}",
            "password_hash": hash_password(PASSWORD),
            "api_token": TOKEN,
            "refresh_s": 1.0,
            "mdns": False,
        },
    }
    if "tracker" in registered:
        # short events, no merging: several events start while the page is open
        config["tracker"] = {
            "end_after_s": 1.5,
            "cooldown_s": 0.0,
            # activities: short ones, split every 5 s, so several start while the page is open
            "activity_gap_s": 1.5,
            "activity_max_s": 5.0,
        }
    if "clip" in registered:
        config["clip"] = {"preroll_s": 1.0, "postroll_s": 1.0}
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    exe = Path(sys.executable).with_name("spyoncino")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "spyoncino"]
    log = (tmp / "server.log").open("w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*cmd, "run", "--config", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"spyoncino run exited: {(tmp / 'server.log').read_text()[-3000:]}")
            if _get(base + "/health/ready", None)[0] == 200:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"never ready: {(tmp / 'server.log').read_text()[-3000:]}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.copy(tmp / "server.log", _artifacts() / "browser-server.log")


def _artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _context(browser: Any, **kw: Any) -> Any:
    # Playwright evaluates its wait predicates as strings, which the page's CSP
    # (script-src 'self', no eval) forbids; the page's own scripts never need it.
    return browser.new_context(bypass_csp=True, **kw)


def _login(page: Any, base: str) -> None:
    page.goto(base + "/")
    assert "/login" in page.url
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


def test_overview_login_snapshots_live_events_and_arming(server: str, browser: Any) -> None:
    ctx = _context(browser, viewport={"width": 1000, "height": 900})
    page = ctx.new_page()
    _login(page, server)
    page.reload()
    page.wait_for_load_state("load")
    # page weight without images: the document plus every script and stylesheet it loads,
    # uncompressed, as the browser's Resource Timing saw them (cached ones included)
    weight = page.evaluate(
        """() => {
            const nav = performance.getEntriesByType('navigation')[0];
            const parts = performance.getEntriesByType('resource')
                .filter(e => ['script', 'link', 'css'].includes(e.initiatorType))
                .map(e => [e.name, e.decodedBodySize]);
            return {document: nav.decodedBodySize, parts: parts};
        }"""
    )
    total = weight["document"] + sum(size for _, size in weight["parts"])
    assert weight["document"] > 0, weight
    assert len(weight["parts"]) == 2, weight  # app.js and style.css, nothing from elsewhere
    assert total <= 100 * 1024, weight

    # every camera card shows a snapshot that really loaded
    page.wait_for_function(
        "Array.from(document.querySelectorAll('img.snap')).length > 0 && "
        "Array.from(document.querySelectorAll('img.snap'))"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    widths = page.eval_on_selector_all("img.snap", "els => els.map(e => e.naturalWidth)")
    assert widths
    assert all(w > 0 for w in widths)
    page.screenshot(path=str(_artifacts() / "browser-overview.png"), full_page=True)

    # new events appear without reloading
    before = set(page.eval_on_selector_all("#recent li", "els => els.map(e => e.dataset.event)"))
    page.evaluate("window.__marker = 1")
    page.wait_for_function(
        "ids => Array.from(document.querySelectorAll('#recent li'))"
        ".some(li => !ids.includes(li.dataset.event))",
        arg=sorted(before),
        timeout=90_000,
    )
    assert page.evaluate("window.__marker") == 1  # same document: it was a live update
    page.screenshot(path=str(_artifacts() / "browser-live-event.png"), full_page=True)

    # arm / disarm and see the state change
    page.click("#btn-disarm")
    page.wait_for_function("document.getElementById('armed-state').textContent === 'disarmed'")
    page.click("#btn-arm")
    page.wait_for_function("document.getElementById('armed-state').textContent === 'armed'")
    status, body = _get(server + "/api/status")
    assert status == 200
    assert body["control"]["armed"] is True
    ctx.close()


def test_event_page_plays_the_clip(server: str, browser: Any) -> None:
    has_clip_module = "clip" in discover()
    deadline = time.monotonic() + (120 if has_clip_module else 60)
    event: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        _, body = _get(server + "/api/events?limit=50")
        events = (body or {}).get("events", [])
        with_clip = [e for e in events if "clip" in e["artifacts"]]
        with_snap = [e for e in events if "snapshot" in e["artifacts"]]
        if with_clip:
            event = with_clip[0]
            break
        if with_snap and not has_clip_module:
            event = with_snap[0]
            break
        time.sleep(1)
    assert event is not None, "no event with media appeared while the clip played"
    ctx = _context(browser)
    page = ctx.new_page()
    _login(page, server)
    page.goto(server + "/events")
    page.click(f'li[data-event="{event["id"]}"] a')
    page.wait_for_url(f"{server}/events/{event['id']}")
    page.wait_for_function(
        "() => { const i = document.getElementById('snapshot'); return i && i.naturalWidth > 0; }",
        timeout=15_000,
    )
    if "clip" not in event["artifacts"]:
        page.screenshot(path=str(_artifacts() / "browser-event.png"), full_page=True)
        ctx.close()
        pytest.skip("no clip artifact: the 'clip' module is not installed, so no video to play")
    duration = page.evaluate(
        """() => new Promise((ok, fail) => {
            const v = document.getElementById('clip');
            if (!v) { fail('no video element'); return; }
            const done = () => ok(v.duration);
            if (v.readyState >= 1) { done(); return; }
            v.addEventListener('loadedmetadata', done);
            v.addEventListener('error', () => fail('video error ' + (v.error && v.error.code)));
            v.load();
        })"""
    )
    assert duration > 0
    page.evaluate("document.getElementById('clip').play().catch(() => {})")
    page.wait_for_timeout(1000)
    page.screenshot(path=str(_artifacts() / "browser-event.png"), full_page=True)
    ctx.close()


def test_live_view_streams_frames(server: str, browser: Any) -> None:
    ctx = _context(browser)
    page = ctx.new_page()
    _login(page, server)
    page.goto(server + "/cameras/sample")
    page.wait_for_function(
        "() => { const i = document.getElementById('live'); return i && i.naturalWidth > 0; }",
        timeout=20_000,
    )
    page.screenshot(path=str(_artifacts() / "browser-live-view.png"))
    ctx.close()


def test_pages_fit_a_phone_screen(server: str, browser: Any) -> None:
    ctx = _context(browser, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = ctx.new_page()
    _login(page, server)
    for path, shot in (("/", "phone-overview"), ("/events", "phone-events"), ("/health", None)):
        page.goto(server + path)
        page.wait_for_load_state("load")
        # against the phone's width, not innerWidth: a mobile viewport widens itself to fit
        # content that overflows, so that difference stayed 0 while Health was 810 px wide
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide on a 390-px phone"
        if shot:
            page.screenshot(path=str(_artifacts() / f"browser-{shot}.png"), full_page=True)
    ctx.close()
