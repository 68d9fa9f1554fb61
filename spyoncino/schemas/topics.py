"""Every topic on the bus, typed, in one place.

``Topic`` lives here, not in ``core.bus``, so the payload package is a leaf: it imports
nothing of ours outside ``spyoncino.schemas`` (a third-party module or a client can use the
payloads without the runtime).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

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
from spyoncino.schemas.health import CameraHealthNotice
from spyoncino.schemas.index import (
    DayCountsQuery,
    DayCountsReply,
    EventLookup,
    EventsPage,
    EventsQuery,
    LabelsQuery,
    LabelsReply,
    MediaRemoved,
)
from spyoncino.schemas.media import MediaArtifact, RetentionReport, StorageFault, StoredEvent
from spyoncino.schemas.status import BusStatus, HealthReport

T = TypeVar("T")


class Topic(str, Generic[T]):
    """A typed topic name: the string itself plus the payload type it carries.

    A ``Topic`` is a ``str`` (so it compares, hashes and logs like its name), which lets
    ``Bus.publish(topic: Topic[T], payload: T)`` be checked by mypy without changing how a
    topic is used anywhere else. ``{camera}``-style placeholders make a family of topics:
    ``FRAME.at(camera="front")`` gives the concrete ``Topic[Frame]`` to publish on and
    ``FRAME.pattern()`` the wildcard pattern that matches the whole family.
    """

    __slots__ = ("payload", "template")
    payload: type[T]
    #: the family's template (``camera.{camera}.frame``), also on a concrete topic from ``at``
    template: str

    def __new__(cls, name: str, payload: type[T], *, template: str | None = None) -> Topic[T]:
        self = super().__new__(cls, name)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "template", name if template is None else template)
        return self

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"Topic {str(self)!r} is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (str(self), self.payload, self.template))

    def at(self, **parts: str) -> Topic[T]:
        """The concrete topic of this family, e.g. ``camera.front.frame``."""
        return Topic(str(self).format(**parts), self.payload, template=self.template)

    def pattern(self, **parts: str) -> Topic[T]:
        """The subscription pattern: each placeholder not given in ``parts`` becomes ``*``
        (still typed: a subscription to it gets this family's payload)."""
        out = []
        for seg in str(self).split("."):
            if seg.startswith("{") and seg.endswith("}"):
                out.append(parts.get(seg[1:-1], "*"))
            else:
                out.append(seg)
        return Topic(".".join(out), self.payload, template=self.template)

    @property
    def has_placeholders(self) -> bool:
        return "{" in self

    @property
    def name(self) -> Topic[T]:
        """This topic, checked to have no placeholders (publish on it as it is)."""
        if "{" in self:
            raise ValueError(f"topic {str(self)!r} has placeholders: use .at(...)")
        return self


def _rebuild(name: str, payload: type[T], template: str) -> Topic[T]:
    return Topic(name, payload, template=template)


FRAME = Topic("camera.{camera}.frame", Frame)
MOTION = Topic("process.motion.detected", MotionEvent)
OBJECTS = Topic("process.object.detected", DetectionEvent)
EVENT = Topic("event.{kind}.{phase}", EventNotice)
#: media apart from events: no wildcard on one family catches the other
ARTIFACT = Topic("media.{artifact}.ready", MediaArtifact)
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
CAMERA_HEALTH = Topic("health.{camera}.{phase}", CameraHealthNotice)
#: questions to the event index (its only owner answers; ``spyoncino.helpers.requests``)
INDEX_EVENTS = Topic("storage.index.events", EventsQuery)
INDEX_EVENT = Topic("storage.index.event", EventLookup)
INDEX_EVENTS_REPLY = Topic("storage.index.events.reply", EventsPage)
INDEX_LABELS = Topic("storage.index.labels", LabelsQuery)
INDEX_LABELS_REPLY = Topic("storage.index.labels.reply", LabelsReply)
INDEX_COUNTS = Topic("storage.index.counts", DayCountsQuery)
INDEX_COUNTS_REPLY = Topic("storage.index.counts.reply", DayCountsReply)
#: retention removed files: the index forgets their rows
MEDIA_REMOVED = Topic("storage.media.removed", MediaRemoved)

#: every topic family above, for checks and docs (``family_of``)
ALL: tuple[Topic[Any], ...] = (
    FRAME,
    MOTION,
    OBJECTS,
    EVENT,
    ARTIFACT,
    STORED,
    RETENTION,
    STORAGE_FAULT,
    NOTIFY,
    HEALTH,
    BUS_STATUS,
    CONFIG_UPDATE,
    CONFIG_SNAPSHOT,
    CONFIG_REJECTED,
    CONTROL,
    CONTROL_STATE,
    CAMERA_HEALTH,
    INDEX_EVENTS,
    INDEX_EVENT,
    INDEX_EVENTS_REPLY,
    INDEX_LABELS,
    INDEX_LABELS_REPLY,
    INDEX_COUNTS,
    INDEX_COUNTS_REPLY,
    MEDIA_REMOVED,
)


def _matches(template: str, name: str) -> bool:
    ts, ns = template.split("."), name.split(".")
    return len(ts) == len(ns) and all(
        (t.startswith("{") and t.endswith("}")) or t == n for t, n in zip(ts, ns, strict=True)
    )


def families_of(name: str) -> tuple[Topic[Any], ...]:
    """The families in ``ALL`` a concrete topic name belongs to (one, once namespaces
    do not overlap; none for a third party's own topic)."""
    return tuple(t for t in ALL if _matches(t.template, name))
