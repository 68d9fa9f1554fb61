"""``spyoncino run`` with an RTSP camera served on loopback: the whole pipeline, as a user runs it.

Module tests run one consumer; a real run has the detector, snapshots, GIFs and clips taking
colour frames on pool threads while the camera thread decodes. Such a run once segfaulted
inside PyAV's converter on the clip thread (3 runs in 3, on a heavily loaded box); the input
now converts with OpenCV on plane views. The crash did not reproduce on demand, so this test
guards the whole path rather than proving that one fix.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.modules.input.conftest import RtspServer, _gst_rtsp_missing, clip

PASSWORD = "Int3gr4tionPw"


@pytest.fixture(scope="module")
def server() -> RtspServer:
    reason = _gst_rtsp_missing()
    if reason:
        pytest.skip(reason)
    srv = RtspServer(clip=clip(), user="viewer", password=PASSWORD)
    srv.start()
    yield srv
    srv.kill()


def test_run_with_an_rtsp_camera_makes_events_and_never_logs_the_password(
    server: RtspServer, tmp_path: Path
) -> None:
    root = tmp_path / "var"
    config = tmp_path / "config.yaml"
    config.write_text(
        "cameras:\n"
        "  street:\n"
        "    source: rtsp://127.0.0.1:1/placeholder\n"  # the secrets file holds the real URL
        f"storage:\n  root: {root}\n"
        "status_page:\n  enabled: false\n"  # a fixed port other tests may hold
        "log:\n  format: json\n"
    )
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(
        f"cameras:\n  street:\n    source: {server.url(user='viewer', password=PASSWORD)}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPYONCINO_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spyoncino",
            "run",
            "--config",
            str(config),
            "--secrets",
            str(secrets),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(20)  # ~2 s to connect, then 18 s of people walking through the scene
    assert proc.poll() is None, f"spyoncino run died: rc={proc.returncode}"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "camera_streaming" in out + err
    assert PASSWORD not in out + err
    assert "viewer:" not in out + err
    conn = sqlite3.connect(root / "events.sqlite3")
    events = conn.execute("SELECT camera_id FROM events").fetchall()
    snaps = conn.execute("SELECT relpath FROM artifacts WHERE kind='snapshot'").fetchall()
    conn.close()
    assert events, "no event from 18 s of pedestrians"
    assert {cam for (cam,) in events} == {"street"}
    assert snaps
    assert all((root / rel).stat().st_size > 0 for (rel,) in snaps)
