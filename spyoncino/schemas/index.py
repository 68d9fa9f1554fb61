"""What a module asks the event index, and what it answers (``storage.index.*`` on the bus).

The index module (``spyoncino.modules.storage.index``) is the only owner of the index
database: nobody else opens it. A reader sends one of the requests below with
``spyoncino.helpers.requests.Requester`` and gets the matching reply; a writer that removed
media publishes ``MediaRemoved`` and the index forgets the rows in its next batch.

Every request carries a ``request_id`` (the helper sets it) that its reply repeats; a reply
whose ``error`` is set failed on the owner's side (the helper raises it).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.base import Payload

#: most events one ``EventsQuery`` returns
MAX_EVENTS = 5000


class Request(Payload):
    """A question on the bus; its owner answers with a ``Reply`` of the same ``request_id``."""

    request_id: str = ""


class Reply(Payload):
    """An answer; ``error`` set when the owner could not answer (the requester raises it)."""

    request_id: str = ""
    error: str = ""


class ArtifactRef(Payload):
    """One media file of an event, as the index knows it."""

    kind: str
    relpath: str = Field(description="path relative to the storage root")
    mime: str
    size_bytes: int = 0
    duration_s: float | None = None


class EventRecord(Payload):
    """One activity (an ``events`` row) with its media."""

    id: str
    camera_id: str
    kind: str
    labels: tuple[str, ...] = ()
    top_score: float = 0.0
    zones: tuple[str, ...] = ()
    started_at: float
    updated_at: float
    ended_at: float | None = None
    phase: str
    severity: str = "alert"
    #: the activity's objects: ``{track_id, label, score, zones}`` each
    objects: tuple[dict[str, Any], ...] = ()
    artifacts: tuple[ArtifactRef, ...] = ()


class EventsQuery(Request):
    """Events newest first that match every filter given (``storage.index.events``).

    Time bounds are on ``started_at``: ``after`` <= t < ``before``; a day, a "since 2 h" or the
    next page (``before`` = the oldest ``started_at`` shown) are all said this way.
    """

    camera: str | None = None
    label: str | None = None
    severity: str | None = None
    zone: str | None = None
    after: float | None = None
    before: float | None = None
    limit: int = Field(default=50, ge=1, le=MAX_EVENTS)
    offset: int = Field(default=0, ge=0)
    #: False: no ``artifacts`` (Telegram's list needs none, and it is cheaper)
    with_artifacts: bool = True


class EventLookup(Request):
    """One event by id (``storage.index.event``); the reply holds it or nothing."""

    event_id: str


class EventsPage(Reply):
    """The answer to ``EventsQuery`` and ``EventLookup``."""

    events: tuple[EventRecord, ...] = ()


class LabelsQuery(Request):
    """Every label the index has seen, sorted (``storage.index.labels``)."""

    limit: int = Field(default=200, ge=1, le=10_000)


class LabelsReply(Reply):
    labels: tuple[str, ...] = ()


class DayCountsQuery(Request):
    """How many events started within each ``[start, end)`` span (``storage.index.counts``):
    the requester says where its days begin (its time zone, DST)."""

    days: tuple[tuple[float, float], ...] = Field(default=(), max_length=366)
    camera: str | None = None
    severity: str | None = None


class DayCountsReply(Reply):
    #: one count per span asked, in the same order
    counts: tuple[int, ...] = ()


class MediaRemoved(Payload):
    """Published on ``storage.media.removed`` by retention after it removed files: the index
    forgets their rows (an ended event with no file left goes too) and records ``lost``, the
    copies whose file went before it left the box, as failed notifications."""

    relpaths: tuple[str, ...] = ()
    lost: tuple[AlertNotification, ...] = ()
