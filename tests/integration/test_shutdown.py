"""Shutdown with events open and a GIF backlog: nothing recorded is lost.

With several cameras the GIF maker's queue was backed up when SIGTERM came: the module got
its stop timeout, was cancelled (``module_stop_timeout``), the rest of its GIFs were lost and a
build still running failed with ``cannot schedule new futures after shutdown``. Now the
shutdown stops inputs first, lets the event stage settle, builds what the budget allows and
leaves the rest in a spool the next start builds; the index never names a file that is not
on disk.
"""

from __future__ import annotations

import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog

from spyoncino.core.config import ConfigService, Layer, build_app_model
from spyoncino.core.orchestrator import Orchestrator, discover
from spyoncino.schemas import topics
from spyoncino.schemas.events import EventNotice
from tests.support.wait import until as wait_until

SAMPLE = Path(__file__).resolve().parents[2] / "spyoncino" / "data" / "sample.mp4"
CAMERAS = ("a", "b", "c", "d")
EVENTS_PER_CAMERA = 6

pytestmark = pytest.mark.skipif(not SAMPLE.is_file(), reason="no footage to replay")


def _notice(eid: str, camera: str, phase: str, started_at: float, mono: float) -> EventNotice:
    now = time.time()
    return EventNotice.model_validate(
        dict(
            event_id=eid,
            camera_id=camera,
            kind="object",
            phase=phase,
            labels=("person",),
            top_score=0.8,
            started_at=started_at,
            started_mono=mono,
            updated_at=now,
            ended_at=now if phase == "ended" else None,
        )
    )


until = partial(wait_until, timeout=60.0)


def _orchestrator(root: Path, **runtime: Any) -> Orchestrator:
    found = discover()
    reg = {n: found[n] for n in ("file", "gif", "clip", "index", "media")}
    data: dict[str, Any] = {
        "storage": {"root": str(root)},
        "runtime": {"health_interval": 0.5, **runtime},
        "bus": {"status_interval": 0},
        "cameras": {
            cid: {"source": str(SAMPLE), "file": {"pace": "realtime", "loop": True}}
            for cid in CAMERAS
        },
    }
    return Orchestrator(ConfigService(build_app_model(reg), [Layer("test", data)]), reg)


def _module(orch: Orchestrator, name: str) -> Any:
    return next(s.module for s in orch.slots if s.instance == name)


def _indexed(root: Path, kind: str) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{root / 'events.sqlite3'}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT event_id, relpath FROM artifacts WHERE kind = ?", (kind,))
        return dict(rows.fetchall())
    finally:
        conn.close()


async def test_stop_with_a_gif_backlog_and_open_events_loses_no_gif_or_clip(
    tmp_path: Path,
) -> None:
    root = tmp_path / "media"
    # a tight budget (the unit gives 15 s): the backlog cannot all be built in it
    orch = _orchestrator(root, stop_timeout=1.0, shutdown_budget_s=2.0)
    await orch.start()
    clip = _module(orch, "clip")
    # every camera streams before the events start
    await until(lambda: len(clip.cams) == 4 and all(c.clock > 0 for c in clip.cams.values()))
    started_at, mono = time.time(), time.monotonic()
    ids = {cid: [f"20260101T000000-{cid}{i}" for i in range(EVENTS_PER_CAMERA)] for cid in CAMERAS}
    with structlog.testing.capture_logs() as logs:
        try:
            for cid, eids in ids.items():
                for eid in eids:
                    await orch.bus.publish(
                        topics.EVENT.at(kind="object", phase="started"),
                        _notice(eid, cid, "started", started_at, mono),
                    )

            def every_clip_has_pictures() -> bool:
                # a second of each camera recorded since the events started
                return all(
                    c.session is not None and c.session.last_pts >= (mono + 1.0) * 1000
                    for c in clip.cams.values()
                )

            await until(every_clip_has_pictures)
            await until(lambda: all(len(c.clips) == EVENTS_PER_CAMERA for c in clip.cams.values()))
            # half of them end (a backlog of builds), the rest are still open at the signal
            for cid, eids in ids.items():
                for eid in eids[: EVENTS_PER_CAMERA // 2]:
                    await orch.bus.publish(
                        topics.EVENT.at(kind="object", phase="ended"),
                        _notice(eid, cid, "ended", started_at, mono),
                    )
            orch.request_stop()  # what SIGTERM does
        finally:
            await orch.stop()
    assert not orch.stuck
    events = [e for e in logs if e.get("log_level") in ("error", "warning")]
    assert not [e for e in events if e["event"] in ("module_stop_timeout", "bus_handler_error")]
    # nothing in the index that is not on disk
    gifs = _indexed(root, "gif")
    clips = _indexed(root, "clip")
    for rel in [*gifs.values(), *clips.values()]:
        assert (root / rel).is_file(), rel
    every = {eid for eids in ids.values() for eid in eids}
    # every clip is written at stop, with what was recorded
    assert set(clips) == every
    # what was not built is said, with a count, and kept for the next start
    spooled = [e for e in logs if e["event"] == "gifs_spooled_on_stop"]
    left = sum(int(e["count"]) for e in spooled)
    assert len(gifs) + left == len(every), (len(gifs), left)

    # the next start builds what the last one could not
    orch = _orchestrator(root)
    await orch.start()
    try:
        gif = _module(orch, "gif")
        await until(lambda: gif.pending() == 0 and len(_indexed(root, "gif")) == len(every))
    finally:
        await orch.stop()
    gifs = _indexed(root, "gif")
    assert set(gifs) == every
    for rel in gifs.values():
        assert (root / rel).is_file(), rel


def test_the_units_stop_timeout_leaves_room_for_the_shutdown_budget() -> None:
    import yaml

    from spyoncino.core.config import RuntimeConfig

    defaults = Path(__file__).resolve().parents[2] / "ansible/roles/spyoncino/defaults/main.yml"
    unit_s = yaml.safe_load(defaults.read_text())["spyoncino_timeout_stop_sec"]
    # systemd SIGKILLs at TimeoutStopSec: the app's own budget must end before, with room
    # for the interpreter's exit
    assert RuntimeConfig().shutdown_budget_s + 2 <= unit_s
