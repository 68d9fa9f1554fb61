"""Privacy masks black out part of every frame at the input, before anything reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spyoncino.core.config import ConfigError, ConfigService, Layer, build_app_model
from spyoncino.core.orchestrator import Orchestrator, discover
from spyoncino.modules.process.detector import Config as DetectorConfig
from spyoncino.modules.process.detector import load_model
from spyoncino.schemas.control import ConfigUpdate
from spyoncino.testing import Recorder

SAMPLE = Path(__file__).resolve().parents[2] / "spyoncino" / "data" / "sample.mp4"
LEFT_HALF = {"name": "neighbour", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}


def _cfg(masks: list[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    return {
        "storage": {"root": str(tmp)},
        "cameras": {
            "cam": {
                "source": str(SAMPLE),
                "file": {"pace": "realtime", "loop": True},
                "privacy_masks": masks,
            }
        },
    }


def test_a_mask_corner_outside_the_picture_is_refused_with_its_key(tmp_path: Path) -> None:
    reg = {"file": discover()["file"]}
    bad = {"name": "x", "polygon": [[0, 0], [1.5, 0], [1, 1]]}
    with pytest.raises(ConfigError) as e:
        ConfigService(build_app_model(reg), [Layer("test", _cfg([bad], tmp_path))])
    assert "cameras.cam.privacy_masks.0.polygon" in str(e.value)


async def test_masked_area_is_black_in_luma_and_image_and_a_change_applies_live(
    tmp_path: Path,
) -> None:
    reg = {"file": discover()["file"]}
    service = ConfigService(build_app_model(reg), [Layer("test", _cfg([LEFT_HALF], tmp_path))])
    orch = Orchestrator(service, reg)
    await orch.start()
    try:
        frames = Recorder()
        orch.bus.subscribe("camera.cam.frame", frames, policy="latest", module="test")
        frame = (await frames.wait_for()).payload
        w = frame.luma.shape[1]
        assert not frame.luma[:, : w // 2 - 2].any()  # the left half is black
        assert frame.luma[:, w // 2 + 2 :].any()
        # the detector's input too: from the masked picture, not from the decoder's planes
        # (which it is converted from where there are no masks: close, never equal)
        pre = load_model(DetectorConfig()).pre
        region = (0, 0, frame.width, frame.height)
        via_frame = pre(frame, region)[0].copy()
        assert np.array_equal(via_frame, pre(frame.image, region)[0])
        img = frame.image
        assert not img[:, : img.shape[1] // 2 - 2].any()
        assert img[:, img.shape[1] // 2 + 2 :].any()
        assert await orch.apply(ConfigUpdate(changes={"cameras": {"cam": {"privacy_masks": []}}}))
        seq = frame.seq
        later = (await frames.wait_for(lambda m: m.payload.seq > seq + 1)).payload
        assert later.luma[:, : w // 2 - 2].any()  # unmasked at once, no restart
        assert np.asarray(later.image)[:, :10].any()
    finally:
        await orch.stop()
