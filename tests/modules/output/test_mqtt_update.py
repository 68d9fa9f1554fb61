"""The MQTT module's update entity: what Home Assistant shows of the updater's last check."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jinja2
import pytest_asyncio

from spyoncino import __version__
from spyoncino.testing import BusHarness
from tests.modules.output.test_mqtt import configs_of, start_mqtt
from tests.support.mqtt_broker import Broker, Watcher, check_discovery, retained

STATE = "spyoncino/box1/state"
CONFIG = "homeassistant/update/box1/update/config"


@pytest_asyncio.fixture
async def watch(broker: Broker) -> AsyncIterator[Watcher]:
    w = Watcher(broker, ["spyoncino/#", "homeassistant/#"])
    await w.start()
    yield w
    await w.stop()


def rendered(config: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The entity's payload as Home Assistant renders it (its template has ``to_json``)."""
    env = jinja2.Environment(autoescape=False)  # noqa: S701 - JSON, not HTML
    env.filters["to_json"] = json.dumps
    out = env.from_string(config["value_template"]).render(value_json=state)
    return json.loads(out)  # type: ignore[no-any-return]


async def test_the_update_entity_shows_the_newer_version_the_last_check_found(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    folder = tmp_path / "update"
    folder.mkdir()
    (folder / "check.json").write_text(
        json.dumps({"action": "check", "outcome": "newer", "version": "9.1.0", "at": 1.0})
    )
    async with BusHarness(storage_root=tmp_path) as h:
        await start_mqtt(h, broker, update_dir=str(folder))
        state = json.loads((await watch.wait_topic(STATE)).text)
        held = configs_of(await retained(broker, ["homeassistant/#"], "test/settle"))
        assert not check_discovery(held, "homeassistant", "spyoncino/box1")
        config = held[CONFIG]
        assert config["state_topic"] == STATE and config["device_class"] == "firmware"
        assert rendered(config, state) == {
            "installed_version": __version__,
            "latest_version": "9.1.0",
        }


async def test_without_a_newer_version_or_an_updater_latest_is_the_running_one(
    tmp_path: Path, broker: Broker, watch: Watcher
) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        await start_mqtt(h, broker, update_dir=str(tmp_path / "none"))
        state = json.loads((await watch.wait_topic(STATE)).text)
        assert state["latest_version"] == state["version"] == __version__
