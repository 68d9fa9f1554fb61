"""Real systemd: boot Debian in systemd-nspawn, provision it with the Ansible role, break it.

``tests/system/build_rootfs.sh`` prepares (and caches) the root filesystem, the wheel and an
offline wheelhouse. The container boots with systemd as PID 1 and a private network (only
loopback: the install must not need the internet); the role runs *inside* it with a local
connection, so its systemd tasks drive a real service manager. Then:

* the service is active and READY came from the app (``StatusText`` is the app's line);
* the status page answers ``/health/ready`` inside the container (when the wheel has it);
* a second Ansible run changes nothing;
* a blocked event loop (debug hook) and a frozen process (SIGSTOP) both end in
  ``Result=watchdog`` and an automatic restart;
* ``systemctl stop`` finishes within 10 s.

The box is first provisioned with the role as it was before A/B slots (``LEGACY_ROLE``, from
git history: one real virtualenv in /opt/spyoncino/venv), so the role's first run here is the
migration to slots; the tests above then hold for a migrated box.

The unit is the production template with ``WatchdogSec=10`` instead of 30 to keep CI short.
Run with ``make test-system`` (root, systemd-nspawn, mmdebstrap).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import nspawn

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for systemd-nspawn"),
    pytest.mark.skipif(
        shutil.which("systemd-nspawn") is None or shutil.which("mmdebstrap") is None,
        reason="needs systemd-nspawn and mmdebstrap (apt-get install systemd-container mmdebstrap)",
    ),
]

REPO = nspawn.REPO
#: the last role with the single /opt/spyoncino/venv (before A/B slots)
LEGACY_ROLE = "6bcf9d2"
WATCHDOG_SEC = 10
PROBATION_S = 10
HEALTH_URL = "http://127.0.0.1:8080/health/ready"


class Box(nspawn.Container):
    has_status_page: bool = False
    first_run_s: float = 0.0
    legacy: bool = False
    #: ``ansible-playbook --check`` before the first real run, and whether it left a slot
    dry_run: subprocess.CompletedProcess[str] | None = None
    dry_run_made_a_slot: bool = False


def _legacy_role(dest: Path) -> Path | None:
    """The pre-slot role from git history, or None (a shallow clone does not have it)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", LEGACY_ROLE, "ansible"], capture_output=True
    )
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "ansible"


def _wheel_has_status_page(wheel: Path) -> bool:
    with zipfile.ZipFile(wheel) as z:
        eps = next((n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")), None)
        text = z.read(eps).decode() if eps else ""
    return bool(re.search(r"^status_page\s*=", text, re.M))


def _inside(base: Path, wheel: Path, has_status_page: bool) -> None:
    test = base / "srv" / "test"
    test.mkdir(parents=True)
    (test / "inventory.ini").write_text(
        "[spyoncino]\n"
        "localhost ansible_connection=local ansible_become=false "
        "ansible_python_interpreter=/usr/bin/python3\n"
    )
    version = wheel.name.split("-")[1]
    (test / "vars.yml").write_text(
        f"""---
spyoncino_version: "{version}"
spyoncino_install_from: wheel
spyoncino_wheel_file: /srv/dist/{wheel.name}
# offline: dependencies from the wheelhouse the build script filled
spyoncino_pip_find_links: /srv/wheelhouse
spyoncino_pip_no_index: true
# the rootfs has no apt lists and no network; ffmpeg would only add 200 MB to it
spyoncino_apt_update_cache: false
spyoncino_ffmpeg: false
spyoncino_watchdog_sec: {WATCHDOG_SEC}
# the first install goes through the updater's probation too: keep it short here
spyoncino_update_probation: {PROBATION_S}
spyoncino_wait_for_health: {str(has_status_page).lower()}
spyoncino_health_url: {HEALTH_URL}
spyoncino_environment:
  DEBUG_SPYONCINO_HOOKS: "1"
spyoncino_cameras:
  demo:
    source: "spyoncino:sample.mp4"
    file:
      loop: true
"""
    )


@pytest.fixture(scope="module")
def container(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Box]:
    if "system" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("boots a container for ~2 min: run `make test-system` (pytest -m system)")
    built = nspawn.build()
    wheel = Path(built["WHEEL"])
    has_status_page = _wheel_has_status_page(wheel)
    root = tmp_path_factory.mktemp("nspawn") / "rootfs"
    subprocess.run(["cp", "-a", "--reflink=auto", built["ROOTFS"], str(root)], check=True)
    _inside(root, wheel, has_status_page)
    legacy = _legacy_role(root.parent / "legacy")
    box = Box(
        root,
        [
            f"{REPO / 'ansible'}:/srv/ansible",
            f"{built['WHEELHOUSE']}:/srv/wheelhouse",
            f"{wheel.parent}:/srv/dist",
            *([f"{legacy}:/srv/ansible-legacy"] if legacy else []),
        ],
    )
    box.has_status_page = has_status_page
    try:
        box.boot()
        if legacy is not None:
            old = box.playbook(ansible="/srv/ansible-legacy")
            assert old.returncode == 0, nspawn.playbook_failure(old)
            box.legacy = True
        box.dry_run = box.playbook("--check")
        box.dry_run_made_a_slot = box.run("test", "-e", "/opt/spyoncino/current").returncode == 0
        t0 = time.monotonic()
        first = box.playbook()
        box.first_run_s = time.monotonic() - t0
        assert first.returncode == 0, nspawn.playbook_failure(first)
        yield box
    finally:
        box.poweroff()
        shutil.rmtree(root, ignore_errors=True)


# -- tests, in the order a board lives through them ----------------------------------------------
def test_service_is_active_and_ready(container: Box) -> None:
    assert container.run("systemctl", "is-active", "spyoncino").stdout.strip() == "active"
    props = container.show("Type", "StatusText", "WatchdogUSec", "NRestarts", "MainPID", "User")
    assert props["Type"] == "notify"
    assert props["WatchdogUSec"] == f"{WATCHDOG_SEC}s"
    # READY=1 with a STATUS line came from spyoncino's notifier, not from a process start
    assert re.search(r"\d+ events? today", props["StatusText"]), props
    journal = container.journal()
    assert props["NRestarts"] == "0", journal[-6000:]
    assert "systemd_ready" in journal
    print(f"first ansible run: {container.first_run_s:.1f}s; status: {props['StatusText']!r}")


def test_the_old_single_venv_was_migrated_to_slots(container: Box) -> None:
    if not container.legacy:
        pytest.skip(f"no git history with the pre-slot role ({LEGACY_ROLE}): shallow clone?")
    assert container.run("readlink", "/opt/spyoncino/venv").stdout.strip() == "current"
    assert container.run("readlink", "/opt/spyoncino/current").stdout.strip() == "slots/a"
    status = container.run("/usr/bin/python3", "/opt/spyoncino/bin/spyoncino-update", "status")
    assert "slot a: " in status.stdout and " good" in status.stdout, status.stdout
    exe = container.run("systemctl", "show", "spyoncino", "--property=ExecStart").stdout
    assert "/opt/spyoncino/current/bin/spyoncino" in exe
    pid = container.show("MainPID")["MainPID"]
    cmdline = container.run("cat", f"/proc/{pid}/cmdline").stdout.replace("\0", " ")
    assert "/opt/spyoncino/current/bin/" in cmdline or "/slots/a/" in cmdline, cmdline


def test_installed_unit_verifies_and_scores_inside_the_container(container: Box) -> None:
    """The unit as installed (real ExecStart, real user): verify is silent, exposure <= 2.5."""
    unit = "/etc/systemd/system/spyoncino.service"
    verify = container.run("systemd-analyze", "verify", unit)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr
    security = container.run("systemd-analyze", "security", "--no-pager", "spyoncino")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert m, security.stdout + security.stderr
    assert float(m.group(1)) <= 2.5, security.stdout
    print(f"exposure of the running unit: {m.group(1)}")


def test_health_endpoint_answers_inside_the_container(container: Box) -> None:
    if not container.has_status_page:
        pytest.skip("the wheel has no status_page module yet: READY/active is asserted instead")
    out = container.run("curl", "-fsS", "-m", "5", HEALTH_URL)
    assert out.returncode == 0, out.stderr + container.journal()[-2000:]


def test_second_ansible_run_changes_nothing(container: Box) -> None:
    second = container.playbook()
    assert second.returncode == 0, second.stdout[-4000:]
    recap = re.search(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)", second.stdout)
    assert recap, second.stdout[-2000:]
    assert recap.group(2) == "0", second.stdout[-6000:]


def _restarted_by_watchdog(container: Box, before: int, t_fault: float) -> float:
    container.wait(
        "a watchdog restart",
        lambda: (
            int(container.show("NRestarts").get("NRestarts", "0")) > before
            and container.run("systemctl", "is-active", "spyoncino").stdout.strip() == "active"
        ),
        timeout=WATCHDOG_SEC * 3 + 30,
    )
    journal = container.journal()
    assert "Watchdog timeout" in journal, journal[-3000:]
    assert "Failed with result 'watchdog'" in journal, journal[-3000:]
    return time.monotonic() - t_fault


def _dry_run_report(out: subprocess.CompletedProcess[str]) -> str:
    m = re.search(r'"msg": "(check mode: [^"]*)"', out.stdout)
    assert m, out.stdout[-4000:]
    return m.group(1)


def test_check_mode_before_the_install_probes_for_real_and_installs_nothing(
    container: Box,
) -> None:
    out = container.dry_run
    assert out is not None
    assert out.returncode == 0, nspawn.playbook_failure(out)
    # the apt probe ran (it used to be skipped, so --check decided from nothing)
    probe = re.search(
        r"TASK \[spyoncino : Find out whether apt offers picamera2[^\n]*\n(\w+)", out.stdout
    )
    assert probe and probe.group(1) == "ok", out.stdout[-4000:]
    report = _dry_run_report(out)
    # Debian has no python3-picamera2: the dry run says so and why
    assert "picamera2 from apt: no (apt-cache show python3-picamera2: " in report, report
    assert "No packages found" in report or "Unable to locate" in report, report
    assert "with extras [mqtt]" in report, report
    assert not container.dry_run_made_a_slot  # nothing was installed


def test_check_mode_on_the_installed_box_reports_no_change(container: Box) -> None:
    out = container.playbook("--check")
    assert out.returncode == 0, nspawn.playbook_failure(out)
    recap = re.search(r"changed=(\d+)", out.stdout.split("PLAY RECAP", 1)[-1])
    assert recap and recap.group(1) == "0", out.stdout[-3000:]
    report = _dry_run_report(out)
    assert "running: generic-x86 profile" in report, report


def test_blocked_event_loop_ends_in_a_watchdog_restart(container: Box) -> None:
    props = container.show("MainPID", "NRestarts")
    before = int(props["NRestarts"])
    t0 = time.monotonic()
    # the debug hook (DEBUG_SPYONCINO_HOOKS=1) blocks the event loop on SIGUSR2
    container.run(
        "systemctl", "kill", "--kill-whom=main", "--signal=SIGUSR2", "spyoncino", check=True
    )
    took = _restarted_by_watchdog(container, before, t0)
    assert "watchdog_withheld" in container.journal()  # the thread saw the stale heartbeat
    assert container.show("MainPID")["MainPID"] != props["MainPID"]
    print(f"blocked loop -> restarted and active again after {took:.1f}s")


def test_frozen_process_ends_in_a_watchdog_restart(container: Box) -> None:
    props = container.show("MainPID", "NRestarts")
    before = int(props["NRestarts"])
    t0 = time.monotonic()
    container.run(
        "systemctl", "kill", "--kill-whom=main", "--signal=SIGSTOP", "spyoncino", check=True
    )
    took = _restarted_by_watchdog(container, before, t0)
    assert int(container.show("NRestarts")["NRestarts"]) == before + 1
    print(f"SIGSTOP -> restarted and active again after {took:.1f}s")


def test_stop_finishes_within_10_seconds(container: Box) -> None:
    t0 = time.monotonic()
    container.run("systemctl", "stop", "spyoncino", check=True, timeout=60)
    took = time.monotonic() - t0
    assert container.run("systemctl", "is-active", "spyoncino").stdout.strip() == "inactive"
    assert took < 10, f"systemctl stop took {took:.1f}s"
    assert "STOPPING" in container.journal() or "systemd_stopping" in container.journal()
    print(f"systemctl stop took {took:.1f}s")
