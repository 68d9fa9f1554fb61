"""Every topic on the bus, typed, in one place.

``Topic`` lives here, not in ``core.bus``, so the payload package is a leaf: it imports
nothing of ours outside ``spyoncino.schemas`` (a third-party module or a client can use the
payloads without the runtime).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.control import (
    ConfigRejected,
    ConfigSnapshot,
    ConfigUpdate,
    ControlCommand,
    ControlState,
)
from spyoncino.schemas.detections import DetectionEvent, MotionEvent
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Frame
from spyoncino.schemas.media import MediaArtifact, RetentionReport, StorageFault, StoredEvent
from spyoncino.schemas.status import BusStatus, HealthReport

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Topic(Generic[T]):
    """A typed topic name. ``{camera}``-style placeholders make a family of topics.

    ``FRAME.at(camera="front")`` gives the concrete name to publish on and
    ``FRAME.pattern()`` the wildcard pattern that matches the whole family.
    """

    template: str
    payload: type[T]

    def at(self, **parts: str) -> str:
        return self.template.format(**parts)

    def pattern(self, **parts: str) -> str:
        names = [seg for seg in self.template.split(".")]
        out = []
        for seg in names:
            if seg.startswith("{") and seg.endswith("}"):
                out.append(parts.get(seg[1:-1], "*"))
            else:
                out.append(seg)
        return ".".join(out)

    @property
    def name(self) -> str:
        """The name of a topic without placeholders."""
        if "{" in self.template:
            raise ValueError(f"topic {self.template!r} has placeholders: use .at(...)")
        return self.template


FRAME = Topic("camera.{camera}.frame", Frame)
MOTION = Topic("process.motion.detected", MotionEvent)
OBJECTS = Topic("process.object.detected", DetectionEvent)
EVENT = Topic("event.{kind}.{phase}", EventNotice)
ARTIFACT = Topic("event.{artifact}.ready", MediaArtifact)
STORED = Topic("storage.event.saved", StoredEvent)
RETENTION = Topic("storage.retention", RetentionReport)
STORAGE_FAULT = Topic("storage.fault", StorageFault)
NOTIFY = Topic("notify.{channel}.{status}", AlertNotification)
HEALTH = Topic("status.health", HealthReport)
BUS_STATUS = Topic("status.bus", BusStatus)
CONFIG_UPDATE = Topic("config.update", ConfigUpdate)
CONFIG_SNAPSHOT = Topic("config.snapshot", ConfigSnapshot)
CONFIG_REJECTED = Topic("config.rejected", ConfigRejected)
CONTROL = Topic("control.command", ControlCommand)
CONTROL_STATE = Topic("control.state", ControlState)
