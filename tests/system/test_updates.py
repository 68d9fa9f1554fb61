"""Over-the-air updates on real systemd: good and bad releases, a schema rollback, faults.

A Debian container (systemd-nspawn, private network) is provisioned with the role from
release 0.1.0; a static PEP 503 index of the releases (tests/system/releases.py) and of the
dependency wheelhouse is served inside it on 127.0.0.1:8099, so pip installs every slot from
an index exactly as a box would. Then, on the booted box:

* ``--check``: "already up to date" (exit 0), "newer version available" (10), index
  unreachable (4); nothing changes;
* a good update asked for by the unprivileged service (request file -> spyoncino-update.path
  -> the root unit): 0.1.1 runs after probation, the status page API says so, events go on;
* releases that crash at start, never become ready, fail selftest, or come with a wrong
  sha256: the box stays on 0.1.1, the version is marked bad, the owner is told
  (result.json, ``spyoncino update status``), no event or media file is lost;
* 0.2.0 migrates the database; a forced rollback to 0.1.1 restores the backup and re-indexes
  what 0.2.0 recorded: no event missing;
* the updater SIGKILLed, and the container powered off or killed, at random moments of an
  update: each time a fresh boot runs a good version and ``/health/ready`` answers.
  ``SPYONCINO_FAULT_KILLS`` / ``SPYONCINO_FAULT_POWEROFFS`` set the counts (CI: 3 and 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import nspawn, releases

pytestmark = [
    pytest.mark.system,
    # the first test also pays for the box fixture (releases built cold, boot, first role run),
    # which takes minutes on a cold CI machine with the image build beside it; tests that need
    # longer say so below
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for systemd-nspawn"),
    pytest.mark.skipif(
        shutil.which("systemd-nspawn") is None or shutil.which("mmdebstrap") is None,
        reason="needs systemd-nspawn and mmdebstrap (apt-get install systemd-container mmdebstrap)",
    ),
]

PROBATION_S = 15
PORT = 8099
INDEX = f"http://127.0.0.1:{PORT}/index/simple"
HEALTH = "http://127.0.0.1:8080/health/ready"
TOKEN = "update-test-token-0123456789"
UPDATER = ["/usr/bin/python3", "/opt/spyoncino/bin/spyoncino-update"]
KILLS = int(os.environ.get("SPYONCINO_FAULT_KILLS", "3"))
POWEROFFS = int(os.environ.get("SPYONCINO_FAULT_POWEROFFS", "2"))
SEED = int(os.environ.get("SPYONCINO_FAULT_SEED", str(int(time.time()))))


class Box(nspawn.Container):
    index: Path
    releases: Path
    wheelhouse: Path
    memo: Path
    #: how long a good update takes (measured by the good-update test; this if it did not run)
    update_s: float = 45.0

    def publish(self, *versions: str) -> None:
        releases.write_index(self.index, self.releases, self.wheelhouse, list(versions), self.memo)

    def serve_index(self) -> None:
        self.run(
            "systemd-run",
            "--unit=test-index",
            "--property=Restart=always",
            "/usr/bin/python3",
            "-m",
            "http.server",
            str(PORT),
            "--bind",
            "127.0.0.1",
            "--directory",
            "/srv",
            check=True,
        )
        self.wait("the test index", lambda: self.curl(f"{INDEX}/spyoncino/").returncode == 0, 30)

    def curl(self, url: str, *headers: str) -> subprocess.CompletedProcess[str]:
        args = [a for h in headers for a in ("-H", h)]
        return self.run("curl", "-fsS", "-m", "5", *args, url, timeout=30)

    def updater(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return self.run(*UPDATER, *args, timeout=timeout)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``spyoncino update ...`` as an owner types it (it hands over to the updater)."""
        return self.run("/opt/spyoncino/current/bin/spyoncino", "update", *args, timeout=900)

    def status(self) -> dict[str, object]:
        out = self.updater("--json", "status", timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def api_version(self) -> str:
        out = self.curl("http://127.0.0.1:8080/api/status", f"Authorization: Bearer {TOKEN}")
        assert out.returncode == 0, out.stderr
        return str(json.loads(out.stdout)["system"]["version"])

    def healthy(self) -> bool:
        return self.curl(HEALTH).returncode == 0

    def wait_ready(self, timeout: float = 120) -> float:
        return self.wait("/health/ready 200", self.healthy, timeout)

    def events(self) -> set[str]:
        code = (
            "import sqlite3; c = sqlite3.connect('/var/lib/spyoncino/events.sqlite3', timeout=10)\n"
            "print('\\n'.join(r[0] for r in c.execute('SELECT id FROM events')))"
        )
        out = self.run("python3", "-c", code, check=True)
        return set(out.stdout.split())

    def media(self) -> set[str]:
        out = self.run("find", "/var/lib/spyoncino", "-path", "*/20*-*-*/*", "-type", "f")
        return {p for p in out.stdout.split() if not Path(p).name.startswith(".")}

    def events_with_media(self) -> set[str]:
        return {Path(p).name.split(".")[0] for p in self.media()}

    def user_version(self) -> int:
        code = (
            "import sqlite3; c = sqlite3.connect('/var/lib/spyoncino/events.sqlite3')\n"
            "print(c.execute('PRAGMA user_version').fetchone()[0])"
        )
        return int(self.run("python3", "-c", code, check=True).stdout)

    def result(self) -> dict[str, object]:
        out = self.run("cat", "/var/lib/spyoncino/update/result.json")
        return json.loads(out.stdout) if out.returncode == 0 else {}  # type: ignore[no-any-return]


def _vars(version: str) -> str:
    return f"""---
spyoncino_version: "{version}"
spyoncino_install_from: wheel
spyoncino_wheel_file: /srv/releases/spyoncino-{version}-py3-none-any.whl
# dependencies come from the test's own index on 127.0.0.1, as on a box with a private index
spyoncino_pip_index_url: {INDEX}
spyoncino_apt_update_cache: false
spyoncino_ffmpeg: false
spyoncino_watchdog_sec: 10
spyoncino_update_probation: {PROBATION_S}
# how long a new version may take to say READY (the never-ready release waits for it)
spyoncino_timeout_start_sec: 30
spyoncino_health_url: {HEALTH}
spyoncino_secrets:
  status_page:
    api_token: {TOKEN}
spyoncino_cameras:
  demo:
    source: "spyoncino:sample.mp4"
    file:
      loop: true
"""


@pytest.fixture(scope="module")
def box(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    if "system" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("boots a container for several minutes: run `make test-system`")
    built = nspawn.build()
    wheelhouse = Path(built["WHEELHOUSE"])
    cache = Path(built["ROOTFS"]).parent
    rel, took = releases.build(cache, wheelhouse)
    print(f"release wheels: {'cached' if not took else f'built in {took:.0f} s'}")
    base = tmp_path_factory.mktemp("updates")
    root = base / "rootfs"
    subprocess.run(["cp", "-a", "--reflink=auto", built["ROOTFS"], str(root)], check=True)
    test = root / "srv" / "test"
    test.mkdir(parents=True)
    (test / "inventory.ini").write_text(
        "[spyoncino]\nlocalhost ansible_connection=local ansible_become=false "
        "ansible_python_interpreter=/usr/bin/python3\n"
    )
    (test / "vars.yml").write_text(_vars("0.1.0"))
    index = base / "index"
    b = Box(
        root,
        [
            f"{nspawn.REPO / 'ansible'}:/srv/ansible",
            f"{wheelhouse}:/srv/wheelhouse",
            f"{rel}:/srv/releases",
            f"{index}:/srv/index",
        ],
    )
    b.index, b.releases, b.wheelhouse, b.memo = index, rel, wheelhouse, cache / "sha256.json"
    b.publish("0.1.0")
    try:
        b.boot()
        b.serve_index()
        t0 = time.monotonic()
        first = b.playbook()
        assert first.returncode == 0, nspawn.playbook_failure(first)
        print(f"first install through the updater (role run): {time.monotonic() - t0:.0f} s")
        yield b
    finally:
        b.poweroff()
        shutil.rmtree(root, ignore_errors=True)


# -- in the order a box lives through them -----------------------------------------------------
def test_first_install_is_a_good_slot(box: Box) -> None:
    status = box.status()
    assert (status["current"], status["version"]) == ("a", "0.1.0"), status
    assert status["slots"]["a"]["good"] is True  # type: ignore[index]
    # the release's lock covers the container: every dependency was checked against it
    assert status["slots"]["a"]["hashes"] == "release lock (--require-hashes)", status  # type: ignore[index]
    assert box.run("readlink", "/opt/spyoncino/current").stdout.strip() == "slots/a"
    assert box.run("readlink", "/opt/spyoncino/venv").stdout.strip() == "current"
    assert box.api_version() == "0.1.0"
    for unit in ("spyoncino-update-boot.service", "spyoncino-update.path"):
        assert box.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled", unit
    scores = {}
    for unit in ("spyoncino", "spyoncino-update.service"):
        out = box.run("systemd-analyze", "security", "--no-pager", unit).stdout
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        assert m, out
        scores[unit] = float(m.group(1))
    assert scores["spyoncino"] <= 2.5, scores
    print(f"exposure: {scores}; slot build: {status['slots']['a'].get('build_s')} s")  # type: ignore[index]


def test_check_says_plainly_and_changes_nothing(box: Box) -> None:
    state = box.run("cat", "/var/lib/spyoncino-update/state.json").stdout
    same = box.cli("--check")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "already up to date (0.1.0)" in same.stdout
    down = box.cli("--check", "--index-url", "http://127.0.0.1:9/simple")
    assert down.returncode == 4, down.stdout
    assert "unreachable" in down.stdout
    box.publish("0.1.0", "0.1.1")
    newer = box.cli("--check")
    assert newer.returncode == 10, newer.stdout
    assert "newer version available: 0.1.1 (running 0.1.0)" in newer.stdout
    assert box.run("cat", "/var/lib/spyoncino-update/state.json").stdout == state
    assert box.status()["version"] == "0.1.0"
    print(f"--check: {same.stdout.strip()!r} / {down.stdout.strip()!r} / {newer.stdout.strip()!r}")


@pytest.mark.timeout(600)
def test_good_update_asked_for_by_the_service(box: Box) -> None:
    box.publish("0.1.0", "0.1.1")
    events, media = box.events(), box.media()
    t0 = time.time()
    # the unprivileged service's side: a request file in its state folder, nothing more
    ask = box.run(
        "runuser",
        "-u",
        "spyoncino",
        "--",
        "python3",
        "-c",
        "import json; open('/var/lib/spyoncino/update/request.json', 'w')"
        ".write(json.dumps({'action': 'update'}))",
    )
    assert ask.returncode == 0, ask.stderr
    box.wait(
        "the update's result",
        lambda: float(box.result().get("at", 0)) > t0,  # type: ignore[arg-type]
        timeout=600,
    )
    result = box.result()
    box.update_s = float(result["at"]) - t0  # type: ignore[arg-type]
    assert result["outcome"] == "updated", result
    assert result["message"] == "updated 0.1.0 -> 0.1.1: passed probation"
    assert box.api_version() == "0.1.1"
    status = box.status()
    assert (status["current"], status["version"]) == ("b", "0.1.1")
    assert status["slots"]["b"]["hashes"] == "release lock (--require-hashes)"  # type: ignore[index]
    assert "passed probation" in box.journal("spyoncino-update")
    assert box.run("test", "-e", "/var/lib/spyoncino/update/request.json").returncode != 0
    assert events <= box.events() and media <= box.media()
    box.wait("a new event under 0.1.1", lambda: box.events() - events, timeout=180)
    print(
        f"good update via the request file: {box.update_s:.0f} s "
        f"(slot build {status['slots']['b'].get('build_s')} s, probation {PROBATION_S} s)"
    )  # type: ignore[index]


@pytest.mark.parametrize(
    ("version", "code", "said"),
    [
        ("0.1.2", 6, "the service failed to start"),
        ("0.1.3", 6, "did not become ready"),
        ("0.1.4", 5, "selftest failed"),
        ("0.1.5", 7, "does not match"),
    ],
    ids=["crashes-at-start", "never-ready", "selftest-fails", "wrong-sha256"],
)
def test_bad_release_leaves_the_box_on_the_good_one(
    box: Box, version: str, code: int, said: str
) -> None:
    box.publish(*releases.RELEASES)
    events, media = box.events(), box.media()
    t0 = time.monotonic()
    out = box.cli("--version", version)
    took = time.monotonic() - t0
    assert out.returncode == code, out.stdout + out.stderr
    assert said in out.stdout, out.stdout
    assert "updated" not in out.stdout.split("spyoncino-update:")[-1]
    box.wait_ready(60)
    assert box.api_version() == "0.1.1"
    status = box.status()
    assert status["version"] == "0.1.1" and version in status["bad"], status  # type: ignore[operator]
    told = box.result()
    assert told["version"] == version and told["running"] == "0.1.1", told
    assert said in str(told["message"])
    assert events <= box.events() and media <= box.media()
    again = box.cli("--version", version)
    assert again.returncode == 12 and "not retried" in again.stdout, again.stdout
    print(
        f"{version} ({releases.RELEASES[version]}): exit {code} after {took:.0f} s: "
        f"{told['message']}"
    )


@pytest.mark.timeout(600)
def test_schema_migration_then_forced_rollback_loses_no_event(box: Box) -> None:
    box.publish(*releases.RELEASES)
    before = box.events()
    was = box.api_version()  # 0.1.1 after the tests above, 0.1.0 when run alone
    out = box.cli("--version", "0.2.0")
    assert out.returncode == 0, out.stdout + out.stderr
    box.wait_ready()
    assert box.api_version() == "0.2.0"
    assert box.user_version() == releases.NEXT_SCHEMA
    backup = f"/var/lib/spyoncino/events.sqlite3.schema{releases.NEXT_SCHEMA - 1}.bak"
    assert box.run("test", "-f", backup).returncode == 0, f"no backup {backup}"
    with_media = box.events_with_media()
    box.wait(
        "an event with media recorded under 0.2.0",
        lambda: box.events_with_media() - with_media - before,
        timeout=180,
    )
    recorded = box.events_with_media() & box.events()
    back = box.cli("rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"rolled back 0.2.0 -> {was}" in back.stdout
    box.wait_ready()
    assert box.api_version() == was
    assert box.user_version() == releases.NEXT_SCHEMA - 1
    after = box.events()
    missing = recorded - after
    assert not missing, f"events missing after the rollback: {sorted(missing)}"
    assert before <= after
    print(f"migration + rollback: {len(recorded)} events with media, none missing")


def _descendants(pid: int) -> list[int]:
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out += [int(child), *_descendants(int(child))]
    return out


def _fresh_boot_runs_a_good_version(box: Box) -> str:
    box.boot(timeout=180)
    box.serve_index()
    box.wait_ready(180)
    status = box.status()
    slot = str(status["current"])
    assert status["slots"][slot]["good"] is True, status  # type: ignore[index]
    assert status["pending"] is None, status
    assert box.api_version() == status["version"]
    return str(status["version"])


def _target(box: Box) -> str:
    return "0.1.6" if box.status()["version"] != "0.1.6" else "0.1.1"


@pytest.mark.timeout(240 + 150 * KILLS)
def test_updater_killed_at_random_moments(box: Box) -> None:
    rng = random.Random(SEED)
    box.publish(*releases.RELEASES)
    recovered, log = 0, []
    for i in range(KILLS):
        target = _target(box)
        moment = rng.uniform(0, box.update_s)
        nsenter = box.spawn(*UPDATER, "--version", target)
        time.sleep(moment)  # the fault's moment, drawn at random: not a synchronisation
        pids = _descendants(nsenter.pid)
        if pids:  # env execs python: the first descendant is the updater itself
            os.kill(pids[0], signal.SIGKILL)
        box.poweroff()  # its children (pip, systemctl) die with the container
        nsenter.wait(timeout=60)
        assert nsenter.stdout is not None
        tail = nsenter.stdout.read().strip().splitlines()[-1:]
        version = _fresh_boot_runs_a_good_version(box)
        recovered += 1
        log.append(f"kill {i + 1} at {moment:.1f} s -> {version} ({tail})")
        print(log[-1], flush=True)
    print(f"updater SIGKILLed: {recovered}/{KILLS} recovered (seed {SEED})")
    assert recovered == KILLS


@pytest.mark.timeout(240 + 150 * POWEROFFS)
def test_container_powered_off_or_killed_at_random_moments(box: Box) -> None:
    rng = random.Random(SEED + 1)
    box.publish(*releases.RELEASES)
    recovered, log = 0, []
    for i in range(POWEROFFS):
        target = _target(box)
        moment = rng.uniform(0, box.update_s)
        nsenter = box.spawn(*UPDATER, "--version", target)
        time.sleep(moment)
        how = "poweroff" if i % 2 == 0 else "power cut"
        box.poweroff() if how == "poweroff" else box.kill()
        with contextlib.suppress(ProcessLookupError):
            nsenter.kill()
        nsenter.wait(timeout=30)
        version = _fresh_boot_runs_a_good_version(box)
        recovered += 1
        log.append(f"{how} {i + 1} at {moment:.1f} s -> {version}")
        print(log[-1], flush=True)
    print(f"container powered off / killed: {recovered}/{POWEROFFS} recovered (seed {SEED})")
    assert recovered == POWEROFFS
