"""The media folder's layout: what a file under the storage root is, from its name and place.

``<root>/<camera>/<YYYY-MM-DD>/<event-id>[.<variant>].<ext>``; temp files (``.*.part``) and
hidden folders (scratch, spool) are not media. The index rebuild (``storage/index``) and
retention (``storage/media``) both read the folder through this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from spyoncino.helpers.files import TEMP_SUFFIX

DAY = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")

#: file name ending -> (artifact kind, mime). Longest endings first.
KINDS: tuple[tuple[str, str, str], ...] = (
    (".clean.jpg", "snapshot_clean", "image/jpeg"),
    (".thumb.jpg", "thumbnail", "image/jpeg"),
    (".jpg", "snapshot", "image/jpeg"),
    (".gif", "gif", "image/gif"),
    (".anim.mp4", "gif", "video/mp4"),  # the gif module's MP4 animation (gif.format: mp4)
    (".mp4", "clip", "video/mp4"),
)


@dataclass(frozen=True, slots=True)
class MediaFile:
    """One finished media file found under the storage root."""

    path: Path
    relpath: str
    camera_id: str
    event_id: str
    kind: str
    mime: str


def classify(root: Path, path: Path) -> MediaFile | None:
    """What ``path`` is, from its name and place; None for anything that is not our media."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) != 3 or not DAY.match(parts[1]):
        return None
    name = parts[2]
    if name.startswith(".") or name.endswith(TEMP_SUFFIX):
        return None
    for ending, kind, mime in KINDS:
        if name.endswith(ending) and len(name) > len(ending):
            return MediaFile(path, rel.as_posix(), parts[0], name[: -len(ending)], kind, mime)
    return None


def scan(root: Path) -> list[MediaFile]:
    """Every finished media file under ``root`` (hidden folders such as scratch skipped)."""
    out: list[MediaFile] = []
    if not root.is_dir():
        return out
    for cam in sorted(root.iterdir()):
        if not cam.is_dir() or cam.name.startswith("."):
            continue
        for day in sorted(cam.iterdir()):
            if not day.is_dir() or not DAY.match(day.name):
                continue
            for f in sorted(day.iterdir()):
                if f.is_file():
                    m = classify(root, f)
                    if m is not None:
                        out.append(m)
    return out


__all__ = ["KINDS", "MediaFile", "classify", "scan"]
