"""Artifacts written to storage: snapshots, thumbnails, GIFs, clips."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spyoncino.schemas.base import Payload

ArtifactKind = Literal["snapshot", "snapshot_clean", "thumbnail", "gif", "clip"]


class MediaArtifact(Payload):
    """Published on ``event.<kind>.ready`` once the file is fsynced and renamed into place."""

    event_id: str
    camera_id: str
    kind: ArtifactKind
    path: str = Field(description="absolute path of the file")
    relpath: str = Field(description="path relative to the storage root")
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    mime: str
    created_at: float
    duration_s: float | None = Field(default=None, ge=0.0)
    width: int | None = None
    height: int | None = None
    event_offset_s: float | None = Field(
        default=None,
        ge=0.0,
        description="a clip: seconds from its first picture to the event's start (the "
        "pre-roll actually kept, from a keyframe); the animation is cut from there",
    )


class StoredEvent(Payload):
    """Published on ``storage.event.saved`` when the index has recorded an event change."""

    event_id: str
    camera_id: str
    phase: str
    artifacts: tuple[str, ...] = ()


class RetentionReport(Payload):
    """Published on ``storage.retention`` after each retention pass."""

    removed_files: int = Field(ge=0)
    removed_bytes: int = Field(ge=0)
    by_kind: dict[str, int] = Field(default_factory=dict)
    free_percent: float
    reason: Literal["age", "space", "none", "age+space"]


class StorageFault(Payload):
    """Published on ``storage.fault`` when a storage writer could not write (disk full, I/O
    error); retention answers with an emergency pass. Published again with ``writable=True``
    once the writer caught up."""

    module: str
    path: str
    error: str = Field(max_length=500)
    writable: bool = False
