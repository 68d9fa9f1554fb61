"""Notification outcomes, one per channel and attempt."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spyoncino.schemas.base import Payload


class AlertNotification(Payload):
    """Published on ``notify.<channel>.{queued,sent,failed}``."""

    channel: str
    event_id: str
    camera_id: str
    kind: str = Field(
        description="what was sent: snapshot, gif, clip, text, summary, health_alert, "
        "health_recovered"
    )
    status: Literal["queued", "sent", "failed"]
    recipient: str = Field(description="chat id, URL host or address; never a secret")
    attempt: int = Field(default=1, ge=1)
    error: str | None = None
    at: float
