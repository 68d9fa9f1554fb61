"""OutboxChannel: the plumbing every alert channel shares, on the smallest possible channel."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import pytest_asyncio
from pydantic import Field

from spyoncino.core.bus import Bus
from spyoncino.core.config import AppConfig, build_app_model
from spyoncino.core.contracts import BoundedExecutor, ModuleConfig, ModuleContext, ModuleNotReady
from spyoncino.helpers.outbox import AlertGate, OutboxChannel, OutboxItem, OutboxSettings
from spyoncino.schemas import topics
from spyoncino.schemas.control import ControlState
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact
from tests.support.alerts import publish_event, publish_started
from tests.support.tmpfs import fill, small_tmpfs
from tests.support.wait import until


class RecorderConfig(ModuleConfig):
    type: Literal["recorder"] = "recorder"
    alert_kinds: tuple[str, ...] = ("object", "motion")
    snapshot_wait_s: float = 1.0
    outbox: OutboxSettings = Field(
        default_factory=lambda: OutboxSettings(
            min_interval_s=0.0, backoff_initial_s=0.05, backoff_max_s=0.2
        )
    )


class Recorder(OutboxChannel[RecorderConfig]):
    """A channel whose only own parts are a one-line _enqueue and a _deliver that records."""

    Config: ClassVar[type[ModuleConfig]] = RecorderConfig
    channel: ClassVar[str] = "recorder"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.cfg = RecorderConfig()
        self.db_path = Path("unset")
        self.delivered: list[tuple[str, str]] = []

    async def configure(self, app: AppConfig) -> None:
        self.cfg = app.section(self.name, RecorderConfig)
        self.db_path = app.storage.db_path

    async def start(self) -> None:
        outbox = await self.open_outbox(self.db_path)
        self.gate = AlertGate(self.cfg.alert_kinds, budget=outbox.admit)
        self.listen()

    async def _enqueue(self, ev: EventNotice, art: MediaArtifact | None) -> None:
        assert self.outbox is not None
        await self.outbox.enqueue(
            recipient="owner",
            event_id=ev.event_id,
            camera_id=ev.camera_id,
            kind=art.kind if art is not None else "text",
            payload={},
        )

    async def _deliver(self, item: OutboxItem) -> str | None:
        self.delivered.append((item.event_id, item.kind))
        return "ok"


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(2)
    modules: list[Recorder] = []

    async def make(root: Path = tmp_path, **section: Any) -> Recorder:
        """Configure and start one Recorder the way the orchestrator does; stopped at the end."""
        app = build_app_model({"recorder": Recorder}).model_validate(
            {"storage": {"root": str(root)}, "recorder": section}
        )
        module = Recorder(ModuleContext(bus=bus, executor=executor, app=app, instance="recorder"))
        module.name = "recorder"
        modules.append(module)  # stopped even when start fails, as the orchestrator does
        await module.configure(app)
        await module.start()
        return module

    yield {"bus": bus, "make": make, "root": tmp_path}
    for m in modules:
        await m.stop()
    await bus.close()
    executor.shutdown()


async def test_a_snapshot_is_delivered_and_nothing_while_disarmed(env: dict[str, Any]) -> None:
    bus, root = env["bus"], env["root"]
    m = await env["make"]()
    await publish_event(bus, root, "ev-1")
    # counted as sent once its row says so, just after the delivery
    await until(lambda: m.delivered == [("ev-1", "snapshot")] and m.metrics()["outbox_sent"] == 1)
    await bus.publish(topics.CONTROL_STATE.name, ControlState(armed=False))
    await bus.drain()
    await publish_event(bus, root, "ev-2")
    await bus.drain()
    assert m.delivered == [("ev-1", "snapshot")]
    assert m.metrics()["suppressed"] == 1
    assert m.metrics()["outbox_sent"] == 1


async def test_an_event_whose_snapshot_never_comes_is_alerted_as_text(
    env: dict[str, Any],
) -> None:
    m = await env["make"](snapshot_wait_s=1.0)
    await publish_started(env["bus"], "no-pic")
    await until(lambda: m.delivered == [("no-pic", "text")])


async def test_a_stopped_channel_sends_nothing_and_can_start_again(
    env: dict[str, Any],
) -> None:
    bus, root = env["bus"], env["root"]
    m = await env["make"]()
    await publish_event(bus, root, "ev-1")
    await until(lambda: m.delivered == [("ev-1", "snapshot")])
    await m.stop()
    assert m.outbox is None
    await publish_event(bus, root, "ev-2")
    await bus.drain()
    assert m.delivered == [("ev-1", "snapshot")]
    await m.start()  # what the orchestrator does after a failed start
    await publish_event(bus, root, "ev-3")
    await until(lambda: m.delivered == [("ev-1", "snapshot"), ("ev-3", "snapshot")])


@pytest.mark.parametrize("blocker", ["database is a folder", "storage root is a file"])
async def test_an_outbox_that_cannot_be_opened_is_not_ready(
    env: dict[str, Any], tmp_path: Path, blocker: str
) -> None:
    root = tmp_path / "store"
    if blocker == "database is a folder":
        (root / "outbox.sqlite3").mkdir(parents=True)
    else:
        root.write_bytes(b"not a folder")
    with pytest.raises(ModuleNotReady, match=r"cannot open the outbox in .*outbox\.sqlite3"):
        await env["make"](root=root)


async def test_a_full_disk_delays_no_alert_and_kills_no_task(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """The overdue task once died of SQLITE_FULL and its alert was never stored nor sent."""
    with small_tmpfs(tmp_path / "disk", "2m") as root:
        m = await env["make"](root, snapshot_wait_s=0.1)
        filler = fill(root / "filler")
        await publish_started(env["bus"], "while-full")
        await until(lambda: ("while-full", "text") in m.delivered)
        filler.unlink()
        await publish_started(env["bus"], "after")
        await until(lambda: ("after", "text") in m.delivered)
        assert m.health().state != "failed"
        # the alert kept in memory reached the database once it could be written; an
        # outcome counts as sent only once its row says so (delivery comes first)
        assert m.outbox is not None
        outbox = m.outbox
        await until(lambda: outbox.stats["sent"] == 2 and outbox.stats["unsaved"] == 0)
        conn = sqlite3.connect(root / "outbox.sqlite3")
        try:
            rows = conn.execute("SELECT event_id, status FROM outbox ORDER BY id").fetchall()
        finally:
            conn.close()
        assert ("while-full", "sent") in rows and ("after", "sent") in rows


def test_a_channel_config_without_what_the_base_reads_is_refused_at_definition() -> None:
    """``OutboxChannel[Config]`` is a ``BaseModule[Config]``; a ``Config`` without what the base
    reads (here ``outbox``) is refused when the class is defined, not at the first alert."""
    from spyoncino.core.contracts import BaseModule

    assert issubclass(Recorder, BaseModule)

    class NoOutbox(ModuleConfig):
        type: Literal["nooutbox"] = "nooutbox"
        alert_kinds: tuple[str, ...] = ("object",)
        snapshot_wait_s: float = 1.0

    with pytest.raises(TypeError, match="outbox"):

        class Broken(Recorder):
            Config: ClassVar[type[ModuleConfig]] = NoOutbox
