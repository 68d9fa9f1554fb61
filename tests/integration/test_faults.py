"""Bad luck, tried on purpose: a full disk, a crash's leftovers, a flood of requests.

Each test reproduces a failure the box once had and guards it from coming back.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from spyoncino.core.config import ConfigService, Layer, build_app_model
from spyoncino.core.orchestrator import Orchestrator, discover
from spyoncino.helpers.media_layout import scan
from spyoncino.schemas.events import EventNotice
from tests.support.botapi import BotApiEmulator, botapi
from tests.support.tmpfs import fill, small_tmpfs
from tests.support.wait import until as wait_until

__all__ = ["botapi"]  # the Bot API emulator fixture
API_TOKEN = "fault-test-token-0123456789"
BOT_TOKEN = "123456:TEST-token_abc"

SAMPLE = Path(__file__).resolve().parents[2] / "spyoncino" / "data" / "sample.mp4"


def notice(eid: str, camera: str = "cam", **kw: Any) -> EventNotice:
    now = time.time()
    base: dict[str, Any] = dict(
        event_id=eid,
        camera_id=camera,
        kind="object",
        phase="started",
        labels=("person",),
        top_score=0.8,
        started_at=now,
        updated_at=now,
    )
    base.update(kw)
    return EventNotice.model_validate(base)


until = partial(wait_until, timeout=20.0)


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await box(root, **sections)`` -> (orchestrator, base URL, HTTP session)."""
    stops: list[Callable[[], Any]] = []

    async def start(
        root: Path, modules: tuple[str, ...] = ("index", "media"), **sections: Any
    ) -> tuple[Orchestrator, str, aiohttp.ClientSession]:
        found = discover()
        reg = {n: found[n] for n in ("status_page", "file", *modules)}
        page = {"listen": "127.0.0.1:0", "storage_probe_s": 0, "mdns": False}
        data: dict[str, Any] = {
            "storage": {"root": str(root)},
            "runtime": {"health_interval": 0.2},
            "bus": {"status_interval": 0.5},
            "cameras": {"cam": {"source": str(SAMPLE), "file": {"pace": "realtime", "loop": True}}},
            **sections,
        }
        data["status_page"] = {**page, **data.get("status_page", {})}
        orch = Orchestrator(ConfigService(build_app_model(reg), [Layer("test", data)]), reg)
        await orch.start()
        stops.append(orch.stop)
        http = aiohttp.ClientSession()
        stops.append(http.close)
        page = next(s.module for s in orch.slots if s.instance == "status_page")
        return orch, f"http://127.0.0.1:{page.port}", http  # type: ignore[attr-defined]

    try:
        yield start
    finally:
        for stop in reversed(stops):
            await stop()


async def _ready(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with http.get(base + "/health/ready") as r:
        return r.status, await r.json()


async def test_full_disk_readiness_names_the_index_and_it_catches_up_after(
    box: Any, tmp_path: Path
) -> None:
    with small_tmpfs(tmp_path / "disk", "4m") as root:
        orch, base, http = await box(root, index={"flush_interval": 0.1})
        await until(lambda: _status_is(http, base, 200))
        filler = fill(root / "filler")
        big = "x" * 3000
        for i in range(100):
            await orch.bus.publish("event.object.started", notice(f"e{i}", labels=(big,)))
        status, body = await until(lambda: _not_ready_because_of(http, base, "index"))
        assert status == 503
        assert "full" in body["checks"]["storage"]["reason"]
        assert list(root.glob(".ready-probe-*")) == []  # a failed probe leaves nothing behind
        filler.unlink()
        await until(lambda: _status_is(http, base, 200))
        for i in range(100, 110):
            await orch.bus.publish("event.object.started", notice(f"e{i}"))

        def rows() -> int:
            conn = sqlite3.connect(root / "events.sqlite3")
            try:
                return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
            finally:
                conn.close()

        await until(lambda: rows() == 110)


async def _status_is(http: aiohttp.ClientSession, base: str, code: int) -> bool:
    return (await _ready(http, base))[0] == code


async def _not_ready_because_of(
    http: aiohttp.ClientSession, base: str, module: str
) -> tuple[int, dict[str, Any]] | None:
    status, body = await _ready(http, base)
    reason = body["checks"].get("storage", {}).get("reason", "")
    return (status, body) if status == 503 and module in reason else None


# -- config transactions ---------------------------------------------------------------------
async def _post_config(
    http: aiohttp.ClientSession, base: str, changes: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        base + "/api/config", json=changes, headers={"Authorization": f"Bearer {API_TOKEN}"}
    ) as r:
        return r.status, await r.json()


async def test_a_refused_telegram_change_lets_no_stranger_in(
    box: Any, botapi: BotApiEmulator, tmp_path: Path
) -> None:
    """The refusing module once kept the new chat_ids: chat 999 got /status answered."""
    _, base, http = await box(
        tmp_path / "root",
        modules=("telegram",),
        status_page={"api_token": API_TOKEN},
        telegram={
            "token": BOT_TOKEN,
            "chat_ids": [111],
            "api_base_url": botapi.base_url,
            "poll_timeout_s": 1,
        },
    )
    await botapi.wait_for("setMyCommands")
    status, body = await _post_config(
        http, base, {"telegram": {"chat_ids": [999], "token": "not-a-token"}}
    )
    assert status == 422, body
    assert "telegram" in body["reason"]
    botapi.push_message(999, 999, "/status")
    botapi.push_message(111, 111, "/status")
    await botapi.wait_for("sendMessage", predicate=lambda c: c.chat_id == 111)
    assert all(c.chat_id != 999 for c in botapi.sent())


async def test_a_refused_camera_source_is_never_opened(box: Any, tmp_path: Path) -> None:
    """The refused source was kept by the input and opened at the file's next loop."""
    orch, base, http = await box(
        tmp_path / "root",
        modules=(),
        status_page={"api_token": API_TOKEN},
        cameras={"cam": {"source": str(SAMPLE), "file": {"loop": True, "speed": 25}}},
    )
    cam = next(s.module for s in orch.slots if s.instance == "file:cam")
    await until(lambda: cam.health().metrics.get("camera_state") == "streaming")
    missing = tmp_path / "missing.mp4"
    status, body = await _post_config(http, base, {"cameras": {"cam": {"source": str(missing)}}})
    assert status == 422, body
    assert "does not exist" in body["reason"]
    seq0 = _frames(cam)
    # 250 frames at 25x: the file starts over every second; three loops must stay on the old one
    await until(lambda: _frames(cam) > seq0 + 750, timeout=30)
    assert cam.health().metrics.get("camera_state") == "streaming"
    assert cam.cam.source == str(SAMPLE)  # type: ignore[attr-defined]


def _frames(cam: Any) -> int:
    return int(cam.health().metrics.get("frames", 0))


# -- crash leftovers ---------------------------------------------------------------------------
@pytest.mark.skipif(not SAMPLE.is_file(), reason="no footage to replay")
async def test_twenty_sigkills_then_a_normal_start_leave_nothing_open_unindexed_or_unsent(
    tmp_path: Path, botapi: BotApiEmulator
) -> None:
    """After a SIGKILL loop, 29 of 51 events stayed open forever and 15 alerted events were
    missing from the index until someone ran `spyoncino storage reindex`."""
    from tests.integration.test_telegram_replay import (
        Box,
        chat_sends,
        footage,
        outbox_rows,
        write_config,
    )

    config = write_config(tmp_path, botapi)
    root = tmp_path / "var"
    db = root / "events.sqlite3"
    rng = random.Random(17)
    kills: list[float] = []
    for _ in range(20):
        box = Box(config, tmp_path)
        await box.start()
        # real time on purpose: SIGKILL lands at a random moment of a running box's life
        # (startup, streaming, events, sends); no event marks "any moment"
        await asyncio.sleep(rng.uniform(1.0, 7.0))
        # each box starts after the kills before it, as the final one must
        assert box.proc is not None
        if box.proc.returncode is not None:
            await box.kill(signal.SIGKILL)  # reads its output to the end
            raise AssertionError(
                f"box {len(kills) + 1} exited ({box.proc.returncode}) before it was killed; "
                f"its last output:\n{box.output()}"
            )
        kills.append(time.monotonic())
        await box.kill(signal.SIGKILL)
    assert footage().is_file()
    crashed_at = time.time()
    final = Box(config, tmp_path)
    await final.start()
    try:
        await final.wait_log("started", timeout=60)  # the index reconciles before that
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            left_open = conn.execute(
                "SELECT COUNT(*) FROM events WHERE ended_at IS NULL AND started_at < ?",
                (crashed_at,),
            ).fetchone()[0]
            indexed = {r[0] for r in conn.execute("SELECT relpath FROM artifacts")}
            events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        finally:
            conn.close()
        on_disk = {m.relpath for m in scan(root) if m.path.stat().st_mtime < crashed_at}
        assert on_disk, "the kills left no media to check"
        assert on_disk <= indexed, f"{len(on_disk - indexed)} of {len(on_disk)} files not indexed"
        assert events > 0
        assert left_open == 0
        # every alert queued before the kills goes out, once
        queued = {r["id"] for r in outbox_rows(db)}

        # (a caption edit is done when sent, or when a newer edit of the same photo replaced
        # it before it went and that newer one was sent: the chat shows the latest caption)
        def undelivered() -> list[dict[str, Any]]:
            rows = outbox_rows(db)
            edited = {
                (r["event_id"], r["recipient"], r["id"])
                for r in rows
                if r["kind"] == "caption" and r["status"] == "sent"
            }
            return [
                {k: r[k] for k in ("id", "event_id", "kind", "status", "attempts", "result")}
                for r in rows
                if r["id"] in queued
                and r["status"] != "sent"
                and not (
                    r["kind"] == "caption"
                    and r["status"] == "superseded"
                    and any(
                        (e, to) == (r["event_id"], r["recipient"]) and i > r["id"]
                        for e, to, i in edited
                    )
                )
            ]

        try:
            await until(lambda: not undelivered(), timeout=90)
        except AssertionError:
            left = undelivered()
            raise AssertionError(f"{len(left)} queued alerts never delivered: {left}") from None
    finally:
        await final.kill(signal.SIGTERM)
    assert queued, "no alert was queued during the kills"
    # no file sent twice, but for the one window no chat API can close (see helpers/outbox/):
    # killed after the server took the message and before "sent" was committed
    first: dict[tuple[str, str], float] = {}
    twice: Counter[tuple[str, str]] = Counter()
    for c in chat_sends(botapi):
        if not c.files:
            continue
        key = (c.method, c.file(next(iter(c.files))).filename)
        if key in first:
            twice[key] += 1
        else:
            first[key] = c.at
    outside_the_window = [
        k for k in twice if not any(0.0 <= kill - first[k] <= 2.0 for kill in kills)
    ]
    assert outside_the_window == [], outside_the_window
    assert sum(twice.values()) <= 2, twice
    # the caption a person sees last is the newest edit of its photo, across the kills: no
    # edit went after a newer one (a newest edit cut at the stop, still pending, is skipped)
    rows = outbox_rows(db)
    photos = {
        (r["event_id"], r["recipient"]): r["result"]
        for r in rows
        if r["kind"] == "snapshot" and r["status"] == "sent"
    }
    newest: dict[str, dict[str, Any]] = {}
    for r in rows:
        photo = photos.get((r["event_id"], r["recipient"]))
        if r["kind"] != "caption" or photo is None:
            continue
        if photo not in newest or r["id"] > newest[photo]["id"]:
            newest[photo] = r
    last = {
        c.params["message_id"]: c.params["caption"] for c in botapi.calls_to("editMessageCaption")
    }
    stale = [
        (photo, last.get(photo), r["id"])
        for photo, r in newest.items()
        if r["status"] == "sent" and last.get(photo) != json.loads(r["payload"])["caption"]
    ]
    assert stale == [], stale
