"""Health and telemetry payloads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spyoncino.schemas.base import Payload

HealthState = Literal["starting", "ok", "degraded", "failed", "quarantined", "stopped"]


class ModuleHealth(Payload):
    module: str
    state: HealthState
    detail: str = ""
    last_error: str | None = None
    restarts: int = 0
    metrics: dict[str, float | int | str] = Field(default_factory=dict)


class HealthReport(Payload):
    """Published on ``status.health``: every module's state, worst first in ``overall``."""

    overall: Literal["ok", "degraded", "failed"]
    modules: tuple[ModuleHealth, ...]
    at: float


class TopicStats(Payload):
    topic: str
    published: int
    handler_errors: int = 0


class SubscriptionStats(Payload):
    module: str
    pattern: str
    policy: str
    depth: int
    max_depth: int
    maxsize: int
    delivered: int
    dropped: int
    errors: int
    lag_ms: float
    lag_ms_max: float
    above_high_watermark: bool


class BusStatus(Payload):
    """Published on ``status.bus`` every ``bus.status_interval`` seconds."""

    uptime_s: float
    topics: list[TopicStats]
    subscriptions: list[SubscriptionStats]
    warnings: list[str] = Field(default_factory=list)
