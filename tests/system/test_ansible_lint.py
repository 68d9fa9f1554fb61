"""The Ansible playbook and role pass ansible-lint (production profile) and yamllint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"


def tool(name: str) -> str:
    """The tool next to this interpreter (the project's .venv) or on PATH; skip when absent."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install ansible-core ansible-lint yamllint)")
    return found


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1", "ANSIBLE_LOCAL_TEMP": "/tmp"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        argv, cwd=ANSIBLE, capture_output=True, text=True, env=env, check=False, timeout=300
    )


def test_yamllint_passes() -> None:
    out = run([tool("yamllint"), "--strict", "."])
    assert out.returncode == 0, out.stdout + out.stderr


def test_ansible_lint_production_profile_passes() -> None:
    out = run([tool("ansible-lint"), "--profile", "production", "--offline"])
    assert out.returncode == 0, out.stdout + out.stderr


def test_playbook_syntax_check() -> None:
    out = run(
        [tool("ansible-playbook"), "--syntax-check", "-i", "inventory.example.ini", "provision.yml"]
    )
    assert out.returncode == 0, out.stdout + out.stderr
