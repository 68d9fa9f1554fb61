"""``spyoncino selftest``: what the updater's gate runs in a freshly built slot."""

from __future__ import annotations

from pathlib import Path

import pytest

from spyoncino import cli
from spyoncino.cli import selftest, update


def _config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"storage:\n  root: {tmp_path / 'media'}\ncameras: {{}}\n{extra}")
    return cfg


def test_a_working_install_passes_every_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["selftest", "--config", str(_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    for name in ("imports", "config", "detector", "storage"):
        assert f"ok   {name}:" in out
    assert "ran one inference" in out and out.rstrip().endswith("selftest passed")
    assert not [p for p in (tmp_path / "media").iterdir()]  # the probe file is gone


def test_each_failure_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: selftest.Context) -> str:
        raise RuntimeError("model file is truncated")

    monkeypatch.setattr(selftest, "CHECKS", [*selftest.CHECKS, ("release", broken)])
    bad = _config(tmp_path, "detector:\n  model: /nonexistent/model.tflite\n")
    assert selftest.run(bad) == 1
    out = capsys.readouterr().out
    assert "FAIL detector:" in out and "/nonexistent/model.tflite" in out
    assert "FAIL release: RuntimeError: model file is truncated" in out
    assert "selftest failed (2 check(s))" in out


def test_an_invalid_config_and_a_read_only_storage_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("cameras: {}\nstorage:\n  nonsense_key: 1\n")
    assert selftest.run(cfg) == 1
    assert "FAIL config:" in capsys.readouterr().out


def test_a_module_that_does_not_import_fails_the_imports_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(selftest, "discover", dict)  # as if no entry point loaded
    with pytest.raises(RuntimeError, match="do not import"):
        selftest.check_imports(selftest.Context(None, None))


def test_spyoncino_update_hands_over_to_the_updater(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(update, "UPDATER", tmp_path / "missing")
    monkeypatch.setattr(update.subprocess, "call", lambda argv: calls.append(argv) or 10)
    code = cli.main(["update", "--check", "--version", "0.2.0", "--find-links", "/w", "--pre"])
    assert code == 10
    assert calls[0][1:] == [
        "-m",
        "spyoncino.updater",
        "update",
        "--version",
        "0.2.0",
        "--find-links",
        "/w",
        "--check",
        "--pre",
    ]
    execs: list[tuple[str, list[str]]] = []
    updater = tmp_path / "spyoncino-update"
    updater.write_text("")
    monkeypatch.setattr(update, "UPDATER", updater)
    monkeypatch.setattr(update.os, "execv", lambda exe, argv: execs.append((exe, argv)))
    cli.main(["update", "rollback"])
    assert execs == [("/usr/bin/python3", ["/usr/bin/python3", str(updater), "rollback"])]
