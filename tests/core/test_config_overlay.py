"""Changes accepted at run time (status page, Telegram, API) survive a restart."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spyoncino.core.config import AppConfig, ConfigService, build_app_model, save_overlay
from spyoncino.core.orchestrator import discover
from tests.integration.test_run_demo import run_cli

MODEL = build_app_model(discover())


def load(tmp_path: Path, environ: dict[str, str] | None = None) -> ConfigService:
    cfg = tmp_path / "config.yaml"
    if not cfg.exists():
        cfg.write_text(
            f"cameras:\n  yard:\n    source: spyoncino:sample.mp4\nstorage:\n  root: {tmp_path}\n"
        )
    return ConfigService.load(MODEL, config_path=cfg, environ=environ or {}, overlay_path="auto")


async def accept(_old: AppConfig, _new: AppConfig) -> list[str]:
    return ["motion"]


async def refuse(_old: AppConfig, _new: AppConfig) -> list[str]:
    raise ValueError("motion refused the change")


async def test_an_accepted_change_is_there_after_a_restart(tmp_path: Path) -> None:
    first = load(tmp_path)
    result = await first.apply_changes({"motion": {"threshold": 41}}, accept)
    assert result.ok, result.errors
    assert result.warnings == ()
    again = load(tmp_path)
    assert again.current.motion.threshold == 41  # type: ignore[attr-defined]
    assert any("saved changes" in label for label in again.sources)
    # a second change adds to the first instead of replacing it
    await again.apply_changes({"motion": {"min_area": 0.01}}, accept)
    third = load(tmp_path)
    assert third.current.motion.threshold == 41  # type: ignore[attr-defined]
    assert third.current.motion.min_area == 0.01  # type: ignore[attr-defined]
    assert (tmp_path / "config.overlay.yaml.bak").is_file()


async def test_a_secret_among_the_changes_is_saved_apart_owner_only(tmp_path: Path) -> None:
    token = "123456:SECRET-token_abcdef"
    changes = {"telegram": {"token": token, "chat_ids": [42]}, "motion": {"threshold": 40}}
    assert (await load(tmp_path).apply_changes(changes, accept)).ok
    overlay = tmp_path / "config.overlay.yaml"
    secrets = tmp_path / "secrets.overlay.yaml"
    assert token not in overlay.read_text()  # check-config --show prints this layer
    assert yaml.safe_load(overlay.read_text())["telegram"] == {"chat_ids": [42]}
    assert yaml.safe_load(secrets.read_text()) == {"telegram": {"token": token}}
    assert secrets.stat().st_mode & 0o777 == 0o600
    again = load(tmp_path)
    assert again.current.telegram.token.get_secret_value() == token  # type: ignore[attr-defined]
    assert again.current.telegram.chat_ids == [42]  # type: ignore[attr-defined]
    assert again.current.motion.threshold == 40  # type: ignore[attr-defined]


async def test_a_refused_change_is_not_saved(tmp_path: Path) -> None:
    service = load(tmp_path)
    result = await service.apply_changes({"motion": {"threshold": 42}}, refuse)
    assert not result.ok
    assert not (tmp_path / "config.overlay.yaml").exists()
    assert load(tmp_path).current.motion.threshold != 42  # type: ignore[attr-defined]


async def test_the_environment_still_wins_over_saved_changes(tmp_path: Path) -> None:
    await load(tmp_path).apply_changes({"motion": {"threshold": 41}}, accept)
    service = load(tmp_path, {"SPYONCINO_MOTION__THRESHOLD": "12"})
    assert service.current.motion.threshold == 12  # type: ignore[attr-defined]


def test_a_broken_overlay_is_set_aside_and_the_box_still_starts(tmp_path: Path) -> None:
    (tmp_path / "config.overlay.yaml").write_text("motion:\n  threshold: 99999\n")
    service = load(tmp_path)
    assert service.overlay_error is not None
    assert "config.overlay.yaml" in service.overlay_error
    assert "motion.threshold" in service.overlay_error
    assert service.current.cameras["yard"].source == "spyoncino:sample.mp4"


async def test_check_config_show_names_the_layer_of_each_value(tmp_path: Path) -> None:
    await load(tmp_path).apply_changes({"motion": {"threshold": 41}}, accept)
    res = run_cli(["check-config", "--config", str(tmp_path / "config.yaml"), "--show"], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert f"motion.threshold: 41  # {tmp_path / 'config.overlay.yaml'} (saved changes)" in lines
    assert f"cameras.yard.source: spyoncino:sample.mp4  # {tmp_path / 'config.yaml'}" in lines
    assert "cameras.yard.enabled: true  # built-in default" in lines


WRITER = """
import sys
from pathlib import Path
from spyoncino.core.config import save_overlay
path = Path(sys.argv[1])
big = {"cameras": {f"cam{i}": {"source": "x" * 200} for i in range(200)}}
i = 0
print("writing", flush=True)
while True:
    i += 1
    save_overlay(path, {"generation": i % 2, **big})
"""


@pytest.mark.parametrize("kill", range(20))
def test_a_kill_during_the_write_leaves_a_whole_file(tmp_path: Path, kill: int) -> None:
    path = tmp_path / "config.overlay.yaml"
    save_overlay(path, {"generation": "first"})
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"writing\n"
    time.sleep(random.Random(kill).uniform(0.0, 0.3))  # a random moment mid-writes
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    data = yaml.safe_load(path.read_text())
    assert data["generation"] in ("first", 0, 1)
    if data["generation"] != "first":
        assert len(data["cameras"]) == 200
