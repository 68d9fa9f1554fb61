"""Fixtures for camera-input tests: a real RTSP server on loopback and an input harness."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from spyoncino.core.bus import Bus, Message
from spyoncino.core.clock import Clock
from spyoncino.core.config import build_app_model
from spyoncino.core.contracts import BaseModule, BoundedExecutor, ModuleContext
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Frame
from tests.support.wait import Log, until

REPO = Path(__file__).resolve().parents[3]
SHARED_CLIP = REPO.parent / "shared" / "media" / "vtest.mp4"
SAMPLE_CLIP = REPO / "spyoncino" / "data" / "sample.mp4"
SERVER_SCRIPT = REPO / "tests" / "support" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def clip() -> Path:
    """The 768x576 10 fps H.264 footage: ../shared's when present, else the packaged cut."""
    return SHARED_CLIP if SHARED_CLIP.is_file() else SAMPLE_CLIP


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gst_rtsp_missing() -> str | None:
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (the RTSP test server runs on the system Python)"
    probe = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0'); "
            "from gi.repository import GstRtspServer",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return (
            "GStreamer RTSP server via python3-gi is missing (apt install python3-gi "
            "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-good "
            "gstreamer1.0-plugins-bad): " + probe.stderr.strip().splitlines()[-1:][0]
            if probe.stderr.strip()
            else "GstRtspServer import failed"
        )
    return None


@dataclass
class RtspServer:
    """A GStreamer RTSP server process serving ``clip`` at ``rtsp://127.0.0.1:<port><path>``."""

    clip: Path
    port: int = field(default_factory=free_port)
    path: str = "/cam"
    user: str | None = None
    password: str | None = None
    #: more mount points on the same port: path -> file (a main stream and its sub-stream)
    mounts: dict[str, Path] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None

    def url(
        self, path: str | None = None, user: str | None = None, password: str | None = None
    ) -> str:
        creds = f"{user}:{password}@" if user is not None else ""
        return f"rtsp://{creds}127.0.0.1:{self.port}{path or self.path}"

    def start(self) -> None:
        argv = [
            SYSTEM_PYTHON,
            str(SERVER_SCRIPT),
            "--file",
            str(self.clip),
            "--port",
            str(self.port),
            "--path",
            self.path,
        ]
        if self.user is not None:
            argv += ["--user", self.user, "--password", self.password or ""]
        for path, file in self.mounts.items():
            argv += ["--mount", f"{path}={file}"]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(("READY", "ERROR")) or self.proc.poll() is not None:
                break
        if not line.startswith("READY"):
            self.kill()
            raise RuntimeError(f"RTSP test server did not start: {line.strip()!r}")

    def kill(self) -> None:
        """SIGKILL: the way a camera losing power looks from our side (connection reset)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def gst_rtsp() -> None:
    reason = _gst_rtsp_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def rtsp_server(gst_rtsp: None) -> Iterator[Callable[..., RtspServer]]:
    """Factory: ``rtsp_server(user=..., password=...)`` starts a server; all die at teardown."""
    servers: list[RtspServer] = []

    def make(**kwargs: Any) -> RtspServer:
        server = RtspServer(clip=clip(), **kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        with contextlib.suppress(Exception):
            s.thaw()
        s.kill()


@dataclass
class Harness:
    """A camera input wired to a real bus, recording every frame it publishes."""

    module: Any
    bus: Bus
    executor: BoundedExecutor
    frames: Log[tuple[float, Frame]] = field(default_factory=Log)

    async def wait_frames(self, n: int, timeout: float) -> None:
        try:
            await self.frames.wait_for(n, timeout=timeout)
        except AssertionError:
            raise AssertionError(
                f"got {len(self.frames)} of {n} frames in {timeout}s; "
                f"health={self.module.health()!r}"
            ) from None

    async def wait_state(self, states: tuple[str, ...], timeout: float) -> float:
        """Seconds until the camera's state is one of ``states`` (polled: module state)."""
        t0 = time.monotonic()
        await until(
            lambda: self.module.cam_state in states,
            timeout,
            f"camera in {states} (health={self.module.health()!r})",
            interval=0.02,
        )
        return time.monotonic() - t0


@pytest.fixture
async def camera_input() -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await camera_input(Cls, source, name, options={...}, camera={...})``."""
    made: list[Harness] = []

    async def make(
        cls: type[BaseModule],
        source: str,
        name: str,
        *,
        options: dict[str, Any] | None = None,
        camera: dict[str, Any] | None = None,
        section: dict[str, Any] | None = None,
        runtime: dict[str, Any] | None = None,
        start: bool = True,
        clock: Clock | None = None,
    ) -> Harness:
        cls.name = name
        model = build_app_model({name: cls})
        cam: dict[str, Any] = {"source": source, **(camera or {})}
        if options is not None:
            cam[name] = options
        app = model.model_validate(
            {"cameras": {"cam": cam}, name: section or {}, "runtime": runtime or {}}
        )
        bus = Bus(status_interval=0)
        executor = BoundedExecutor(workers=2)
        ctx = ModuleContext(
            bus=bus, executor=executor, app=app, instance=f"{name}:cam", camera_id="cam"
        )
        if clock is not None:
            ctx.clock = clock
        module = cls(ctx)
        h = Harness(module=module, bus=bus, executor=executor)

        async def record(msg: Message[Frame]) -> None:
            h.frames.append((time.monotonic(), msg.payload))

        bus.subscribe(topics.FRAME.at(camera="cam"), record, policy="block", maxsize=10_000)
        await module.configure(app)
        if start:
            await module.start()
        made.append(h)
        return h

    yield make
    for h in made:
        await h.module.stop()
        await h.bus.close()
        h.executor.shutdown()
