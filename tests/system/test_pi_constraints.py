"""A Raspberry Pi OS venv that sees apt's picamera2 resolves to numpy 1 with our constraints.

pip resolves the wheel's dependencies for a Pi (aarch64, CPython 3.11, the manylinux tags
ai-edge-litert uses) against the package index, with and without
``spyoncino/data/constraints/picamera2.txt``: without it pip picks numpy 2, which breaks apt's
simplejpeg and so picamera2 (raspberrypi/picamera2#1088); with it every dependency still
resolves, on numpy 1.x and an OpenCV that accepts it. Needs the package index (CI has it),
so it runs with ``make test-system``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "spyoncino" / "data" / "constraints" / "picamera2.txt"
#: pip's target for a Pi on Bookworm (64-bit); test_arm64_imports downloads with it too
PI = [
    "--only-binary=:all:",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    # every tag Bookworm's glibc 2.36 runs: PyAV >= 17 is published for manylinux_2_28 only
    *[a for n in range(36, 16, -1) for a in ("--platform", f"manylinux_2_{n}_aarch64")],
    *("--platform", "manylinux2014_aarch64"),
]


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600
    )


def _resolve(tmp_path: Path, wheel: Path, *extra: str) -> dict[str, str]:
    report = tmp_path / f"report{len(extra)}.json"
    out = _pip(
        "install",
        "--dry-run",
        "--quiet",
        "--ignore-installed",
        "--report",
        str(report),
        "--target",
        str(tmp_path / "target"),
        "--find-links",
        str(wheel.parent),
        *PI,
        *extra,
        str(wheel),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    items = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in items}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    built = _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO))
    assert built.returncode == 0, built.stderr[-2000:]
    # sdnotify is published as an sdist only; a Pi would build the same pure-Python wheel
    sd = _pip("wheel", "-q", "--no-deps", "-w", str(dist), "sdnotify")
    assert sd.returncode == 0, sd.stderr[-2000:]
    (found,) = dist.glob("spyoncino-*.whl")
    return found


def _major(version: str) -> tuple[int, int]:
    major, minor, *_ = version.split(".")
    return int(major), int(minor)


def test_without_constraints_pip_brings_numpy_2(tmp_path: Path, wheel: Path) -> None:
    resolved = _resolve(tmp_path, wheel)
    assert _major(resolved["numpy"]) >= (2, 0), resolved  # what breaks apt's simplejpeg


def test_with_the_constraints_a_pi_venv_stays_on_numpy_1(tmp_path: Path, wheel: Path) -> None:
    resolved = _resolve(tmp_path, wheel, "-c", str(CONSTRAINTS))
    assert _major(resolved["numpy"]) < (2, 0), resolved
    assert _major(resolved["opencv-python-headless"]) < (4, 12), resolved
    for needed in ("ai-edge-litert", "av", "aiogram", "pydantic", "sdnotify"):
        assert needed in resolved, sorted(resolved)
