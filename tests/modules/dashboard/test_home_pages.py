"""The pages a home user drives: Health in plain words, the config form's verdict next to the
key, zones saved through config.update, and the first-run page adding a camera live."""

from __future__ import annotations

import json
import re
from datetime import datetime
from html import unescape
from pathlib import Path
from typing import Any

from spyoncino.modules.dashboard.status_page._pages import error_key, update_state

from .conftest import SAMPLE, TOKEN, Running

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOOPING_CAM = {"cam": {"source": str(SAMPLE), "file": {"pace": "realtime", "loop": True}}}
PIPELINE = ("status_page", "arming", "motion", "tracker")


# -- parsing -------------------------------------------------------------------------------------
def test_error_key_names_the_key_of_each_kind_of_error() -> None:
    # a validation error, as core.config.format_errors writes it
    assert (
        error_key("update: tracker.end_after_s: Input should be greater than 0 (got -1)")
        == "tracker.end_after_s"
    )
    assert error_key("update: cameras.cam.tracker.zones.0.polygon: too short") == (
        "cameras.cam.tracker.zones.0.polygon"
    )
    # a module's refusal names it in its text
    changes = {"status_page": {"listen": "127.0.0.1:1"}}
    assert (
        error_key(
            "status_page refused the change: status_page.listen: changing it needs a restart",
            changes,
        )
        == "status_page.listen"
    )
    # a refusal that names no key: the one key changed
    assert error_key(
        "storage: moving the storage needs a restart", {"storage": {"root": "/x"}}
    ) == ("storage.root")
    # several keys changed and none named: the sections
    assert error_key("nope", {"a": {"x": 1}, "b": {"y": 2}}) == "a, b"
    assert error_key("update: (top level): bad", {}) == "(top level)"


def test_update_state_reads_the_updater_result_and_a_pending_request(tmp_path: Path) -> None:
    assert update_state(tmp_path / "missing") is None
    folder = tmp_path / "update"
    folder.mkdir()
    assert update_state(folder) == {"result": None, "requested": None, "check": None}
    (folder / "result.json").write_text(
        json.dumps({"action": "update", "outcome": "done", "message": "now 1.2", "at": 1.0})
    )
    (folder / "request.json").write_text("{not json")
    state = update_state(folder)
    assert state is not None
    assert state["result"]["outcome"] == "done"
    assert state["requested"] is None  # unreadable: ignored, never an error page


# -- pages ---------------------------------------------------------------------------------------
async def test_health_page_says_in_plain_words_what_works(start_page: Any, tmp_path: Path) -> None:
    folder = tmp_path / "update"
    folder.mkdir()
    (folder / "result.json").write_text(
        json.dumps(
            {
                "action": "update",
                "outcome": "rolled back",
                "message": "1.3 failed its checks",
                "at": 1.7e9,
                "running": "1.2",
            }
        )
    )
    r: Running = await start_page(cameras=LOOPING_CAM, page={"update_dir": str(folder)})
    await r.wait(lambda: "cam" in r.page.frames)
    await r.wait(lambda: r.page.camera_views()[0].state == "streaming")
    await r.wait(lambda: r.page.reports.bus is not None)
    async with r.http.get(r.url("/health"), headers=AUTH) as resp:
        assert resp.status == 200
        text = unescape(await resp.text())
    cams = re.search(r'<ul class="plain" id="health-cameras">(.*?)</ul>', text, re.S)
    assert cams is not None
    assert 'class="state streaming">streaming' in cams.group(1)
    assert "frames a second" in cams.group(1)
    assert "writable" in text
    assert "rolled back" in text and "1.3 failed its checks" in text and "1.2" in text
    # the bus internals are folded away
    fold = text.index('<details id="health-details">')
    assert text.index("<th>Subscriber</th>") > fold


async def test_a_rejected_change_keeps_the_text_and_names_the_key(start_page: Any) -> None:
    r: Running = await start_page()
    _, csrf = await r.login()
    typed = "status_page:\n  refresh_s: 0.1\n  live_fps: 99\n"
    async with r.http.post(r.url("/config"), data={"csrf_token": csrf, "changes": typed}) as resp:
        assert resp.status == 422
        text = await resp.text()
    area = re.search(r"<textarea[^>]*>(.*?)</textarea>", text, re.S)
    assert area is not None
    assert unescape(area.group(1)) == typed
    keys = re.findall(r'<li data-key="([^"]+)">', text)
    assert set(keys) == {"status_page.refresh_s", "status_page.live_fps"}
    # errors sit inside the form, right under the text
    form = text.index('id="config-form"')
    assert form < text.index('id="config-errors"') < text.index("</form>", form)
    # not YAML at all: the text stays too
    async with r.http.post(r.url("/config"), data={"csrf_token": csrf, "changes": "a: [1"}) as resp:
        text = await resp.text()
    assert "a: [1" in unescape(text)
    assert r.orch.config.version == 1


async def test_zones_saved_from_the_page_reach_the_tracker(start_page: Any) -> None:
    r: Running = await start_page(modules=PIPELINE, cameras=LOOPING_CAM)
    tracker = next(s.module for s in r.orch.slots if s.instance == "tracker")
    zone = {"name": "drive", "polygon": [[0, 0], [1, 0], [1, 1]], "mode": "include"}
    async with r.http.post(
        r.url("/api/cameras/cam/zones"), headers=AUTH, json={"zones": [zone]}
    ) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert "tracker" in body["changed_modules"]
    assert [z.name for z in tracker.cams["cam"].zones] == ["drive"]  # type: ignore[attr-defined]
    async with r.http.get(r.url("/cameras/cam/zones"), headers=AUTH) as resp:
        text = await resp.text()
    assert 'data-zone="drive"' in text
    # a bad polygon is refused with the key named, and nothing changes
    bad = {"name": "x", "polygon": [[0, 0], [2, 0], [1, 1]]}
    async with r.http.post(
        r.url("/api/cameras/cam/zones"), headers=AUTH, json={"zones": [bad]}
    ) as resp:
        body = await resp.json()
    assert resp.status == 422
    assert body["errors"][0]["key"].startswith("cameras.cam.tracker.zones.0.polygon")
    assert [z.name for z in tracker.cams["cam"].zones] == ["drive"]  # type: ignore[attr-defined]
    async with r.http.post(
        r.url("/api/cameras/nope/zones"), headers=AUTH, json={"zones": []}
    ) as resp:
        assert resp.status == 404
    # a privacy mask goes to the camera itself (its input blacks it out), zones stay
    mask = {"name": "window", "polygon": [[0, 0], [0.2, 0], [0.2, 0.2]]}
    async with r.http.post(
        r.url("/api/cameras/cam/zones"), headers=AUTH, json={"masks": [mask]}
    ) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert "file:cam" in body["changed_modules"]
    assert [m.name for m in r.orch.config.current.cameras["cam"].privacy_masks] == ["window"]
    assert [z.name for z in tracker.cams["cam"].zones] == ["drive"]  # type: ignore[attr-defined]
    async with r.http.get(r.url("/cameras/cam/zones"), headers=AUTH) as resp:
        text = await resp.text()
    assert 'data-kind="mask"' in text and 'data-zone="drive"' in text
    async with r.http.post(r.url("/api/cameras/cam/zones"), headers=AUTH, json={}) as resp:
        assert resp.status == 400


async def test_first_run_probes_a_file_and_adds_the_camera_live(start_page: Any) -> None:
    r: Running = await start_page(modules=PIPELINE)
    async with r.http.get(r.url("/"), headers=AUTH) as resp:
        assert 'href="/setup"' in await resp.text()
    async with r.http.get(r.url("/setup"), headers=AUTH) as resp:
        assert resp.status == 200
        assert 'id="setup-form"' in await resp.text()
    async with r.http.post(
        r.url("/api/setup/probe"), headers=AUTH, json={"source": str(SAMPLE)}
    ) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert re.match(r"got a \d+x\d+ frame", body["message"])
    async with r.http.get(r.url("/setup/frame.jpg"), headers=AUTH) as resp:
        assert (await resp.read())[:2] == b"\xff\xd8"
    async with r.http.post(
        r.url("/api/setup/probe"), headers=AUTH, json={"source": "/nonexistent.mp4"}
    ) as resp:
        assert resp.status == 422
        assert "cannot" in (await resp.json())["message"]
    motion_before = next(s.module for s in r.orch.slots if s.instance == "motion")
    tracker_before = next(s.module for s in r.orch.slots if s.instance == "tracker")
    async with r.http.post(
        r.url("/api/setup/camera"),
        headers=AUTH,
        json={"source": str(SAMPLE), "camera_id": "porch", "name": "Porch"},
    ) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert "file:porch" in body["changed_modules"]
    # the camera runs, its frames reach the page (which followed in place) and motion (restarted)
    await r.wait(lambda: "porch" in r.page.frames)
    assert any(s.instance == "file:porch" and s.state == "running" for s in r.orch.slots)
    motion = next(s.module for s in r.orch.slots if s.instance == "motion")
    assert motion is not motion_before
    # the tracker follows in place: the other cameras' open events are not dropped
    assert next(s.module for s in r.orch.slots if s.instance == "tracker") is tracker_before
    async with r.http.post(
        r.url("/api/setup/camera"), headers=AUTH, json={"source": "x", "camera_id": "Bad Id"}
    ) as resp:
        assert resp.status == 400


async def test_timeline_marks_the_days_events_and_live_view_gets_boxes(start_page: Any) -> None:
    r: Running = await start_page(
        modules=PIPELINE,
        extra={"tracker": {"end_after_s": 1.0, "cooldown_s": 0.0}},
        cameras=LOOPING_CAM,
    )
    rows = await r.wait(lambda: r.page.live.rows(), timeout=60)
    event_id = rows[0].id
    async with r.http.get(r.url("/cameras/cam/timeline"), headers=AUTH) as resp:
        assert resp.status == 200
        text = await resp.text()
    assert f'class="mark" data-event="{event_id}"' in text
    assert re.search(r'<rect x="\d+(\.\d)?" y="10" width="\d+(\.\d)?" height="20">', text)
    async with r.http.get(r.url("/cameras/cam/timeline?day=2001-01-01"), headers=AUTH) as resp:
        assert event_id not in await resp.text()
    async with r.http.get(r.url("/cameras/cam/timeline?day=nope"), headers=AUTH) as resp:
        assert resp.status == 400
    # the day links to the hours that had events; an hour's strip is in seconds
    hour = datetime.fromtimestamp(rows[0].started_at).hour
    assert f'&amp;hour={hour}">{hour:02d}</a>' in text
    async with r.http.get(r.url(f"/cameras/cam/timeline?hour={hour}"), headers=AUTH) as resp:
        hour_page = await resp.text()
    assert 'viewBox="0 0 3600 40"' in hour_page and f'data-event="{event_id}"' in hour_page
    for bad in ("24", "-1", "x"):
        async with r.http.get(r.url(f"/cameras/cam/timeline?hour={bad}"), headers=AUTH) as resp:
            assert resp.status == 400, bad
    # boxes reach a live viewer over SSE, and only while someone watches the stream
    assert r.page.streams == 0
    async with (
        r.http.get(r.url("/api/stream"), headers=AUTH) as sse,
        r.http.get(r.url("/cameras/cam/stream.mjpeg"), headers=AUTH) as live,
    ):
        await live.content.readuntil(b"\r\n\r\n")
        while True:
            line = await sse.content.readline()
            if line.startswith(b"event: boxes"):
                data = json.loads((await sse.content.readline())[len(b"data: ") :])
                break
    assert data["camera_id"] == "cam" and data["kind"] in ("motion", "objects")
    assert data["w"] > 0 and all(len(b) == 4 for b in data["boxes"])


def test_health_says_how_many_frames_a_streaming_camera_lost_and_why() -> None:
    from types import SimpleNamespace

    from spyoncino.modules.dashboard.status_page._pages import camera_health
    from spyoncino.schemas.status import HealthReport, ModuleHealth

    metrics = {
        "camera": "cam",
        "camera_state": "streaming",
        "dropped_fps_cap": 40,  # on purpose: not a loss the operator has to act on
        "dropped_queue_full": 10,
        "dropped_decode_error": 2,
    }
    report = HealthReport(
        overall="ok",
        modules=(ModuleHealth(module="file:cam", state="ok", metrics=metrics),),
        at=0.0,
    )
    view = SimpleNamespace(id="cam", name="cam", state="streaming", fps=5.0, last_frame_age_s=0.2)
    (cam,) = camera_health([view], report)
    assert cam.why.endswith("12 dropped (queue_full 10, decode_error 2)")
    metrics["dropped_queue_full"] = metrics["dropped_decode_error"] = 0
    report = HealthReport(
        overall="ok",
        modules=(ModuleHealth(module="file:cam", state="ok", metrics=metrics),),
        at=0.0,
    )
    (cam,) = camera_health([view], report)
    assert "dropped" not in cam.why
