"""Boot a Debian root filesystem with systemd as PID 1 in systemd-nspawn, and reach inside.

Shared by the real-systemd tests (test_nspawn.py, test_updates.py). ``build()`` runs
``build_rootfs.sh`` (cached root filesystem, wheel, offline wheelhouse); ``Container.boot()``
starts the container with a private network (loopback only), and ``run()`` enters its
namespaces. A container can be powered off cleanly, killed like a power cut, and booted again
on the same root filesystem.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tests" / "system" / "build_rootfs.sh"
JOURNAL = ["journalctl", "-b", "--no-pager", "-o", "short-monotonic"]
ENV = [
    "env",
    "-i",
    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "ANSIBLE_NOCOLOR=1",
    "ANSIBLE_FORCE_COLOR=0",
]


def build() -> dict[str, str]:
    out = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise AssertionError(f"build_rootfs.sh failed:\n{out.stderr[-3000:]}")
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def playbook_failure(out: subprocess.CompletedProcess[str]) -> str:
    """The failed task of an ansible-playbook run, or its tail."""
    text = out.stdout
    m = re.search(
        r"TASK \[[^\n]*\n(?:(?!TASK \[).)*?fatal:.*?(?=\nTASK \[|\nPLAY RECAP)", text, re.S
    )
    return (m.group(0) if m else text[-4000:]) + out.stderr[-2000:]


class Container:
    def __init__(self, root: Path, binds: Sequence[str] = ()) -> None:
        self.root = root
        self.binds = list(binds)
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        self.boots = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def boot(self, timeout: float = 90) -> float:
        """Start the container and wait until systemd says running (or degraded)."""
        t0 = time.monotonic()
        self.boots += 1
        log = (self.root.parent / f"console-{self.boots}.log").open("wb")
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "-D",
                str(self.root),
                "-b",
                "--console=pipe",
                *[f"--bind-ro={b}" for b in self.binds],
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.init_pid = self._find_init()
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running").stdout.strip()
            if state in ("running", "degraded"):
                return time.monotonic() - t0
            time.sleep(0.5)
        raise AssertionError(
            f"boot {self.boots} did not finish in {timeout} s ({state})\n" + self.diagnose()
        )

    def diagnose(self) -> str:
        """What systemd is waiting for, what failed, and the update units' journal."""
        parts = []
        for argv in (
            ["systemctl", "list-jobs", "--no-pager"],
            ["systemctl", "--failed", "--no-pager"],
            [*JOURNAL, "-u", "spyoncino-update-boot", "-u", "spyoncino-update", "-u", "spyoncino"],
        ):
            out = self.run(*argv, timeout=60)
            parts.append(f"$ {' '.join(argv)}\n{(out.stdout + out.stderr)[-4000:]}")
        console = self.root.parent / f"console-{self.boots}.log"
        if console.exists():
            parts.append("console:\n" + console.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def _find_init(self) -> int:
        """PID (host view) of the container's systemd: nspawn's child process."""
        assert self.nspawn is not None
        pid = self.nspawn.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited with {self.nspawn.returncode}")
            pids = children.read_text().split() if children.exists() else []
            # nspawn's first child is a short-lived helper that forks the container's PID 1:
            # wait for systemd itself (taking the helper made every later nsenter fail)
            for child in pids:
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return int(child)
            time.sleep(0.2)
        raise AssertionError("the container's init did not appear")

    def poweroff(self) -> None:
        """A clean shutdown (nspawn asks the container's systemd to power off)."""
        if self.nspawn is None:
            return
        self.nspawn.terminate()
        try:
            self.nspawn.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
        self.nspawn = None

    def kill(self) -> None:
        """A power cut: every process of the container dies at once, nothing shuts down.

        SIGKILL to the container's PID 1 makes the kernel kill its whole PID namespace. (Not
        the cgroup: with --keep-unit on a host without systemd, containers of other tests
        may share it.) The root is a host folder, so unsynced writes survive in the page
        cache: what this tests is the updater's states, not the filesystem's journal.
        """
        if self.nspawn is None:
            return
        os.kill(self.nspawn.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init_pid, signal.SIGKILL)
        self.nspawn.wait(timeout=30)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{self.init_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.nspawn = None

    # -- inside ------------------------------------------------------------------------------
    def run(
        self, *argv: str, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "--", *ENV]
        out = subprocess.run(
            [*cmd, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{argv} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def spawn(self, *argv: str) -> subprocess.Popen[str]:
        cmd = ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "--", *ENV]
        return subprocess.Popen(
            [*cmd, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def show(self, *props: str, unit: str = "spyoncino") -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *[f"--property={p}" for p in props])
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def playbook(
        self, *extra: str, ansible: str = "/srv/ansible"
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "ansible-playbook",
            "-i",
            "/srv/test/inventory.ini",
            "-e",
            "@/srv/test/vars.yml",
            *extra,
            f"{ansible}/provision.yml",
            timeout=900,
        )

    def journal(self, unit: str = "spyoncino") -> str:
        return self.run("journalctl", "-u", unit, "--no-pager", "-o", "cat").stdout

    def wait(self, what: str, predicate: Callable[[], object], timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if predicate():
                return time.monotonic() - t0
            time.sleep(0.5)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}\n{self.journal()[-3000:]}"
        )
