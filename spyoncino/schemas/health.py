"""Camera health: a camera that stopped streaming, went dark, froze or was turned away."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spyoncino.schemas.base import Payload

#: what can be wrong with a camera, in the order a problem hides the ones after it (a lost
#: stream has no picture to judge; a black picture is also frozen and unlike its reference)
HealthCondition = Literal["stream_lost", "black", "frozen", "scene_change"]
CONDITIONS: tuple[HealthCondition, ...] = ("stream_lost", "black", "frozen", "scene_change")
HealthPhase = Literal["alert", "recovered"]


class CameraHealthNotice(Payload):
    """Published on ``health.<camera>.<phase>`` (``topics.CAMERA_HEALTH``): once when a
    condition has lasted its threshold (``alert``), once when it is over (``recovered``). Both
    carry the same ``notice_id``."""

    notice_id: str = Field(description="health-<camera>-<condition>-<start>, shared by both")
    camera_id: str
    camera_name: str
    condition: HealthCondition
    phase: HealthPhase
    since: float = Field(description="wall-clock seconds since the epoch the condition began")
    at: float = Field(description="wall-clock seconds since the epoch of this notice")
    duration_s: float = Field(ge=0.0, description="how long the condition has lasted")
    message: str = Field(max_length=300, description="one plain sentence for people")
    reason: str = Field(
        default="",
        max_length=200,
        description="recovered: why it is over ('picture back', 'new view accepted')",
    )
    measures: dict[str, float] = Field(
        default_factory=dict, description="what was measured (mean, spread, changed share)"
    )
