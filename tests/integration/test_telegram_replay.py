"""The whole box (``spyoncino run`` in a subprocess) replaying real footage against the Bot API
emulator: photos then GIF/clip replies to the allowlisted chat only; an outage and a SIGKILL
lose nothing and repeat nothing.

Replay runs at 4x, so 15 s of wall time are 60 s of footage. The emulator is really down (its
port refuses connections) while the box keeps detecting and queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from spyoncino.helpers.outbox import outbox_path
from tests.support.botapi import BotApiEmulator, Call
from tests.support.wait import until

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SPYONCINO_SHARED", REPO.parent / "shared"))
VTEST = SHARED / "media" / "vtest.mp4"
SAMPLE = REPO / "spyoncino" / "data" / "sample.mp4"
SPEED = 4.0
CHAT = 111
MAGIC = {
    "snapshot": lambda b: b[:3] == b"\xff\xd8\xff",
    # the animation is a silent MP4 by default (gif.format: mp4), a GIF with format: gif
    "gif": lambda b: b[:6] in (b"GIF87a", b"GIF89a") or b[4:8] == b"ftyp",
    "clip": lambda b: b[4:8] == b"ftyp",
}
KIND_METHOD = {"snapshot": "sendPhoto", "gif": "sendAnimation", "clip": "sendVideo"}


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[BotApiEmulator]:
    emulator = BotApiEmulator()
    await emulator.start()
    yield emulator
    await emulator.stop()


def footage() -> Path:
    return VTEST if VTEST.is_file() else SAMPLE


def write_config(tmp: Path, emu: BotApiEmulator) -> Path:
    cfg = {
        "cameras": {
            "street": {
                "name": "Street",
                "source": str(footage()),
                "file": {"pace": "realtime", "speed": SPEED},
            }
        },
        "storage": {"root": str(tmp / "var")},
        "status_page": {"enabled": False},
        "telegram": {
            "token": "123456:TEST-token",
            "chat_ids": [CHAT],
            "api_base_url": emu.base_url,
            "followup": "both",
            "poll_timeout_s": 2,
            "outbox": {
                "min_interval_s": 0.0,
                "backoff_initial_s": 0.5,
                "backoff_max_s": 2.0,
                "coalesce_after": 0,
                "camera_budget": 0,
            },
        },
        "log": {"format": "json", "level": "info"},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


class Box:
    """``spyoncino run --forever`` in a subprocess, its log lines collected."""

    def __init__(self, config: Path, cwd: Path) -> None:
        self.config = config
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        # the last raw lines, JSON or not: a traceback or a message printed before logging is
        # set up is what tells why a box exited before "started"
        self.tail: deque[str] = deque(maxlen=60)
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPYONCINO_")}
        env["PYTHONPATH"] = str(REPO)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "spyoncino",
            "run",
            "--config",
            str(self.config),
            "--forever",
            cwd=self.cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.tail.append(raw.decode("utf-8", "replace").rstrip("\n"))
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    def output(self) -> str:
        """The box's last lines of stdout and stderr as it printed them."""
        return "\n".join(self.tail)

    def saw(self, event: str) -> bool:
        return any(line.get("event") == event for line in self.lines)

    async def wait_log(self, event: str, timeout: float) -> None:
        def seen_or_exited() -> bool:
            assert self.proc is not None
            return self.saw(event) or self.proc.returncode is not None

        # polled: the reader task appends the box's log lines; it fires no event
        try:
            await until(seen_or_exited, timeout, f"{event!r} in the log", interval=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}; the box's last output:\n{self.output()}") from None
        assert self.proc is not None
        if not self.saw(event):
            if self._reader is not None:  # the pipe may still hold the last lines
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._reader), 5)
            if not self.saw(event):
                raise AssertionError(
                    f"box exited ({self.proc.returncode}) before {event}; its last output:\n"
                    + self.output()
                )

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


def outbox_rows(index_db: Path) -> list[dict[str, Any]]:
    db = outbox_path(index_db)  # the outbox's own file, beside the index
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        cur = conn.execute(
            "SELECT id, recipient, event_id, kind, status, attempts, payload, result, sent_at "
            "FROM outbox "
            "WHERE channel='telegram' ORDER BY id"
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


async def wait_rows(db: Path, cond: Any, timeout: float, what: str) -> list[dict[str, Any]]:
    """The outbox rows once ``cond(rows)`` holds. Polled: another process writes them."""

    def ready() -> list[dict[str, Any]] | None:
        rows = outbox_rows(db)
        return rows if cond(rows) else None

    found: list[dict[str, Any]] = await until(ready, timeout, what, interval=0.25)
    return found


async def all_recorded(db: Path, emu: BotApiEmulator) -> None:
    """With the emulator stopped (nothing more can arrive), wait until the box has marked
    a row sent for every send and caption edit the emulator answered: what the box knew
    when it is killed is what happened."""

    def recorded(rows: list[dict[str, Any]]) -> bool:
        sent = [r for r in rows if r["status"] == "sent"]
        sends = [r for r in sent if r["kind"] in KIND_METHOD]
        captions = [r for r in sent if r["kind"] == "caption"]
        edits = emu.calls_to("editMessageCaption")
        return len(sends) == len(chat_sends(emu)) and len(captions) == len(edits)

    await wait_rows(db, recorded, 30, "every answered send marked sent")


#: what a row may end as: a caption edit that a newer one replaced before it went is superseded
DONE = ("sent", "superseded")


def check_exactly_once_in_order(
    rows: list[dict[str, Any]], calls: list[Call], edits: list[Call] | None = None
) -> None:
    """Every row marked sent matches one call, in delivery order: method, chat, file bytes;
    alerts went out in the order they were queued, each follow-up after its own photo; each
    caption edit sent edited its own activity's photo."""
    photos = {
        (r["event_id"], r["recipient"]): r["result"]
        for r in rows
        if r["kind"] == "snapshot" and r["status"] == "sent"
    }
    captions = [r for r in rows if r["kind"] == "caption" and r["status"] == "sent"]
    if edits is not None:
        assert len(edits) == len(captions), f"{len(edits)} edits for {len(captions)} rows sent"
        for row, call in zip(sorted(captions, key=lambda r: r["sent_at"]), edits, strict=True):
            assert call.params["message_id"] == photos[(row["event_id"], row["recipient"])]
            assert call.params["caption"] == json.loads(row["payload"])["caption"]
        # the newest edit of each photo is sent, and sent last: the caption a person sees is
        # the newest (an older edit may still go before it, if it was on its way)
        newest: dict[str, dict[str, Any]] = {}
        for r in rows:
            photo = photos.get((r["event_id"], r["recipient"]))
            if r["kind"] != "caption" or r["status"] not in DONE or photo is None:
                continue
            if photo not in newest or r["id"] > newest[photo]["id"]:
                newest[photo] = r
        last = {c.params["message_id"]: c.params["caption"] for c in edits}
        for photo, r in newest.items():
            assert r["status"] == "sent", r
            assert last.get(photo) == json.loads(r["payload"])["caption"], (photo, r)
    sent = sorted(
        (r for r in rows if r["status"] == "sent" and r["kind"] in KIND_METHOD),
        key=lambda r: r["sent_at"],
    )
    alert_ids = [r["id"] for r in sent if r["kind"] == "snapshot"]
    assert alert_ids == sorted(alert_ids)
    assert len(calls) == len(sent), f"{len(calls)} sends for {len(sent)} rows marked sent"
    by_row_result: dict[tuple[str, str], str] = {}
    for row, call in zip(sent, calls, strict=True):
        assert call.method == KIND_METHOD[row["kind"]], (row, call.method)
        assert call.chat_id == int(row["recipient"])
        payload = json.loads(row["payload"])
        sent_file = call.file(
            {"snapshot": "photo", "gif": "animation", "clip": "video"}[row["kind"]]
        )
        # the bytes announced, or a later version: writers replace a file in place when the
        # event goes on (a better snapshot, a longer clip) and the send reads it then
        if sent_file.sha256 != payload["sha256"]:
            assert MAGIC[row["kind"]](sent_file.data), row["kind"]
        assert str(call.result["message_id"]) == row["result"]
        if row["kind"] == "snapshot":
            by_row_result[(row["event_id"], row["recipient"])] = row["result"]
        else:  # follow-ups reply to their own event's photo
            photo = by_row_result[(row["event_id"], row["recipient"])]
            assert call.json("reply_parameters")["message_id"] == int(photo)


def chat_sends(emu: BotApiEmulator) -> list[Call]:
    return [c for c in emu.sent() if c.method in KIND_METHOD.values()]


@pytest.mark.skipif(not footage().is_file(), reason="no footage to replay")
async def test_outage_of_60s_of_replay_loses_and_repeats_nothing(
    tmp_path: Path, emu: BotApiEmulator
) -> None:
    db = tmp_path / "var" / "events.sqlite3"
    box = Box(write_config(tmp_path, emu), tmp_path)
    await emu.stop()  # down before the box even starts
    await box.start()
    try:
        await box.wait_log("camera_streaming", timeout=60)
        # the outage lasts until alerts queue up in it and are retried (it was 60 s of replay)
        rows = await wait_rows(
            db,
            lambda rs: (
                len([r for r in rs if r["status"] == "pending"]) >= 3
                and any(r["attempts"] > 1 for r in rs)
            ),
            120,
            "three rows queued, one retried, during the outage",
        )
        queued = [r for r in rows if r["status"] == "pending"]
        assert queued, "no alert queued during the outage"
        await emu.start()
        emu.push_message(999, 999, "/disarm")  # a stranger: ignored, no reply
        await box.wait_log("source_ended", timeout=120)
        # let the last activity end (activity_gap_s after its last sighting) and its GIF/clip
        # be delivered: a busy street is one long activity, whose media come at its end
        rows = await wait_rows(
            db,
            lambda rs: (
                rs
                and any(r["kind"] in ("gif", "clip") for r in rs)
                and all(r["status"] in DONE for r in rs)
            ),
            timeout=60,
            what="everything delivered",
        )
        # the refusal is logged as the stranger's update is dropped: nothing follows it
        await box.wait_log("telegram_unauthorized", timeout=30)
        rows = await wait_rows(db, lambda rs: all(r["status"] in DONE for r in rs), 30, "settled")
    finally:
        await emu.stop()  # nothing can be in flight when the box is killed
        with contextlib.suppress(AssertionError):  # a gap fails the checks below, by name
            await all_recorded(db, emu)
        await box.kill()
    calls = chat_sends(emu)
    assert {c.chat_id for c in emu.sent()} == {CHAT}  # the allowlisted chat only
    state = tmp_path / "var" / "state.json"
    assert not state.exists() or json.loads(state.read_text())["armed"] is True
    assert any(r["attempts"] > 1 for r in rows)  # the outage was felt
    kinds = {r["kind"] for r in rows}
    assert "snapshot" in kinds
    assert kinds & {"gif", "clip"}, "no GIF or clip followed the photos"
    check_exactly_once_in_order(rows, calls, emu.calls_to("editMessageCaption"))
    # one photo per activity that became an alert, however many people were in it
    conn = sqlite3.connect(db)
    alerts = {r[0] for r in conn.execute("SELECT id FROM events WHERE severity = 'alert'")}
    conn.close()
    photos = [r["event_id"] for r in rows if r["kind"] == "snapshot"]
    assert len(photos) == len(set(photos)) and set(photos) <= alerts


@pytest.mark.skipif(not footage().is_file(), reason="no footage to replay")
async def test_sigkill_mid_outage_then_restart_delivers_each_alert_once(
    tmp_path: Path, emu: BotApiEmulator
) -> None:
    db = tmp_path / "var" / "events.sqlite3"
    config = write_config(tmp_path, emu)
    await emu.stop()
    first = Box(config, tmp_path)
    await first.start()
    try:
        await first.wait_log("camera_streaming", timeout=60)
        await wait_rows(db, lambda rs: len(rs) >= 3, 60, "three alerts queued")
    finally:
        await first.kill(signal.SIGKILL)
    before = outbox_rows(db)
    assert before
    assert all(r["status"] in ("pending", "superseded") for r in before)
    await emu.start()
    second = Box(config, tmp_path)
    await second.start()
    try:
        ids = {r["id"] for r in before}
        await wait_rows(
            db,
            lambda rs: all(r["status"] in DONE for r in rs if r["id"] in ids),
            60,
            "the alerts queued before the kill delivered",
        )
    finally:
        await emu.stop()
        with contextlib.suppress(AssertionError):  # a gap fails the checks below, by name
            await all_recorded(db, emu)
        await second.kill(signal.SIGKILL)
    rows = outbox_rows(db)
    check_exactly_once_in_order(rows, chat_sends(emu))
    assert all(r["status"] in DONE for r in rows if r["id"] in {b["id"] for b in before})
