"""The rendered systemd unit: `systemd-analyze verify` is silent, the sandbox scores <= 2.5.

`verify` exits 0 on most problems and only warns, so the test reads its stderr. The unit is
rendered with the same template and defaults Ansible and the image builder use.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RENDER = REPO / "ansible" / "render_template.py"
MAX_EXPOSURE = 2.5

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd)",
)


def render(tmp_path: Path, *overrides: str) -> Path:
    """The unit, with ExecStart pointing at a stand-in executable so verify can check it."""
    pytest.importorskip("jinja2", reason="jinja2 (comes with ansible-core) renders the template")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    exe = venv / "bin" / "spyoncino"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    text = subprocess.run(
        [
            sys.executable,
            str(RENDER),
            "spyoncino.service.j2",
            "--set",
            f"spyoncino_venv={venv}",
            *[a for o in overrides for a in ("--set", o)],
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    unit = tmp_path / "spyoncino.service"
    unit.write_text(text)
    return unit


def exposure(unit: Path) -> tuple[float, str]:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    text = out.stdout + out.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", text)
    assert m, text
    return float(m.group(1)), text


def test_unit_has_the_promised_settings(tmp_path: Path) -> None:
    text = render(tmp_path).read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "Restart=on-failure",
        "RestartSec=5",
        "User=spyoncino",
        "StateDirectory=spyoncino",
        "ConfigurationDirectory=spyoncino",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "DevicePolicy=closed",
        "DeviceAllow=char-video4linux rw",
        "DeviceAllow=/dev/vchiq rw",
        "CapabilityBoundingSet=",
        "MemoryMax=50%",
    ):
        assert line in text.splitlines(), line
    assert re.search(r"^StartLimitIntervalSec=\d+$", text, re.M)
    assert re.search(r"^StartLimitBurst=\d+$", text, re.M)
    assert "--config /etc/spyoncino/config.yaml" in text


def test_systemd_analyze_verify_has_nothing_to_say(tmp_path: Path) -> None:
    unit = render(tmp_path)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("spyoncino_memory_max=700M", "spyoncino_memory_deny_write_execute=false"),
    ],
    ids=["defaults", "jetson-like"],
)
def test_sandbox_exposure_is_at_most_2_5(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    value, report = exposure(render(tmp_path, *overrides))
    assert value <= MAX_EXPOSURE, report
    print(f"exposure {value} with {overrides or 'defaults'}")
