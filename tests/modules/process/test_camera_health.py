"""Camera health on replays made from the sample clip: each fault gives one alert and one
recovery at the expected time; lighting nuisances give none."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from spyoncino.modules.dashboard.status_page._metrics import Metrics, Reports
from spyoncino.modules.process.camera_health import CameraHealth, Condition
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Frame
from spyoncino.schemas.health import CameraHealthNotice
from spyoncino.schemas.status import HealthReport, ModuleHealth
from spyoncino.testing import BusHarness, Recorder
from tests.support.health_replays import NUISANCES, lumas, replay
from tests.support.wait import until

T0 = 1_750_000_000.0  # the replays' wall clock starts here


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Run:
    h: BusHarness
    module: CameraHealth
    rec: Recorder
    clock: FakeClock
    seq: int = 0

    def notices(self) -> list[CameraHealthNotice]:
        return [p for p in self.rec.payloads if isinstance(p, CameraHealthNotice)]

    async def frame(self, luma: np.ndarray, t: float, camera: str = "cam") -> None:
        """Publish one frame ``t`` s into the replay and wait until the module is done with it."""
        h, w = luma.shape
        f = Frame(camera, self.seq, 50.0 + t, T0 + t, w * 2, h * 2, luma)
        self.seq += 1
        topic = topics.FRAME.at(camera=camera)
        await self.h.bus.publish(topic, f)
        await self.h.bus.wait_idle(topic)
        await self.h.bus.wait_idle(topics.CAMERA_HEALTH.pattern())

    async def watched(self) -> None:
        """Wait until a whole round of the module's stream watch ran after now (so on the
        clock as it is now) and what it announced was delivered. Polled: the round counter
        fires no event."""
        first = self.module.stream_rounds
        await until(lambda: self.module.stream_rounds >= first + 2, what="a stream-watch round")
        await self.h.bus.wait_idle(topics.CAMERA_HEALTH.pattern())

    async def replay(self, name: str) -> None:
        for t, luma in lumas(replay(name)):
            self.clock.t = 1000.0 + t
            await self.frame(luma, t)


MakeRun = Callable[..., Coroutine[Any, Any, Run]]


@pytest_asyncio.fixture
async def run() -> AsyncIterator[MakeRun]:
    async with BusHarness() as h:

        async def make(section: dict[str, Any] | None = None, **camera: Any) -> Run:
            clock = FakeClock()
            rec = h.record(topics.CAMERA_HEALTH.pattern())
            cam: dict[str, Any] = {"source": "cam.mp4", "name": "Front door"}
            if camera:
                cam["health"] = camera
            module = h.build(
                CameraHealth, {"cameras": {"cam": cam}, "health": section or {}}, name="health"
            )
            module.clock = clock
            module.tick_s = 0.01
            assert isinstance(module, CameraHealth)
            await module.configure(module.ctx.app)
            await module.start()
            return Run(h, module, rec, clock)

        yield make


def phases(notices: list[CameraHealthNotice]) -> list[tuple[str, str, float]]:
    return [(n.condition, n.phase, round(n.at - T0, 1)) for n in notices]


def close(actual: float, expected: float, slack: float = 1.5) -> bool:
    return abs(actual - expected) <= slack


async def test_a_covered_lens_for_40_s_gives_one_alert_then_one_recovery(run: MakeRun) -> None:
    r = await run()
    await r.replay("black")  # 20 s normal, black 20..60 s, normal to 90 s
    got = phases(r.notices())
    assert [(c, p) for c, p, _ in got] == [("black", "alert"), ("black", "recovered")], got
    assert close(got[0][2], 20 + 30), got  # black_after_s 30
    assert close(got[1][2], 60 + 5), got  # recover_after_s 5
    alert, back = r.notices()
    assert alert.notice_id == back.notice_id
    assert "Front door" in alert.message and "black" in alert.message
    assert alert.duration_s >= 30
    assert back.reason == "the picture is normal again"


async def test_a_frozen_picture_gives_one_alert_then_one_recovery(run: MakeRun) -> None:
    r = await run()
    await r.replay("frozen")  # one frame repeated 20..95 s (through H.264, key frames and all)
    got = phases(r.notices())
    assert [(c, p) for c, p, _ in got] == [("frozen", "alert"), ("frozen", "recovered")], got
    assert close(got[0][2], 21 + 60), got  # first identical sample at 21 s, frozen_after_s 60
    assert close(got[1][2], 95 + 5), got


async def test_a_camera_turned_by_a_third_alerts_once_then_accepts_the_new_view(
    run: MakeRun,
) -> None:
    r = await run(scene_accept_s=30)
    await r.replay("shifted")  # shifted from 30 s to the end (140 s)
    got = phases(r.notices())
    assert [(c, p) for c, p, _ in got] == [
        ("scene_change", "alert"),
        ("scene_change", "recovered"),
    ], got
    assert close(got[0][2], 30 + 60), got  # scene_after_s 60
    assert close(got[1][2], 90 + 30), got  # the new view became the reference
    assert "new view" in r.notices()[1].reason


async def test_a_camera_moved_back_recovers_as_back_to_normal(run: MakeRun) -> None:
    r = await run(scene_after_s=5)
    frames = [luma for _, luma in lumas(replay("shifted"))]
    t = 0.0
    for luma in frames[: 20 * 5]:  # 20 s as it was
        await r.frame(luma, t)
        t += 0.2
    for luma in frames[30 * 5 : 45 * 5]:  # 15 s turned away
        await r.frame(luma, t)
        t += 0.2
    for luma in frames[: 10 * 5]:  # turned back
        await r.frame(luma, t)
        t += 0.2
    got = phases(r.notices())
    assert [(c, p) for c, p, _ in got] == [
        ("scene_change", "alert"),
        ("scene_change", "recovered"),
    ], got
    assert r.notices()[1].reason == "the view is back to normal"


@pytest.mark.parametrize("name", NUISANCES)
async def test_lighting_nuisances_raise_nothing(run: MakeRun, name: str) -> None:
    r = await run()
    await r.replay(name)
    assert r.notices() == []
    assert r.module.metrics()["samples"] >= 100


async def test_stream_lost_for_60_s_alerts_after_30_s_and_recovers(run: MakeRun) -> None:
    r = await run()
    still = np.random.default_rng(1).integers(0, 255, (180, 320), dtype=np.uint8)
    for i in range(10):
        r.clock.t = 1000.0 + i * 0.2
        await r.frame(still, i * 0.2)
    last = r.clock.t
    # the source goes silent for 60 s on the module's clock
    while r.clock.t < last + 60:
        r.clock.t += 0.5
        await r.watched()  # the module's watch sees the clock move
        if r.clock.t >= last + 31:
            await r.rec.wait_for(lambda m: m.payload.phase == "alert", timeout=5)
    lost = r.notices()
    assert [(n.condition, n.phase) for n in lost] == [("stream_lost", "alert")]
    assert r.module.health().state == "degraded"
    assert "Front door: stream lost" in r.module.health().detail
    assert r.module.metrics()["camera_health.cam.stream_lost"] == 1
    report = HealthReport(overall="degraded", modules=(r.module.health(),), at=time.time())
    scraped = Metrics(lambda: Reports(health=report), "9.9").render().decode()
    assert 'spyoncino_camera_health{camera="cam",condition="stream_lost"} 1.0' in scraped
    assert 'spyoncino_camera_health{camera="cam",condition="black"} 0.0' in scraped
    t = 2.0
    for _ in range(40):  # frames again, 8 s worth
        r.clock.t += 0.2
        t += 0.2
        await r.frame(still + (int(t * 5) % 2), t)  # not frozen: one grey level of change
    msg = await r.rec.wait_for(lambda m: m.payload.phase == "recovered", timeout=5)
    assert msg.payload.condition == "stream_lost"
    assert len(r.notices()) == 2
    assert r.module.health().state == "ok"
    assert r.module.metrics()["camera_health.cam.stream_lost"] == 0


async def test_a_file_that_ended_is_not_lost(run: MakeRun) -> None:
    r = await run()
    still = np.random.default_rng(1).integers(0, 255, (180, 320), dtype=np.uint8)
    await r.frame(still, 0.0)
    report = HealthReport(
        overall="ok",
        modules=(
            ModuleHealth(
                module="file:cam", state="ok", metrics={"camera": "cam", "camera_state": "ended"}
            ),
        ),
        at=time.time(),
    )
    await r.h.bus.publish(topics.HEALTH.name, report)
    await r.h.bus.wait_idle(topics.HEALTH.name)
    r.clock.t += 120
    await r.watched()
    assert r.notices() == []


async def test_per_camera_overrides_and_conditions(run: MakeRun) -> None:
    r = await run(black_after_s=10, conditions=["black", "stream_lost"])
    assert r.module.watches["cam"].limits.black_after_s == 10
    assert r.module.watches["cam"].limits.frozen_after_s == 60
    assert "frozen" not in r.module.watches["cam"].limits.conditions


def test_a_lone_good_sample_does_not_restart_the_count() -> None:
    c = Condition("frozen")
    t = 0.0
    phases_seen = []
    while t < 70:
        bad = int(t) % 10 != 0  # a key frame every 10 s looks alive for one sample
        phases_seen.append(c.update(bad, t, T0 + t, 60.0, 5.0))
        t += 1.0
    assert phases_seen.count("alert") == 1


def test_cache_dir_is_ignored() -> None:
    from tests.support.health_replays import CACHE

    repo = Path(__file__).resolve().parents[3]
    assert CACHE.is_relative_to(repo / ".cache")
    assert ".cache/" in (repo / ".gitignore").read_text()


async def test_a_live_camera_wakes_the_module_once_per_sample_not_per_frame(run: MakeRun) -> None:
    r = await run()
    luma = np.random.default_rng(2).integers(0, 255, (180, 320), dtype=np.uint8)
    topic = topics.FRAME.at(camera="cam")
    published = 60
    for i in range(published):  # a live 30 fps camera: stamped on arrival
        now = time.monotonic()
        await r.h.bus.publish(topic, Frame("cam", i, now, time.time(), 640, 360, luma))
        # real time on purpose: the handler judges a live camera's frames fresh and rests
        # between samples on time.monotonic(), the capture clock, which no fake can stand for
        await asyncio.sleep(1 / 30)
    stats = [
        s for s in r.h.bus.status().subscriptions if s.module == "health" and "frame" in s.pattern
    ]
    assert stats and stats[0].delivered + stats[0].dropped + stats[0].depth >= published - 1
    # about one frame a second reaches the handler; the others only swap the slot
    assert stats[0].delivered <= published // 4, stats[0]
    assert r.module.watches["cam"].analyser.samples >= 2


def test_telegram_status_names_the_camera_problem_and_the_notice_is_plain_text() -> None:
    from spyoncino.modules.output import _telegram_text as text
    from spyoncino.schemas.control import ControlState

    cam = ModuleHealth(
        module="rtsp:cam", state="ok", metrics={"camera": "cam", "camera_state": "streaming"}
    )
    health = ModuleHealth(
        module="health",
        state="degraded",
        metrics={"camera_health.cam.black": 1, "camera_health.cam.frozen": 0},
    )
    report = HealthReport(overall="degraded", modules=(cam, health), at=time.time())
    out = text.status_text(
        state=ControlState(armed=True),
        health=report,
        names={"cam": "Front door"},
        events=[],
        disk=None,
        uptime_s=10,
        temperature_c=None,
        now=time.time(),
        tz="UTC",
    )
    assert "- Front door: ok; problem: black" in out
    notice = CameraHealthNotice(
        notice_id="health-cam-black-1",
        camera_id="cam",
        camera_name="Front door",
        condition="black",
        phase="alert",
        since=T0,
        at=T0 + 30,
        duration_s=30,
        message="Front door: the picture is black or uniform for 30 s.",
    )
    assert text.health_notice_text(notice, "UTC") == (
        "Camera alert: Front door: the picture is black or uniform for 30 s.\n2025-06-15 15:07:10"
    )


async def test_a_reference_taken_behind_an_obstacle_is_replaced_not_alerted(run: MakeRun) -> None:
    r = await run(scene_after_s=10)
    shifted = [luma for _, luma in lumas(replay("shifted"))]
    t = 0.0
    for luma in shifted[40 * 5 : 42 * 5]:  # the first 2 s: another view (a truck in front)
        await r.frame(luma, t)
        t += 0.2
    for luma in shifted[: 28 * 5]:  # then the real view, for 28 s
        await r.frame(luma, t)
        t += 0.2
    assert r.notices() == []
    assert r.module.watches["cam"].analyser.ref_matches >= 10
