"""Crash safety: a writer of clips and index rows killed with SIGKILL at random moments.

The child uses the real write path: the clip recorder's encoder and muxer into a scratch
folder, ``atomic_move`` into ``<root>/<camera>/<day>/``, then the index helpers in a WAL
transaction. Afterwards every file the index references must decode, no temp file may be
referenced, SQLite must be intact and ``reindex`` must restore the rows the kills lost.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import av

from spyoncino.helpers.files import clean_temp_files
from spyoncino.helpers.media_layout import scan
from spyoncino.modules.storage.index.reindex import reindex

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys, time, secrets
from pathlib import Path
import numpy as np
from spyoncino.helpers.files import atomic_move, media_relpath
from spyoncino.modules.storage.index.db import connect, upsert_artifact, upsert_event
from spyoncino.helpers.packets import cut_decodable
from spyoncino.modules.event.clip import Config, _Session, encode_into, mux_mp4, open_encoder
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact

root = Path(sys.argv[1])
scratch = root / ".scratch"
scratch.mkdir(parents=True, exist_ok=True)
conn = connect(root / "events.sqlite3")
cfg = Config(fps=10)
print("ready", flush=True)
n = 0
while True:
    n += 1
    eid = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    s = _Session(codec=open_encoder("libx264", cfg, (160, 120)), encoder="libx264", size=(160, 120))
    for i in range(20):
        img = np.full((180, 160), (i * 10 + n) % 256, np.uint8)
        encode_into(s, img, 100.0 + i / 10)
    tmp = scratch / f".{eid}.{secrets.token_hex(4)}.mp4"
    duration = mux_mp4(cut_decodable(s.packets, 0, 10**9), (160, 120), 10, tmp)
    rel = media_relpath("cam", time.time(), eid, "mp4")
    size = tmp.stat().st_size
    digest = atomic_move(tmp, root / rel)
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    upsert_event(conn, EventNotice(event_id=eid, camera_id="cam", kind="object", phase="ended",
        labels=("person",), top_score=0.9, started_at=now, updated_at=now, ended_at=now))
    upsert_artifact(conn, MediaArtifact(event_id=eid, camera_id="cam", kind="clip",
        path=str(root / rel), relpath=rel, size_bytes=size, sha256=digest, mime="video/mp4",
        created_at=now, duration_s=duration))
    conn.execute("COMMIT")
"""


def decodes(path: Path) -> bool:
    try:
        with av.open(str(path)) as c:
            return sum(1 for _ in c.decode(video=0)) == 20
    except av.FFmpegError:
        return False


def test_sigkill_at_random_moments_loses_nothing_referenced(tmp_path: Path) -> None:
    root = tmp_path / "media"
    rng = random.Random(5)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    for _ in range(50):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        # the index's log lines (structlog prints to stdout until configured: the first
        # connect migrates a new file to this code's schema) come before the child's "ready"
        for line in child.stdout:
            if line.strip() == b"ready":
                break
        else:
            raise AssertionError("the writer exited before it was ready")
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert time.monotonic() - t0 < 90

    db = root / "events.sqlite3"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = conn.execute("SELECT relpath FROM artifacts").fetchall()
    assert len(rows) >= 20  # the writer got somewhere between kills
    for (rel,) in rows:
        name = Path(rel).name
        assert not name.startswith(".")
        assert not name.endswith(".part")
        assert decodes(root / rel), rel
    conn.close()

    # what a restart does: clean leftovers, then rebuild what the kills lost
    leftovers = list(root.rglob("*.part")) + list((root / ".scratch").iterdir())
    clean_temp_files(root)
    for p in (root / ".scratch").iterdir():
        p.unlink()
    files = {m.relpath for m in scan(root)}
    restored = reindex(root, db)
    conn = sqlite3.connect(db)
    indexed = {r for (r,) in conn.execute("SELECT relpath FROM artifacts")}
    assert indexed == files
    assert restored == 2 * len(files - {r for (r,) in rows})  # an event and an artifact each
    assert all(decodes(root / rel) for rel in files)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    print(f"{len(rows)} rows survived, {restored} restored, {len(leftovers)} leftovers cleaned")
