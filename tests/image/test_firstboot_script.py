"""The image's first-boot script on its own (no VM, no root): what it does with the files an
owner leaves on the boot partition. The QEMU boot test (test_boot.py) runs it for real."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = (
    Path(__file__).resolve().parents[2] / "image/files/rootfs/usr/local/sbin/spyoncino-firstboot"
)


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("spyoncino_firstboot", str(SCRIPT))
    spec = importlib.util.spec_from_loader("spyoncino_firstboot", loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["spyoncino_firstboot"] = mod
    loader.exec_module(mod)
    return mod


@pytest.fixture
def fb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The script with its folders in tmp_path and file ownership left alone."""
    mod = _load()
    boot = tmp_path / "boot"
    (boot / "spyoncino").mkdir(parents=True)
    monkeypatch.setattr(mod, "BOOT", boot)
    monkeypatch.setattr(mod, "SETTINGS", boot / "spyoncino")
    monkeypatch.setattr(mod, "ETC", tmp_path / "etc")
    written: dict[str, tuple[str, int]] = {}

    def install(dest: Path, text: str, mode: int, group: str = "spyoncino") -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        written[str(dest)] = (group, mode)

    wifi: list[dict[str, Any]] = []
    monkeypatch.setattr(mod, "install", install)
    monkeypatch.setattr(mod, "write_wifi", wifi.append)
    mod.errors.clear()
    mod.written = written
    mod.wifi = wifi
    mod.tmp = tmp_path
    return mod


def test_a_commented_out_example_changes_nothing_but_still_leaves_the_fat(fb: Any) -> None:
    example = Path(SCRIPT).parents[4] / "boot/spyoncino/secrets.yaml"
    (fb.SETTINGS / "secrets.yaml").write_text(example.read_text())
    assert fb.import_secrets()
    assert not (fb.SETTINGS / "secrets.yaml").exists()
    assert fb.written == {} and fb.wifi == []


def test_secrets_move_to_etc_for_the_service_only_and_wifi_goes_to_wpa_supplicant(fb: Any) -> None:
    (fb.SETTINGS / "secrets.yaml").write_text(
        'telegram:\n  token: "123:abc"\nwifi:\n  ssid: Home\n  password: pw\n  country: it\n'
    )
    assert fb.import_secrets()
    assert not (fb.SETTINGS / "secrets.yaml").exists()
    dest = fb.ETC / "secrets.yaml"
    assert fb.written[str(dest)] == ("spyoncino", 0o640)
    assert "wifi" not in dest.read_text() and "123:abc" in dest.read_text()
    assert fb.wifi == [{"ssid": "Home", "password": "pw", "country": "it"}]


def test_broken_secrets_are_kept_root_only_and_reported_never_left_on_the_fat(fb: Any) -> None:
    (fb.SETTINGS / "secrets.yaml").write_text("telegram: [unclosed\n")
    assert fb.import_secrets()
    assert not (fb.SETTINGS / "secrets.yaml").exists()
    assert fb.written[str(fb.ETC / "secrets.yaml.rejected")] == ("root", 0o600)
    assert str(fb.ETC / "secrets.yaml") not in fb.written
    assert fb.errors and "secrets.yaml is not valid" in fb.errors[0]


def test_a_broken_config_stays_on_the_fat_and_the_previous_one_stays_in_use(fb: Any) -> None:
    (fb.SETTINGS / "config.yaml").write_text("cameras: {front: [\n")
    assert not fb.import_config()
    assert (fb.SETTINGS / "config.yaml").exists()
    assert fb.written == {}
    assert "config.yaml is not valid YAML" in fb.errors[0]


def test_the_config_file_is_moved_as_written_comments_and_all(fb: Any) -> None:
    text = "# my camera\ncameras:\n  front:\n    source: /dev/video0  # the USB one\n"
    (fb.SETTINGS / "config.yaml").write_text(text)
    assert fb.import_config()
    assert not (fb.SETTINGS / "config.yaml").exists()
    assert (fb.ETC / "config.yaml").read_text() == text
    assert fb.written[str(fb.ETC / "config.yaml")] == ("spyoncino", 0o640)


def test_wifi_passwords_are_quoted_and_hashed_psks_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _load()
    out: dict[str, str] = {}
    monkeypatch.setattr(
        mod, "install", lambda dest, text, mode, group="": out.__setitem__("conf", text)
    )
    monkeypatch.setattr(mod, "run", lambda *a, **k: "")
    monkeypatch.setattr(mod, "Path", _redirect(tmp_path))
    mod.write_wifi({"ssid": 'My "Net"', "password": "p@ss word", "country": "it"})
    assert 'ssid="My \\"Net\\""' in out["conf"] and 'psk="p@ss word"' in out["conf"]
    assert "country=IT" in out["conf"]
    psk = "a" * 64
    mod.write_wifi({"ssid": "Net", "password": psk})
    assert f"psk={psk}\n" in out["conf"]


def _redirect(root: Path) -> Any:
    """Path() that puts absolute paths under root (the script writes /etc/... directly)."""

    def make(p: str | Path, *rest: str) -> Path:
        path = Path(p, *rest)
        return root / path.relative_to("/") if path.is_absolute() else path

    return make
