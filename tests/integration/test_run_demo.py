"""``spyoncino run`` on the bundled sample clip, as a user runs it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPYONCINO_")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "spyoncino", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_run_stores_events_and_snapshots(tmp_path: Path) -> None:
    # the embedded default, replayed in lockstep so the test does not wait for real time
    res = run_cli(["run"], tmp_path, {"SPYONCINO_CAMERAS__SAMPLE__FILE__PACE": "lockstep"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Spyoncino run finished" in res.stdout
    root = tmp_path / "var" / "spyoncino"
    assert str(root.resolve()) in res.stdout
    conn = sqlite3.connect(root / "events.sqlite3")
    events = conn.execute("SELECT id, camera_id, phase, ended_at FROM events").fetchall()
    assert events, "no event was indexed"
    # the default 80-class model: the people walking, not the van and car parked in view
    labels = {
        lab for (row,) in conn.execute("SELECT labels FROM events") for lab in json.loads(row)
    }
    assert labels == {"person"}
    assert all(cam == "sample" for _, cam, _, _ in events)
    assert all(phase == "ended" and ended for _, _, phase, ended in events)
    snaps = conn.execute(
        "SELECT event_id, relpath, size_bytes FROM artifacts WHERE kind='snapshot'"
    ).fetchall()
    assert {e for e, _, _ in snaps} >= {e for e, _, _, _ in events}
    for _, relpath, size in snaps:
        path = root / relpath
        assert path.stat().st_size == size
        img = cv2.imread(str(path))
        assert img is not None and img.shape[1] > 0
    assert not list(root.rglob("*.part")), "temp files left behind"
    # a lost index comes back from the media folder
    n_artifacts = conn.execute("SELECT count(*) FROM artifacts").fetchone()[0]
    conn.execute("DELETE FROM artifacts")
    conn.commit()
    conn.close()
    res = run_cli(["storage", "reindex"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "missing row(s) restored" in res.stdout
    conn = sqlite3.connect(root / "events.sqlite3")
    assert conn.execute("SELECT count(*) FROM artifacts").fetchone()[0] == n_artifacts


def test_check_config_reports_every_error_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "cameras:\n  gate:\n    source: rtsp-ish\nmotion:\n  threshold: 999\n  colour: red\n"
    )
    res = run_cli(["check-config", "--config", str(cfg)], tmp_path)
    assert res.returncode == 2
    assert f"{cfg}: motion.threshold" in res.stderr
    assert f"{cfg}: motion.colour: unknown key" in res.stderr


def test_check_config_flags_a_source_no_input_reads(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cameras:\n  gate:\n    source: gopher://u:pw@cam/1\n")
    res = run_cli(["check-config", "--config", str(cfg)], tmp_path)
    assert res.returncode == 2
    assert "cameras.gate.source: no installed input reads" in res.stderr
    assert "pw" not in res.stderr


def test_check_config_flags_missing_files_before_a_run(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"cameras:\n  gate:\n    source: {tmp_path / 'gone.mp4'}\n"
        f"detector:\n  model: {tmp_path / 'm.tflite'}\n"
    )
    res = run_cli(["check-config", "--config", str(cfg)], tmp_path)
    assert res.returncode == 2
    assert f"cameras.gate.source: file '{tmp_path / 'gone.mp4'}' does not exist" in res.stderr
    assert f"detector.model: '{tmp_path / 'm.tflite'}' does not exist" in res.stderr


def test_check_config_warns_when_no_camera_is_configured(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cameras: {}\n")
    res = run_cli(["check-config", "--config", str(cfg)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "warning: no camera is configured" in res.stdout


def test_check_config_show_redacts_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"cameras:\n  a:\n    source: {tmp_path / 'x.mp4'}\nstorage:\n  root: {tmp_path}\n"
    )
    (tmp_path / "x.mp4").write_bytes(b"")
    res = run_cli(["check-config", "--config", str(cfg), "--show"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "configuration is valid" in res.stdout
    assert str(cfg) in res.stdout


def test_schema_writes_config_and_payload_schemas(tmp_path: Path) -> None:
    res = run_cli(["schema", "--out", str(tmp_path / "s")], tmp_path)
    assert res.returncode == 0, res.stderr
    import json

    config = json.loads((tmp_path / "s" / "config.schema.json").read_text())
    assert "cameras" in config["properties"] and "motion" in config["properties"]
    motion = json.loads((tmp_path / "s" / "MotionEvent.schema.json").read_text())
    assert "frame" not in motion["properties"]
    assert motion["properties"]["schema_version"]["default"] == 1
    for name in (
        "DetectionEvent",
        "MediaArtifact",
        "AlertNotification",
        "ConfigUpdate",
        "ConfigSnapshot",
        "ConfigRejected",
        "ControlCommand",
        "HealthReport",
        "BusStatus",
    ):
        assert (tmp_path / "s" / f"{name}.schema.json").is_file()


def test_doctor_and_models_describe_the_box(tmp_path: Path) -> None:
    res = run_cli(["doctor"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "hardware profile:" in res.stdout
    assert "chosen because:" in res.stdout
    assert "camera sample" in res.stdout
    assert "model spyoncino:models/coco_nanodet_m_416_int8.tflite" in res.stdout
    res = run_cli(["models"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "bundled: " in res.stdout and "coco_nanodet_m_416_int8.tflite" in res.stdout
    assert "format nanodet" in res.stdout
    assert "also packaged: spyoncino:models/person_ssdlite_mobilenet_v2_int8.tflite" in res.stdout


def test_run_summary_counts_only_the_cameras_that_ran(tmp_path: Path) -> None:
    from spyoncino.cli.run import format_summary
    from spyoncino.core.config import ConfigService, build_app_model
    from spyoncino.core.orchestrator import RunSummary, discover

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "cameras:\n  yard:\n    source: spyoncino:sample.mp4\n"
        f"  gate:\n    source: {tmp_path / 'gone.mp4'}\nstorage:\n  root: {tmp_path}\n"
    )
    app = ConfigService.load(build_app_model(discover()), config_path=cfg).current
    text = format_summary(RunSummary(), app, 3.0, {"gate": "file 'gone.mp4' does not exist"})
    assert "on 1 camera(s): yard (1 did not start)" in text
    assert "not running    gate: file 'gone.mp4' does not exist" in text
    assert "on 2 camera(s): yard, gate" in format_summary(RunSummary(), app, 3.0)
