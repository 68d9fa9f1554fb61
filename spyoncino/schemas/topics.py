"""Every topic on the bus, typed, in one place."""

from __future__ import annotations

from spyoncino.core.bus import Topic
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
