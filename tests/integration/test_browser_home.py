"""The home user's pages in a real headless Chromium against ``spyoncino run``.

Every page fits a 390-px phone; a zone drawn on the snapshot with the mouse and another with a
finger are saved, survive a restart of the runtime and are applied (events carry their names);
the first-run page adds a file camera and the first event shows. Debian's ``chromium`` driven
by Python Playwright, as in ``test_browser.py``; screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from spyoncino.core.orchestrator import discover

from .test_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    TOKEN,
    _context,
    _free_port,
    _get,
)

pytestmark = pytest.mark.browser

SAMPLE = Path(__file__).resolve().parents[2] / "spyoncino" / "data" / "sample.mp4"
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1000, "height": 900}}


class Box:
    """``spyoncino run --forever`` on a config and storage root kept across restarts."""

    def __init__(self, tmp: Path, cameras: dict[str, Any]) -> None:
        from spyoncino.modules.dashboard.status_page import hash_password

        self.tmp = tmp
        self.root = tmp / "root"
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        registered = discover()
        config: dict[str, Any] = {
            "cameras": cameras,
            "storage": {"root": str(self.root)},
            "runtime": {"health_interval": 1.0},
            "bus": {"status_interval": 2.0},
            "log": {"format": "json"},
            "status_page": {
                "listen": f"127.0.0.1:{self.port}",
                "password_hash": hash_password(PASSWORD, n=2**10),
                "api_token": TOKEN,
                "refresh_s": 1.0,
                "mdns": False,
            },
        }
        if "tracker" in registered:
            config["tracker"] = {
                "end_after_s": 1.5,
                "cooldown_s": 0.0,
                # activities: short ones, split every 5 s, so several start while the page is open
                "activity_gap_s": 1.5,
                "activity_max_s": 5.0,
            }
        if "clip" in registered:
            config["clip"] = {"preroll_s": 1.0, "postroll_s": 1.0}
        self.config = tmp / "config.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def log(self) -> Path:
        return self.tmp / f"server-{self.runs}.log"

    def start(self) -> None:
        self.runs += 1
        exe = Path(sys.executable).with_name("spyoncino")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "spyoncino"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [*cmd, "run", "--forever", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"spyoncino run exited: {self.log.read_text()[-3000:]}")
            if _get(self.base + "/health/live", None)[0] == 200:
                return
            time.sleep(0.3)
        pytest.fail(f"never answered: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.log, ARTIFACTS / f"browser-home-{self.tmp.name}-{self.runs}.log")

    def restart(self) -> None:
        self.stop()
        self.start()

    def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        _, body = _get(self.base + "/api/events?limit=200")
        return [e for e in (body or {}).get("events", []) if e["started_at"] >= since]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium)")
    pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed")
    if "status_page" not in discover():
        pytest.skip("status_page entry point not installed: pip install -e .")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    made: list[Box] = []

    def make(cameras: dict[str, Any]) -> Box:
        b = Box(tmp_path, cameras)
        made.append(b)
        b.start()
        return b

    yield make  # type: ignore[misc]
    for b in made:
        b.stop()


def _login(page: Any, base: str) -> None:
    page.goto(base + "/login")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


def _weight(page: Any) -> int:
    """The document plus every script and stylesheet it loaded, uncompressed (no images)."""
    w = page.evaluate(
        """() => {
            const nav = performance.getEntriesByType('navigation')[0];
            const parts = performance.getEntriesByType('resource')
                .filter(e => ['script', 'link', 'css'].includes(e.initiatorType))
                .map(e => e.decodedBodySize);
            return nav.decodedBodySize + parts.reduce((a, b) => a + b, 0);
        }"""
    )
    return int(w)


def _fits(page: Any, what: str) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"{what} is {width} px wide on a 390-px phone"


LOOPING = {
    "sample": {
        "name": "Sample street",
        "source": "spyoncino:sample.mp4",
        "file": {"pace": "realtime", "loop": True},
    }
}


def test_every_page_fits_a_390px_phone(box: Any, browser: Any) -> None:
    b: Box = box(LOOPING)
    deadline = time.monotonic() + 90
    while not b.events() and time.monotonic() < deadline:
        time.sleep(1)
    events = b.events()
    assert events, "no event while the clip played"
    ctx = _context(browser, **PHONE)
    page = ctx.new_page()
    page.goto(b.base + "/login")
    page.wait_for_load_state("load")
    _fits(page, "/login")
    _login(page, b.base)
    weights = {}
    for path in (
        "/",
        "/events",
        f"/events/{events[0]['id']}",
        "/cameras/sample",
        "/cameras/sample/zones",
        "/health",
        "/config",
        "/setup",
        "/settings/telegram",
    ):
        # the live view never finishes loading (MJPEG): the DOM is enough there
        page.goto(
            b.base + path, wait_until="domcontentloaded" if path == "/cameras/sample" else "load"
        )
        _fits(page, path)
        if path != "/cameras/sample":
            weights[path] = _weight(page)
        if path == "/health":
            page.click("#health-details summary")  # the bus tables scroll inside their box
            _fits(page, "/health with its details open")
            with page.expect_event("load", timeout=20_000):  # its own refresh, every 10 s
                pass
            assert page.evaluate("document.getElementById('health-details').open")
            page.screenshot(path=str(ARTIFACTS / "browser-phone-health.png"), full_page=True)
    print("page weights without images (bytes):", json.dumps(weights))
    assert all(w <= 100 * 1024 for w in weights.values()), weights
    ctx.close()


def _draw(page: Any, corners: list[tuple[float, float]], touch: bool) -> None:
    page.evaluate("window.scrollTo(0, 0)")  # Save scrolled the page: the corners must show
    svg = page.locator("#zone-svg")
    r = svg.bounding_box()
    for fx, fy in corners:
        x, y = r["x"] + fx * r["width"], r["y"] + fy * r["height"]
        if touch:
            page.touchscreen.tap(x, y)
        else:
            page.mouse.click(x, y)


def _open_zones(page: Any, base: str) -> None:
    page.goto(base + "/cameras/sample/zones")
    page.wait_for_function(
        "() => { const i = document.getElementById('zone-snap'); return i && i.naturalWidth > 0; }",
        timeout=30_000,
    )


def test_zones_drawn_by_mouse_and_finger_survive_a_restart_and_apply(
    box: Any, browser: Any
) -> None:
    b: Box = box(LOOPING)
    # with the mouse on a desktop: nearly the whole picture
    big = [(0.02, 0.02), (0.98, 0.02), (0.98, 0.98), (0.02, 0.98)]
    # with a finger at 390 px: the same area, as a second include zone
    ctx = _context(browser, **DESKTOP)
    page = ctx.new_page()
    _login(page, b.base)
    _open_zones(page, b.base)
    _draw(page, big, touch=False)
    assert page.locator("#zone-svg circle").count() == 4
    page.fill("#zone-name", "street")
    page.click("#zone-save")
    page.wait_for_function(
        "document.getElementById('zone-result').textContent.startsWith('Saved zone street')"
    )
    # a privacy mask over the top-left corner, drawn the same way
    _draw(page, [(0.01, 0.01), (0.3, 0.01), (0.3, 0.3), (0.01, 0.3)], touch=False)
    page.fill("#zone-name", "window")
    page.select_option("#zone-mode", "mask")
    page.click("#zone-save")
    try:
        page.wait_for_function(
            "document.getElementById('zone-result').textContent.startsWith('Saved mask window')"
        )
    except Exception:
        pytest.fail("mask not saved: " + page.inner_text("#zone-result"))
    page.screenshot(path=str(ARTIFACTS / "browser-zone-desktop.png"), full_page=True)
    ctx.close()

    phone = _context(browser, **PHONE)
    page = phone.new_page()
    _login(page, b.base)
    _open_zones(page, b.base)
    _fits(page, "/cameras/sample/zones")
    assert page.locator('#zone-svg polygon[data-zone="street"]').count() == 1
    _draw(page, big, touch=True)
    assert page.locator("#zone-svg circle").count() == 4
    page.fill("#zone-name", "yard")
    page.click("#zone-save")
    page.wait_for_function(
        "document.getElementById('zone-result').textContent.startsWith('Saved zone yard')"
    )
    _fits(page, "/cameras/sample/zones after drawing")
    page.screenshot(path=str(ARTIFACTS / "browser-zone-phone.png"), full_page=True)
    phone.close()

    saved = yaml.safe_load((b.root / "config.overlay.yaml").read_text())
    zones = saved["cameras"]["sample"]["tracker"]["zones"]
    assert [z["name"] for z in zones] == ["street", "yard"]
    assert all(len(z["polygon"]) == 4 for z in zones)
    assert abs(zones[0]["polygon"][0][0] - 0.02) < 0.01  # where it was clicked
    assert [m["name"] for m in saved["cameras"]["sample"]["privacy_masks"]] == ["window"]

    b.restart()
    since = time.time()
    for spec in (DESKTOP, PHONE):
        ctx = _context(browser, **spec)
        page = ctx.new_page()
        _login(page, b.base)
        _open_zones(page, b.base)
        for name in ("street", "yard"):
            assert page.locator(f'#zone-svg polygon[data-zone="{name}"]').count() == 1, name
        assert page.locator('#zone-svg polygon[data-mask="window"]').count() == 1
        ctx.close()
    # the mask is applied at the input: the picture is black there, not elsewhere
    import cv2
    import numpy as np

    req = urllib.request.Request(b.base + "/cameras/sample/latest.jpg")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=5) as resp:
        img = cv2.imdecode(np.frombuffer(resp.read(), np.uint8), cv2.IMREAD_GRAYSCALE)
    h, w = img.shape
    assert img[int(h * 0.05) : int(h * 0.25), int(w * 0.05) : int(w * 0.25)].max() < 30
    assert img[int(h * 0.5) :, int(w * 0.5) :].mean() > 30
    # applied: an event after the restart carries both zones' names
    deadline = time.monotonic() + 120
    inside: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not inside:
        inside = [e for e in b.events(since) if {"street", "yard"} <= set(e.get("zones", []))]
        time.sleep(1)
    assert inside, f"no event in the zones after the restart: {b.events(since)[:3]}"


def test_first_run_page_adds_a_file_camera_and_the_first_event_shows(
    box: Any, browser: Any
) -> None:
    b: Box = box({})
    ctx = _context(browser, **PHONE)
    page = ctx.new_page()
    _login(page, b.base)
    page.click("#first-run a")
    page.wait_for_url(b.base + "/setup")
    _fits(page, "/setup")
    page.fill("#setup-source", str(SAMPLE))
    page.click("#setup-test")
    page.wait_for_function(
        "() => { const i = document.getElementById('setup-frame');"
        " return i && !i.hidden && i.naturalWidth > 0; }",
        timeout=30_000,
    )
    assert page.inner_text("#setup-result").startswith("got a ")
    page.screenshot(path=str(ARTIFACTS / "browser-first-run.png"), full_page=True)
    page.fill("#setup-id", "street")
    page.fill("#setup-name", "Street")
    page.click("#setup-save")
    page.wait_for_url(b.base + "/", timeout=15_000)
    page.wait_for_function(
        "() => { const i = document.querySelector("
        "'article.camera[data-camera=\"street\"] img.snap');"
        " return i && i.complete && i.naturalWidth > 0; }",
        timeout=30_000,
    )
    # the first event appears on the overview (live, or in the list when the page loads)
    page.wait_for_function("document.querySelectorAll('#recent li').length > 0", timeout=90_000)
    assert "street" in page.inner_text("#recent")
    page.screenshot(path=str(ARTIFACTS / "browser-first-event.png"), full_page=True)
    ctx.close()
    saved = yaml.safe_load((b.root / "config.overlay.yaml").read_text())
    assert saved["cameras"]["street"]["source"] == str(SAMPLE)


def test_timeline_plays_an_event_and_live_view_draws_boxes(box: Any, browser: Any) -> None:
    b: Box = box(LOOPING)
    has_clip = "clip" in discover()
    deadline = time.monotonic() + 120
    event: dict[str, Any] | None = None
    while time.monotonic() < deadline and event is None:
        kind = "clip" if has_clip else "snapshot"
        event = next((e for e in b.events() if kind in e["artifacts"]), None)
        time.sleep(1)
    assert event is not None, "no event with media while the clip played"
    for spec in (DESKTOP, PHONE):
        ctx = _context(browser, **spec)
        page = ctx.new_page()
        _login(page, b.base)
        page.goto(b.base + "/cameras/sample/timeline")
        if spec is DESKTOP:
            # the mouse on the strip: events a few seconds apart share a spot of a day's strip,
            # so the mark on top plays, whichever it is
            page.click(f'#timeline a.mark[data-event="{event["id"]}"] rect', force=True)
            page.wait_for_function(
                "document.querySelector('#timeline a.mark.on') !== null && "
                "(!document.getElementById('timeline-clip').hidden || "
                "!document.getElementById('timeline-snap').hidden)"
            )
        # a finger on the list under the strip: that very event
        if spec is PHONE:
            _fits(page, "/cameras/sample/timeline")
            page.tap(f'#timeline-list a[data-event="{event["id"]}"]')
        else:
            page.click(f'#timeline-list a[data-event="{event["id"]}"]')
        page.wait_for_function(
            f"document.querySelector('#timeline a.mark.on').dataset.event === '{event['id']}'"
        )
        shown = "timeline-clip" if has_clip else "timeline-snap"
        page.wait_for_function(f"!document.getElementById('{shown}').hidden")
        if has_clip:
            duration = page.evaluate(
                """() => new Promise((ok, fail) => {
                    const v = document.getElementById('timeline-clip');
                    if (v.readyState >= 1) { ok(v.duration); return; }
                    v.addEventListener('loadedmetadata', () => ok(v.duration));
                    v.addEventListener('error', () => fail('video error'));
                })"""
            )
            assert duration > 0
        page.screenshot(
            path=str(ARTIFACTS / f"browser-timeline-{spec['viewport']['width']}.png"),
            full_page=True,
        )
        ctx.close()
    # the live view draws what motion (and the detector) see over the picture
    ctx = _context(browser, **PHONE)
    page = ctx.new_page()
    _login(page, b.base)
    page.goto(b.base + "/cameras/sample", wait_until="domcontentloaded")
    page.wait_for_function(
        "document.querySelectorAll('#live-boxes rect').length > 0", timeout=30_000
    )
    _fits(page, "/cameras/sample with boxes")
    page.screenshot(path=str(ARTIFACTS / "browser-live-boxes.png"))
    ctx.close()
