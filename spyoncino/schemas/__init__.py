"""Payloads carried on the bus. Modules import these and ``spyoncino.core``, nothing else."""

from __future__ import annotations

from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.control import (
    ConfigRejected,
    ConfigSnapshot,
    ConfigUpdate,
    ControlCommand,
    ControlState,
)
from spyoncino.schemas.detections import Detection, DetectionEvent, MotionEvent
from spyoncino.schemas.events import EventNotice, TrackedObject
from spyoncino.schemas.frames import Box, Frame
from spyoncino.schemas.health import CameraHealthNotice
from spyoncino.schemas.media import MediaArtifact, RetentionReport, StorageFault, StoredEvent
from spyoncino.schemas.status import BusStatus, HealthReport, ModuleHealth

#: Every control-plane payload, for ``spyoncino schema``.
PAYLOADS = (
    MotionEvent,
    DetectionEvent,
    EventNotice,
    MediaArtifact,
    StoredEvent,
    RetentionReport,
    StorageFault,
    AlertNotification,
    CameraHealthNotice,
    ConfigUpdate,
    ConfigSnapshot,
    ConfigRejected,
    ControlCommand,
    ControlState,
    HealthReport,
    BusStatus,
)

__all__ = [
    "PAYLOADS",
    "AlertNotification",
    "Box",
    "BusStatus",
    "CameraHealthNotice",
    "ConfigRejected",
    "ConfigSnapshot",
    "ConfigUpdate",
    "ControlCommand",
    "ControlState",
    "Detection",
    "DetectionEvent",
    "EventNotice",
    "Frame",
    "HealthReport",
    "MediaArtifact",
    "ModuleHealth",
    "MotionEvent",
    "RetentionReport",
    "StorageFault",
    "StoredEvent",
    "TrackedObject",
]
