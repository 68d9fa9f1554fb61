"""A box killed before any one of the SQLite statements of its start, then started again.

The first start of this release on an older release's file does the most to it: a backup and
the index's migration, closing the events a crash left open, the reindex of the media folder,
then the outbox's own file and the adoption of the old ``outbox`` table. A child process goes
through those steps (the functions the index and the outbox call at start, in their order)
once to count the statements, then, for every k, forks a copy that SIGKILLs itself just
before the k-th statement, and starts again normally on what the kill left. Each of those
starts must succeed and leave every old alert in the outbox's file once, still pending if it
was, the old table gone and both files intact.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, os, shutil, signal, sqlite3, sys
from pathlib import Path
from spyoncino.helpers.outbox import outbox_path
from spyoncino.helpers.outbox.store import open_db
from spyoncino.modules.storage.index import queries
from spyoncino.modules.storage.index.db import connect
from spyoncino.modules.storage.index.reindex import reindex_into
from spyoncino.modules.storage.index.schema import current_version

template, work = Path(sys.argv[1]), Path(sys.argv[2])
db = work / "events.sqlite3"
real_connect = sqlite3.connect


def start():
    # storage/index/module.py EventIndex.start, then helpers/outbox Outbox.start
    conn = connect(db)
    conn.execute("UPDATE events SET ended_at = updated_at, phase = 'ended' WHERE ended_at IS NULL")
    reindex_into(conn, work)
    reader = queries.connect_ro(db)
    outbox = open_db(outbox_path(db), legacy=db)
    for c in (conn, reader, outbox):
        c.close()


def traced(callback):
    def connect_traced(*args, **kwargs):
        c = real_connect(*args, **kwargs)
        c.set_trace_callback(callback)
        return c
    return connect_traced


def fresh():
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template, work)


def left():
    ob = real_connect(outbox_path(db))
    ix = real_connect(db)
    try:
        return {
            "outbox": sorted(ob.execute("SELECT key, status FROM outbox").fetchall()),
            "outbox_ok": ob.execute("PRAGMA integrity_check").fetchone()[0],
            "index_ok": ix.execute("PRAGMA integrity_check").fetchone()[0],
            "old_table": ix.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE name='outbox'").fetchone()[0],
            "version": ix.execute("PRAGMA user_version").fetchone()[0],
            "open": ix.execute("SELECT COUNT(*) FROM events WHERE ended_at IS NULL").fetchone()[0],
            "artifacts": ix.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0],
        }
    finally:
        ob.close()
        ix.close()


count = [0]
fresh()
sqlite3.connect = traced(lambda sql: count.__setitem__(0, count[0] + 1))
start()
sqlite3.connect = real_connect
points = []
for k in range(1, count[0] + 1):
    fresh()
    pid = os.fork()
    if pid == 0:
        seen = [0]

        def kill_at(sql):
            seen[0] += 1
            if seen[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)

        sqlite3.connect = traced(kill_at)
        start()
        os._exit(3)  # not killed: the k-th statement never came
    _, status = os.waitpid(pid, 0)
    point = {"k": k, "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL}
    try:
        start()
    except Exception as e:
        point["error"] = repr(e)
    else:
        point.update(left())
    points.append(point)
print(json.dumps({"statements": count[0], "current": current_version(), "points": points}))
"""

#: the event database as a release before the outbox's own file left it, one schema version
#: behind (so the first start backs it up and migrates it), with alerts still to send
OLD_ROWS = [(f"telegram:ev-{i}:snapshot:1", "pending" if i % 2 else "sent") for i in range(12)]


def _old_box(root: Path) -> None:
    from tests.helpers.test_outbox_own_file import OLD_LAYOUT

    day = root / "street" / "2026-01-02"
    day.mkdir(parents=True)
    (day / "20260102T030405-abc123.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 64)
    conn = sqlite3.connect(root / "events.sqlite3")
    try:
        conn.executescript(OLD_LAYOUT)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO events(id, camera_id, kind, started_at, updated_at, phase) "
            "VALUES ('ev-open', 'street', 'object', 1.0, 2.0, 'updated')"
        )
        conn.executemany(
            "INSERT INTO outbox(channel, recipient, key, event_id, camera_id, kind, payload, "
            "created_at, status, next_at) VALUES ('telegram', '1', ?, 'ev', 'street', "
            "'snapshot', '{}', 1.0, ?, 0)",
            OLD_ROWS,
        )
        conn.commit()
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_killed_before_any_statement_of_a_first_start_the_next_start_works(
    tmp_path: Path,
) -> None:
    template = tmp_path / "old"
    _old_box(template)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the copies go to memory where there is a tmpfs: a SIGKILL loses nothing the kernel
    # has, so the disk's fsyncs (54 starts' worth) would only make the test slow
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if os.access(shm, os.W_OK) else tmp_path) as work:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(template), str(Path(work) / "box")],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    # the start touches both files: the migration, the reindex and the adoption are in there
    assert report["statements"] > len(OLD_ROWS)
    expect = sorted([k, s] for k, s in OLD_ROWS)
    bad = []
    for p in report["points"]:
        fine = (
            p["killed"]
            and "error" not in p
            and [r for r in p["outbox"] if r[0].startswith("telegram:ev-")] == expect
            and p["outbox_ok"] == p["index_ok"] == "ok"
            and p["old_table"] == 0
            and p["version"] == report["current"]
            and p["open"] == 0
            and p["artifacts"] == 1
        )
        if not fine:
            bad.append(p)
    assert bad == [], f"{len(bad)} of {report['statements']} kill points: {bad[:3]}"
