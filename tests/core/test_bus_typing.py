"""The bus's types are checked by mypy: a payload or a handler of the wrong type for a topic is
an error a module author sees before running anything (``make lint`` runs mypy --strict)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SNIPPET = """
from spyoncino.core.bus import Bus, Message
from spyoncino.core.contracts import BaseModule
from spyoncino.schemas import topics
from spyoncino.schemas.detections import MotionEvent
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Frame
from spyoncino.schemas.media import MediaArtifact


async def on_frame(msg: Message[Frame]) -> None: ...
async def on_event(msg: Message[EventNotice]) -> None: ...
async def on_any(msg: Message[EventNotice | MediaArtifact]) -> None: ...
async def on_raw(msg: Message[object]) -> None: ...


def fine(bus: Bus, module: BaseModule, event: EventNotice) -> None:
    bus.subscribe(topics.FRAME.at(camera="cam"), on_frame)
    bus.subscribe(topics.EVENT.pattern(phase="started"), on_event)
    module.subscribe(topics.EVENT, on_event, policy="block")
    module.subscribe(topics.EVENT, on_any)  # a handler of a wider payload takes it too
    module.subscribe([topics.EVENT, topics.ARTIFACT], on_raw)
    bus.publish_nowait(topics.EVENT.at(kind="object", phase="started"), event)


def wrong(bus: Bus, module: BaseModule, motion: MotionEvent) -> None:
    bus.subscribe(topics.FRAME.pattern(), on_event)  # WRONG-1
    module.subscribe(topics.MOTION, on_frame)  # WRONG-2
    module.subscribe("event.*.started", on_event)  # WRONG-3: a raw string says nothing
    bus.publish_nowait(topics.EVENT.at(kind="object", phase="started"), motion)  # WRONG-4
"""


def test_mypy_refuses_a_handler_or_payload_of_the_wrong_type(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install -e .[dev])")
    src = tmp_path / "snippet.py"
    src.write_text(SNIPPET)
    out, err, _code = api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(REPO / ".mypy_cache"), str(src)]
    )
    lines = SNIPPET.splitlines()
    flagged = {int(m.group(1)) for m in re.finditer(r"snippet\.py:(\d+): error", out)}
    wrong = {i + 1 for i, line in enumerate(lines) if "# WRONG-" in line}
    assert flagged == wrong, out + err
