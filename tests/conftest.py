"""Shared fixtures: where the real assets are."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from tests.support.mqtt_broker import Broker, require_mosquitto

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "spyoncino" / "data" / "sample.mp4"
SHARED = Path(__file__).resolve().parents[2] / "shared"
if not SHARED.is_dir():  # CI lays shared/ beside the clone
    SHARED = REPO.parent / "shared"
VTEST = SHARED / "media" / "vtest.mp4"

# Every bus in the tests (and the services they start) raises on a payload of the wrong type
# for its topic, naming the topic; the service itself runs without the check.
os.environ.setdefault("SPYONCINO_CHECK_PAYLOADS", "1")

# the module contract suite (tests/contracts) is the plugin third parties load too
pytest_plugins = ["spyoncino.testing"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A ``slow`` test (a long real-footage run, CPU-bound) gets 900 s before the hang guard
    fails it instead of 300: beside another worker's test on a loaded 2-core machine the
    nuisance replay took 300 s. A test's own ``timeout`` mark still wins."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(900))


@pytest.fixture
def vtest() -> Path:
    if not VTEST.is_file():
        pytest.skip(f"real footage {VTEST} is absent (../shared not laid out)")
    return VTEST


def decode_frames(path: Path, limit: int | None = None) -> Iterator[np.ndarray]:
    """BGR frames of a video file."""
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if limit is not None and i >= limit:
                return
            yield f.to_ndarray(format="bgr24")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on 127.0.0.1 for the MQTT tests (skips when it is not installed)."""
    require_mosquitto()
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()
