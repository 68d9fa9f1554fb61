"""Rebuilding the index from the media folder."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from spyoncino.helpers.media_layout import classify, scan
from spyoncino.modules.storage.index.db import connect, upsert_event
from spyoncino.modules.storage.index.reindex import reindex
from spyoncino.schemas.events import EventNotice


def touch(root: Path, rel: str, data: bytes = b"x") -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_classify_names() -> None:
    root = Path("/m")
    m = classify(root, root / "cam/2026-01-02/20260102T101010-abcdef.clean.jpg")
    assert m is not None
    assert (m.camera_id, m.event_id, m.kind, m.mime) == (
        "cam",
        "20260102T101010-abcdef",
        "snapshot_clean",
        "image/jpeg",
    )
    assert classify(root, root / "cam/2026-01-02/e.thumb.jpg").kind == "thumbnail"  # type: ignore[union-attr]
    assert classify(root, root / "cam/2026-01-02/e.mp4").kind == "clip"  # type: ignore[union-attr]
    assert classify(root, root / "cam/2026-01-02/.e.mp4.ab12.part") is None
    assert classify(root, root / "cam/notaday/e.mp4") is None
    assert classify(root, root / "events.sqlite3") is None


def test_reindex_restores_missing_rows_and_drops_dangling_ones(tmp_path: Path) -> None:
    root = tmp_path
    touch(root, "cam/2026-01-02/20260102T101010-abcdef.jpg")
    touch(root, "cam/2026-01-02/20260102T101010-abcdef.gif")
    touch(root, "yard/2026-01-03/manual-r1.jpg")
    touch(root, "yard/2026-01-03/.x.jpg.1234.part")
    touch(root, ".scratch/.e.mp4")
    db = root / "events.sqlite3"
    conn = connect(db)
    upsert_event(
        conn,
        EventNotice(
            event_id="20260102T101010-abcdef",
            camera_id="cam",
            kind="object",
            phase="ended",
            labels=("person",),
            top_score=0.9,
            started_at=5.0,
            updated_at=6.0,
            ended_at=7.0,
        ),
    )
    conn.execute(
        "INSERT INTO artifacts VALUES ('gone', 'clip', 'cam/2026-01-01/gone.mp4', 1, ?, "
        "'video/mp4', 1.0, 1.0, 2, 2)",
        ("0" * 64,),
    )
    conn.close()
    assert reindex(root, db) == 4  # one event row (manual) and three artifacts
    conn = sqlite3.connect(db)
    rows = sorted(conn.execute("SELECT event_id, kind, relpath FROM artifacts"))
    assert rows == [
        ("20260102T101010-abcdef", "gif", "cam/2026-01-02/20260102T101010-abcdef.gif"),
        ("20260102T101010-abcdef", "snapshot", "cam/2026-01-02/20260102T101010-abcdef.jpg"),
        ("manual-r1", "snapshot", "yard/2026-01-03/manual-r1.jpg"),
    ]
    # the existing event row keeps what only the live index knew
    assert conn.execute(
        "SELECT labels, started_at FROM events WHERE id='20260102T101010-abcdef'"
    ).fetchone() == ('["person"]', 5.0)
    assert conn.execute("SELECT kind FROM events WHERE id='manual-r1'").fetchone() == ("manual",)
    assert reindex(root, db) == 0  # idempotent
    assert len(scan(root)) == 3


def test_event_start_comes_from_the_id(tmp_path: Path) -> None:
    touch(tmp_path, "cam/2026-01-02/20260102T101010-abcdef.jpg")
    db = tmp_path / "i.sqlite3"
    reindex(tmp_path, db)
    (started,) = sqlite3.connect(db).execute("SELECT started_at FROM events").fetchone()
    assert started == time.mktime(time.strptime("20260102T101010", "%Y%m%dT%H%M%S"))


def test_an_mp4_animation_is_the_gif_artifact_not_a_second_clip(tmp_path: Path) -> None:
    folder = tmp_path / "cam" / "2026-12-01"
    folder.mkdir(parents=True)
    anim, clip = folder / "ev1.anim.mp4", folder / "ev1.mp4"
    for p in (anim, clip):
        p.write_bytes(b"x")
    got_anim, got_clip = classify(tmp_path, anim), classify(tmp_path, clip)
    assert got_anim is not None and got_clip is not None
    assert (got_anim.kind, got_anim.mime, got_anim.event_id) == ("gif", "video/mp4", "ev1")
    assert (got_clip.kind, got_clip.event_id) == ("clip", "ev1")
