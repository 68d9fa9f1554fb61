from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from spyoncino.core.config import AppConfig, ConfigService, Layer, build_app_model
from spyoncino.core.contracts import (
    BaseModule,
    Category,
    ModuleConfig,
    ModuleConfigError,
    ModuleNotReady,
)
from spyoncino.core.orchestrator import Orchestrator
from spyoncino.schemas.control import ConfigUpdate
from spyoncino.schemas.events import EventNotice
from spyoncino.testing import Recorder
from tests.support.wait import until

LOG: list[str] = []


def make_module(
    name: str,
    category: Category,
    *,
    fail_start: int = 0,
    permanent: bool = False,
    refuse: Any = None,
    check_refuses: Any = None,
    sloppy: bool = False,
) -> type[BaseModule]:
    class Cfg(ModuleConfig):
        level: int = Field(default=1, ge=0, le=100, description="a knob")

    Cfg.model_fields["type"] = Cfg.model_fields["enabled"]  # unused by these tests

    class M(BaseModule):
        Config: ClassVar[type[ModuleConfig]] = Cfg
        failures_left = fail_start

        async def check(self, app: AppConfig) -> None:
            level = app.section(name, Cfg).level
            if check_refuses is not None and level == check_refuses:
                raise ModuleConfigError(f"{name} cannot run at level {level}")

        async def configure(self, app: AppConfig) -> None:
            level = app.section(name, Cfg).level
            if sloppy:  # adopts before it validates, as modules once did
                self.level = level
            if refuse is not None and level == refuse:
                raise ModuleConfigError(f"{name} cannot run at level {level}")
            self.level = level
            LOG.append(f"configure {name} {level}")

        async def start(self) -> None:
            if type(self).failures_left:
                type(self).failures_left -= 1
                if permanent:
                    raise ModuleConfigError(f"{name} is broken for good")
                raise ModuleNotReady(f"{name} not ready")
            LOG.append(f"start {name}")

        async def stop(self) -> None:
            LOG.append(f"stop {name}")
            await super().stop()

    M.category = category
    M.name = name
    M.__name__ = name
    return M


def service(registry: dict[str, type[BaseModule]], data: dict[str, Any]) -> ConfigService:
    return ConfigService(build_app_model(registry), [Layer("test", data)])


@pytest.fixture(autouse=True)
def _clear() -> None:
    LOG.clear()


async def test_start_consumers_first_and_stop_in_reverse(tmp_path: Path) -> None:
    registry = {
        "a_proc": make_module("a_proc", "process"),
        "b_store": make_module("b_store", "storage"),
        "c_out": make_module("c_out", "output"),
        "d_event": make_module("d_event", "event"),
    }
    orch = Orchestrator(service(registry, {"storage": {"root": str(tmp_path)}}), registry)
    await orch.start()
    starts = [x for x in LOG if x.startswith("start")]
    assert starts == ["start b_store", "start c_out", "start d_event", "start a_proc"]
    assert orch.health().overall == "ok"
    LOG.clear()
    await orch.stop()
    assert LOG == ["stop a_proc", "stop d_event", "stop c_out", "stop b_store"]


async def test_modules_learn_when_every_module_has_started(tmp_path: Path) -> None:
    """``ctx.started`` is what MQTT and Telegram wait on before they hand a command to the
    bus: still unset while the later modules (the ones that obey) start, set after."""
    registry = {"c_out": make_module("c_out", "output"), "a_proc": make_module("a_proc", "process")}
    orch = Orchestrator(service(registry, {"storage": {"root": str(tmp_path)}}), registry)
    seen: dict[str, bool] = {}
    real_start = orch._start_slot

    async def watched(slot: Any) -> None:
        seen[slot.instance] = slot.module.ctx.started.is_set()
        await real_start(slot)

    orch._start_slot = watched  # type: ignore[method-assign]
    await orch.start()
    assert seen == {"c_out": False, "a_proc": False}
    assert all(s.module.ctx.started.is_set() for s in orch.slots)
    await orch.stop()


async def test_disabled_module_is_not_built(tmp_path: Path) -> None:
    registry = {"x": make_module("x", "process"), "y": make_module("y", "process")}
    orch = Orchestrator(service(registry, {"y": {"enabled": False}}), registry)
    await orch.start()
    assert [s.instance for s in orch.slots] == ["x"]
    await orch.stop()


async def test_not_ready_is_retried_then_runs(tmp_path: Path) -> None:
    registry = {
        "flaky": make_module("flaky", "output", fail_start=2),
        "ok": make_module("ok", "process"),
    }
    orch = Orchestrator(service(registry, {}), registry, retry_base=0.01)
    await orch.start()
    assert orch.health().overall == "degraded"
    # polled: a retried start changes the slot's state and fires no event
    await until(lambda: orch.slots[0].state == "running", what="flaky running")
    assert LOG.count("start flaky") == 1 and "start ok" in LOG
    report = orch.health()
    assert report.overall == "ok"
    assert report.modules[0].restarts == 2
    await orch.stop()


async def test_module_that_keeps_failing_is_quarantined_and_others_run() -> None:
    registry = {
        "broken": make_module("broken", "output", fail_start=100),
        "fine": make_module("fine", "process"),
    }
    data = {"runtime": {"max_start_attempts": 3}}
    orch = Orchestrator(service(registry, data), registry, retry_base=0.01)
    await orch.start()
    await until(lambda: orch.slots[0].state == "quarantined", what="quarantined")  # slot state
    health = orch.health()
    broken = next(m for m in health.modules if m.module == "broken")
    fine = next(m for m in health.modules if m.module == "fine")
    assert broken.state == "quarantined"
    assert "failed to start 3 times" in (broken.last_error or "")
    assert fine.state == "ok"
    assert health.overall == "degraded"
    await orch.stop()


async def test_permanent_error_quarantines_at_once() -> None:
    registry = {"bad": make_module("bad", "output", fail_start=1, permanent=True)}
    orch = Orchestrator(service(registry, {}), registry)
    await orch.start()
    assert orch.slots[0].state == "quarantined"
    assert orch.slots[0].attempts == 1
    await orch.stop()


async def test_health_is_published_on_the_bus() -> None:
    registry = {"m": make_module("m", "process")}
    orch = Orchestrator(service(registry, {"runtime": {"health_interval": 0.05}}), registry)
    rec = Recorder()
    await orch.start()
    orch.bus.subscribe("status.health", rec)
    msg = await rec.wait_for(timeout=2)
    assert msg.payload.overall == "ok"
    assert [m.module for m in msg.payload.modules] == ["m"]
    await orch.stop()


async def test_accepted_update_reconfigures_affected_modules_only() -> None:
    registry = {"a": make_module("a", "process"), "b": make_module("b", "process")}
    orch = Orchestrator(service(registry, {}), registry)
    await orch.start()
    snaps, rejects = Recorder(), Recorder()
    orch.bus.subscribe("config.snapshot", snaps)
    orch.bus.subscribe("config.rejected", rejects)
    LOG.clear()
    await orch.bus.publish(
        "config.update", ConfigUpdate(changes={"a": {"level": 5}}, request_id="r1")
    )
    snap = (await snaps.wait_for()).payload
    assert snap.request_id == "r1" and snap.version == 2 and snap.changed_modules == ("a",)
    assert snap.config["a"]["level"] == 5
    assert LOG == ["configure a 5"]
    assert not rejects.messages
    await orch.stop()


async def test_refused_update_rolls_everything_back() -> None:
    registry = {"a": make_module("a", "process"), "b": make_module("b", "process", refuse=9)}
    orch = Orchestrator(service(registry, {}), registry)
    await orch.start()
    rejects = Recorder()
    orch.bus.subscribe("config.rejected", rejects)
    LOG.clear()
    await orch.bus.publish(
        "config.update",
        ConfigUpdate(changes={"a": {"level": 9}, "b": {"level": 9}}, request_id="r2"),
    )
    rej = (await rejects.wait_for()).payload
    assert rej.request_id == "r2" and rej.version == 1
    assert "b refused the change" in rej.reason and "level 9" in rej.reason
    # a took the change, then both went back to the config still in force (b too: a module
    # refusing in configure may have adopted part of the change before it refused)
    assert LOG == ["configure a 9", "configure b 1", "configure a 1"]
    assert orch.slots[0].module.level == 1  # type: ignore[attr-defined]
    assert orch.config.current.section("a", registry["a"].Config).level == 1  # type: ignore[attr-defined]
    await orch.stop()


async def test_a_module_refusing_in_check_leaves_every_module_untouched() -> None:
    registry = {
        "a": make_module("a", "process"),
        "b": make_module("b", "process", check_refuses=9),
    }
    orch = Orchestrator(service(registry, {}), registry)
    await orch.start()
    LOG.clear()
    ok = await orch.apply(ConfigUpdate(changes={"a": {"level": 9}, "b": {"level": 9}}))
    assert not ok
    assert LOG == []  # nobody adopted anything, so nobody had to go back
    await orch.stop()


async def test_a_module_refusing_in_configure_does_not_keep_half_of_the_change() -> None:
    registry = {"a": make_module("a", "process", refuse=9, sloppy=True)}
    orch = Orchestrator(service(registry, {}), registry)
    await orch.start()
    ok = await orch.apply(ConfigUpdate(changes={"a": {"level": 9}}))
    assert not ok
    assert orch.slots[0].module.level == 1  # type: ignore[attr-defined]
    await orch.stop()


async def test_moving_the_storage_root_live_is_refused(tmp_path: Path) -> None:
    """Moved live, the status page made a new initial password in the new root: the old one
    stopped working without a word."""
    registry = {"a": make_module("a", "process")}
    orch = Orchestrator(service(registry, {"storage": {"root": str(tmp_path / "a")}}), registry)
    await orch.start()
    rejects = Recorder()
    orch.bus.subscribe("config.rejected", rejects)
    ok = await orch.apply(ConfigUpdate(changes={"storage": {"root": str(tmp_path / "b")}}))
    assert not ok
    assert "storage.root" in (await rejects.wait_for()).payload.reason
    assert orch.config.current.storage.root == tmp_path / "a"
    await orch.stop()


async def test_invalid_update_is_rejected_with_the_reason() -> None:
    registry = {"a": make_module("a", "process")}
    orch = Orchestrator(service(registry, {}), registry)
    await orch.start()
    ok = await orch.apply(ConfigUpdate(changes={"a": {"level": 1000}}))
    assert not ok
    ok = await orch.apply(ConfigUpdate(changes={"cameras": {"new": {"source": "x.mp4"}}}))
    assert not ok  # no installed input reads it
    await orch.stop()


SAMPLE = Path(__file__).resolve().parents[2] / "spyoncino" / "data" / "sample.mp4"


async def test_a_camera_added_live_starts_its_pipeline_and_a_removed_one_stops() -> None:
    """The first-run page adds a camera through config.update: it used to be refused as
    'needs a restart'. Its input starts; a module that cannot follow restarts."""
    from spyoncino.core.orchestrator import discover

    registry = {"a": make_module("a", "process"), "file": discover()["file"]}
    orch = Orchestrator(service(registry, {}), registry)
    await orch.start()
    first = orch.slots[0].module
    ok = await orch.apply(
        ConfigUpdate(changes={"cameras": {"ghost": {"source": "/nonexistent/x.mp4"}}})
    )
    assert not ok  # the new input refused it in check: nothing started, nothing restarted
    assert [s.instance for s in orch.slots] == ["a"] and orch.slots[0].module is first
    ok = await orch.apply(
        ConfigUpdate(changes={"cameras": {"new": {"source": str(SAMPLE), "file": {"loop": True}}}})
    )
    assert ok
    slots = {s.instance: s for s in orch.slots}
    assert slots["file:new"].state == "running"
    assert slots["a"].module is not first and slots["a"].state == "running"
    assert LOG[-2:] == ["configure a 1", "start a"] and "stop a" in LOG
    ok = await orch.apply(ConfigUpdate(changes={"cameras": {"new": {"enabled": False}}}))
    assert ok
    assert [s.instance for s in orch.slots] == ["a"]
    await orch.stop()


def test_sigterm_stops_within_ten_seconds(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"""
cameras:
  loop:
    source: "spyoncino:sample.mp4"
    file: {{pace: realtime, loop: true}}
storage:
  root: {tmp_path / "store"}
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPYONCINO_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spyoncino", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        seen = b""
        assert proc.stderr is not None
        while b"camera_streaming" not in seen and time.monotonic() < deadline:
            seen += proc.stderr.readline()
        assert b"camera_streaming" in seen, seen[-2000:]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 10
        assert proc.returncode == 0
        assert b"Spyoncino run finished" in out
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_a_module_that_restarts_for_a_new_camera_is_checked_as_its_new_instance() -> None:
    """A running module may refuse a camera change as 'needs a restart': the restart is what
    happens, so the fresh instance is the one asked."""
    from spyoncino.core.orchestrator import discover

    class Picky(make_module("p", "output")):  # type: ignore[misc]
        running = False

        async def check(self, app: AppConfig) -> None:
            if self.running and len(app.cameras) != self.cams_at_start:
                raise ModuleConfigError("p: a camera change needs a restart")

        async def start(self) -> None:
            self.running = True
            self.cams_at_start = len(self.ctx.app.cameras)
            await super().start()

    Picky.name = "p"
    registry = {"p": Picky, "file": discover()["file"]}
    orch = Orchestrator(service(registry, {}), registry)
    await orch.start()
    first = orch.slots[0].module
    ok = await orch.apply(ConfigUpdate(changes={"cameras": {"new": {"source": str(SAMPLE)}}}))
    assert ok
    slot = next(s for s in orch.slots if s.instance == "p")
    assert slot.module is not first and slot.state == "running"
    await orch.stop()


async def test_an_event_source_stops_first_and_what_it_closes_reaches_its_consumers() -> None:
    """At SIGTERM the tracker closed its events after the GIF maker had already stopped."""
    got: list[str] = []

    class Source(make_module("tracker_like", "event")):  # type: ignore[misc]
        stop_rank: ClassVar[int] = 1

        async def stop(self) -> None:
            await super().stop()
            now = time.time()
            closed = EventNotice(
                event_id="e1",
                camera_id="cam",
                kind="object",
                phase="ended",
                labels=("person",),
                top_score=0.9,
                started_at=now,
                updated_at=now,
                ended_at=now,
            )
            await self.bus.publish("event.object.ended", closed)

    class Consumer(make_module("a_consumer", "event")):  # type: ignore[misc]
        async def start(self) -> None:
            await super().start()

            async def on(msg: Any) -> None:
                # a GIF build: work on another thread the handler awaits
                await asyncio.get_running_loop().run_in_executor(None, sum, range(100_000))
                got.append(msg.payload.event_id)

            self.subscribe("event.#", on)

    Source.name, Consumer.name = "tracker_like", "a_consumer"
    registry: dict[str, type[BaseModule]] = {"tracker_like": Source, "a_consumer": Consumer}
    orch = Orchestrator(service(registry, {}), registry)
    await orch.start()
    LOG.clear()
    await orch.stop()
    assert LOG == ["stop tracker_like", "stop a_consumer"]
    assert got == ["e1"]


async def test_a_slow_stop_leaves_the_later_stages_their_share_of_the_budget() -> None:
    deadlines: dict[str, float] = {}

    class Slow(make_module("slow_media", "event")):  # type: ignore[misc]
        async def stop(self) -> None:
            deadlines["slow_media"] = self.stop_deadline or 0.0
            await asyncio.Event().wait()  # a backlog no budget covers: it never ends

    class Store(make_module("store", "storage")):  # type: ignore[misc]
        async def stop(self) -> None:
            deadlines["store"] = self.stop_deadline or 0.0
            await super().stop()

    Slow.name, Store.name = "slow_media", "store"
    registry: dict[str, type[BaseModule]] = {"slow_media": Slow, "store": Store}
    orch = Orchestrator(
        service(registry, {"runtime": {"shutdown_budget_s": 2.0, "stop_timeout": 10.0}}),
        registry,
    )
    await orch.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await orch.stop()
    assert "stop store" in LOG  # storage still stopped (index flushed) after the slow one
    assert deadlines["slow_media"] < deadlines["store"] <= t0 + 2.0
    assert loop.time() - t0 < 2.5
