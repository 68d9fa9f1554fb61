"""Hardware profile detection from real device-tree model strings."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from spyoncino.platform.profiles import (
    ProfileError,
    detect_profile,
    load_profiles,
    main,
    profile_report,
    profiles_dir,
)

REPO = Path(__file__).resolve().parents[2]

# what /proc/device-tree/model holds on these boards (NUL-terminated there)
BOARDS = {
    "Raspberry Pi Zero 2 W Rev 1.0": "pi-zero-2w",
    "Raspberry Pi 3 Model B Plus Rev 1.3": "pi-3b-plus",
    "Raspberry Pi 3 Model B Rev 1.2": "pi-3b-plus",
    "Raspberry Pi 4 Model B Rev 1.5": "pi-4",
    "Raspberry Pi 400 Rev 1.0": "pi-4",
    "Raspberry Pi Compute Module 4 Rev 1.0": "pi-4",
    "Raspberry Pi 5 Model B Rev 1.0": "pi-5",
    "NVIDIA Jetson Orin Nano Developer Kit": "jetson-orin-nano",
    "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super": "jetson-orin-nano",
}


def test_every_packaged_profile_loads_and_is_complete() -> None:
    profiles = load_profiles()
    assert set(profiles) == {
        "pi-zero-2w",
        "pi-3b-plus",
        "pi-4",
        "pi-5",
        "jetson-orin-nano",
        "generic-x86",
    }
    assert profiles["jetson-orin-nano"].service.pip_extras == ("jetson",)
    assert not profiles["jetson-orin-nano"].service.picamera2
    assert profiles["pi-4"].service.picamera2


def test_every_profile_names_a_model_that_ships() -> None:
    from spyoncino.modules.process._detector_config import BUNDLED_MODEL
    from spyoncino.modules.process._models import resolve_model_path
    from spyoncino.platform.profiles import BUNDLED_MODEL_FILE

    assert BUNDLED_MODEL_FILE == BUNDLED_MODEL
    for name, profile in load_profiles().items():
        assert profile.detector.model.startswith("spyoncino:models/"), name
        assert resolve_model_path(profile.detector.model).is_file(), (name, profile.detector.model)
    assert load_profiles()["pi-4"].detector.model.endswith(BUNDLED_MODEL)


def test_hardware_profiles_in_the_repository_are_the_packaged_ones() -> None:
    assert (REPO / "hardware" / "profiles").resolve() == profiles_dir().resolve()


@pytest.mark.parametrize(("model", "expected"), sorted(BOARDS.items()))
def test_device_tree_model_picks_the_board(tmp_path: Path, model: str, expected: str) -> None:
    dt = tmp_path / "model"
    dt.write_bytes(model.encode() + b"\x00")
    profile, reason = detect_profile(dt)
    assert profile.name == expected
    assert model in reason


def test_unknown_arm_board_gets_the_frugal_profile(tmp_path: Path) -> None:
    dt = tmp_path / "model"
    dt.write_bytes(b"Radxa ROCK 5B\x00")
    profile, reason = detect_profile(dt, machine="aarch64")
    assert profile.name == "pi-zero-2w"
    assert "matches no profile" in reason


def test_no_device_tree_uses_the_architecture(tmp_path: Path) -> None:
    profile, reason = detect_profile(tmp_path / "absent", machine="x86_64")
    assert profile.name == "generic-x86"
    assert "x86_64" in reason
    profile, reason = detect_profile(tmp_path / "absent", machine="riscv64")
    assert profile.name == "generic-x86"
    assert "has no profile" in reason


def test_override_by_name_by_file_and_bad_override(tmp_path: Path) -> None:
    profile, reason = detect_profile(tmp_path / "absent", override="pi-5")
    assert profile.name == "pi-5"
    assert "configuration" in reason
    custom = tmp_path / "mine.yaml"
    text = (profiles_dir() / "pi-4.yaml").read_text().replace("name: pi-4", "name: mine")
    custom.write_text(text.replace("memory_max: 50%", "memory_max: 700M"))
    profile, _ = detect_profile(tmp_path / "absent", override=custom)
    assert profile.service.memory_max == "700M"
    with pytest.raises(ProfileError, match="neither a known profile"):
        detect_profile(tmp_path / "absent", override="pi-9")
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("memory_max: 50%", "memory_max: lots"))
    with pytest.raises(ProfileError, match=r"broken\.yaml: service\.memory_max"):
        detect_profile(tmp_path / "absent", override=broken)


def test_profile_report_says_which_and_why(tmp_path: Path) -> None:
    dt = tmp_path / "model"
    dt.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    lines = profile_report(dt)
    assert lines[0].startswith("hardware profile: pi-4")
    assert "Raspberry Pi 4 Model B Rev 1.4" in lines[1]
    assert any("MemoryMax=50%" in line for line in lines)
    assert any(
        "model spyoncino:models/coco_nanodet_m_416_int8.tflite (the default)" in line
        for line in lines
    )
    dt.write_bytes(b"Raspberry Pi Zero 2 W Rev 1.0\x00")
    (detector,) = [line for line in profile_report(dt) if "detector:" in line]
    assert "person_ssdlite_mobilenet_v2_int8.tflite (this profile's default" in detector
    assert profile_report(dt, override="nope")[0].startswith("hardware profile: ERROR")


def test_json_cli_is_what_ansible_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dt = tmp_path / "model"
    dt.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    assert main(["--model-file", str(dt), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["profile"] == "pi-5"
    assert data["service"]["memory_max"] == "50%"
    assert main(["--profile", "nope"]) == 2
    out = subprocess.run(
        [sys.executable, "-m", "spyoncino.platform.profiles", "--profile", "pi-4"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "hardware profile: pi-4" in out


def test_the_wheel_contains_the_profiles(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build the wheel here: {built.stderr[-300:]}")
    wheel = next(tmp_path.glob("spyoncino-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in load_profiles():
        assert f"spyoncino/data/profiles/{name}.yaml" in names
