"""``spyoncino install-unit``: a board installed by hand with pip gets the role's own unit."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from spyoncino import role_templates
from tests.integration.test_run_demo import run_cli

REPO = Path(__file__).resolve().parents[1]


def test_install_unit_writes_the_roles_unit_for_this_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    res = run_cli(
        [
            "install-unit",
            "--venv",
            str(venv),
            "--unit-dir",
            str(tmp_path / "units"),
            "--config-dir",
            str(tmp_path / "etc"),
            "--set",
            "spyoncino_watchdog_sec=45",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    unit = (tmp_path / "units" / "spyoncino.service").read_text()
    assert f"ExecStart={venv}/bin/spyoncino run --config /etc/spyoncino/config.yaml" in unit
    assert "WatchdogSec=45" in unit
    # the same text Ansible renders from the checkout's role, with the same variables
    role = REPO / "ansible" / "roles" / "spyoncino"
    data = role_templates.variables([f"spyoncino_venv={venv}", "spyoncino_watchdog_sec=45"])
    assert unit == role_templates.render("spyoncino.service.j2", data, role=role)
    config = tmp_path / "etc" / "config.yaml"
    assert "cameras:" in config.read_text()
    assert config.stat().st_mode & 0o777 == 0o640
    assert "systemctl enable --now spyoncino" in res.stdout


def test_install_unit_keeps_an_existing_config(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "config.yaml").write_text("cameras: {mine: {source: /dev/video0}}\n")
    args = ["install-unit", "--unit-dir", str(tmp_path), "--config-dir", str(etc)]
    res = run_cli(args, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "kept" in res.stdout
    assert "mine" in (etc / "config.yaml").read_text()


def test_install_unit_names_a_malformed_variable(tmp_path: Path) -> None:
    res = run_cli(["install-unit", "--print", "--set", "watchdog"], tmp_path)
    assert res.returncode == 2
    assert "expected NAME=VALUE, got 'watchdog'" in res.stderr


def test_the_wheel_carries_the_role_templates(tmp_path: Path) -> None:
    """The unit template travels in the package: no git checkout is needed to render it."""
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("spyoncino-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("spyoncino.service.j2", "config.yaml.j2"):
        assert f"spyoncino/data/role/templates/{name}" in names
    assert "spyoncino/data/role/defaults/main.yml" in names
