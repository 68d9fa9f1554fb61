"""The LAN status page: overview, events, live view, health, config, a JSON control API,
Prometheus ``/metrics`` and ``/health/{live,ready}``, all on one small aiohttp server.

It only listens to the bus (frames latest-wins, events, artifacts, notifications, health and
bus telemetry, control state) and publishes ``control.command`` and ``config.update``; events
are read from the SQLite index with read-only SELECTs of its own. The HTTP side lives in
``_web`` and ``_views``; this file holds the config, the state and the bus plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from spyoncino import __version__
from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig, dump_config
from spyoncino.core.contracts import (
    BaseModule,
    ModuleConfig,
    ModuleConfigError,
    ModuleContext,
    ModuleNotReady,
)
from spyoncino.helpers.requests import Requester
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.control import (
    CommandName,
    ConfigRejected,
    ConfigSnapshot,
    ConfigUpdate,
    ControlCommand,
    ControlState,
)
from spyoncino.schemas.detections import DetectionEvent, MotionEvent
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.frames import Frame
from spyoncino.schemas.media import MediaArtifact, StoredEvent
from spyoncino.schemas.status import BusStatus, HealthReport, ModuleHealth

from ._auth import LoginLimiter, Sessions, hash_password, valid_hash, verify_password
from ._metrics import Metrics, Reports, camera_of
from ._store import LiveEvents
from ._system import SystemInfo, collect, read_throttled


class Config(ModuleConfig):
    type: Literal["status_page"] = "status_page"
    listen: str = Field(
        default="0.0.0.0:8080",
        description="host:port to serve on (port 0: any free port); 127.0.0.1 keeps it on the box.",
        pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]*):\d{1,5}$",
    )
    password_hash: SecretStr | None = Field(
        default=None,
        description=(
            "scrypt hash from `spyoncino hash-password`. None: a random password is written to "
            "<storage root>/status_page.password (mode 600) at first start."
        ),
    )
    api_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Bearer token for API clients (16+ characters; put it in the secrets file).",
    )
    public_readonly: bool = Field(
        default=False, description="Let anyone on the LAN see read-only pages without logging in."
    )
    metrics_public: bool | None = Field(
        default=None,
        description="Serve /metrics without auth; false: bearer token or login. Default (none): "
        "public only while listening on loopback (the counters name cameras and paths).",
    )
    health_detail_public: bool | None = Field(
        default=None,
        description="Show /health/ready's checks (camera names, storage path) without auth; "
        "anonymous clients otherwise get only the verdict. Default (none): on loopback only.",
    )
    public_url: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^https?://[^\s/@]+(/\S*)?$",
        description="Base URL people reach the page at, for links in alerts (http://box.local:8080).",
    )
    session_ttl_s: float = Field(
        default=7 * 86400.0,
        ge=60.0,
        le=90 * 86400.0,
        description="Idle seconds before a login ends.",
    )
    login_max_failures: int = Field(
        default=5, ge=1, le=100, description="Wrong passwords per client before it is locked out."
    )
    login_window_s: float = Field(
        default=300.0, ge=1.0, le=86400.0, description="Window (s) the failures are counted in."
    )
    refresh_s: float = Field(
        default=3.0,
        ge=0.5,
        le=60.0,
        description="Seconds between snapshot refreshes on the overview.",
    )
    live_fps: float = Field(
        default=2.0, gt=0.0, le=15.0, description="Frame rate of the live MJPEG view."
    )
    max_streams: int = Field(default=8, ge=1, le=64, description="Live views served at once.")
    snapshot_width: int = Field(
        default=640,
        ge=160,
        le=1920,
        description="Width of the card snapshots (live view: full size).",
    )
    jpeg_quality: int = Field(default=75, ge=30, le=95, description="JPEG quality of live images.")
    storage_probe_s: float = Field(
        default=5.0, ge=0.0, le=300.0, description="Seconds a storage write probe result is reused."
    )
    config_timeout_s: float = Field(
        default=10.0, ge=0.5, le=120.0, description="Seconds to wait for a config change verdict."
    )
    cookie_secure: bool = Field(
        default=False, description="Mark cookies Secure (only when served through HTTPS)."
    )
    update_dir: Path = Field(
        default=Path("/var/lib/spyoncino/update"),
        description="Where the A/B updater leaves result.json for the Health page (read only).",
    )
    mdns: bool = Field(default=True, description="Advertise the page as _http._tcp over mDNS.")
    mdns_name: str | None = Field(
        default=None, max_length=60, description="Service name; None: 'Spyoncino on <hostname>'."
    )

    @field_validator("password_hash")
    @classmethod
    def _hash_format(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not valid_hash(v.get_secret_value()):
            raise ValueError("not a scrypt hash (make one with `spyoncino hash-password`)")
        return v

    @field_validator("listen")
    @classmethod
    def _port_range(cls, v: str) -> str:
        if not 0 <= int(v.rsplit(":", 1)[1]) <= 65535:
            raise ValueError("port must be 0..65535")
        return v

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def on_loopback(self) -> bool:
        """Whether only this box can reach the page (127.0.0.0/8, ::1, localhost)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: assume the LAN

    @property
    def metrics_open(self) -> bool:
        return self.on_loopback if self.metrics_public is None else self.metrics_public

    @property
    def health_detail_open(self) -> bool:
        if self.health_detail_public is None:
            return self.on_loopback
        return self.health_detail_public

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


#: how often the live view's boxes are sent per camera and kind (motion, objects)
BOX_RATE_HZ = 5.0
PASSWORD_FILE = "status_page.password"  # noqa: S105 - a file name, not a password
CAMERA_OK = ("streaming", "ended")


@dataclass
class CameraView:
    id: str
    name: str
    state: str
    fps: float | None
    last_frame_age_s: float | None


class StatusPage(BaseModule[Config]):
    """Serves the status page, the control API, /metrics and the health probes."""

    category: ClassVar[Any] = "dashboard"
    Config: ClassVar[type[ModuleConfig]] = Config
    follows_cameras: ClassVar[bool] = True  # frame subscriptions follow in configure

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.app_cfg: AppConfig = ctx.app
        self.reports = Reports()
        self.control: ControlState | None = None
        self.live = LiveEvents()
        #: asks storage/index for events (the page never opens the index itself)
        self.index = Requester(self.bus, ctx.instance)
        self.frames: dict[str, Frame] = {}
        self.jpegs: dict[tuple[str, int], tuple[int, bytes]] = {}
        self._encoding: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self.clients: set[asyncio.Queue[tuple[str, Any] | None]] = set()
        self.streams = 0
        self._verdicts: dict[str, asyncio.Future[ConfigSnapshot | ConfigRejected]] = {}
        self._state_waiters: list[asyncio.Future[ControlState]] = []
        self._snapshot_waiters: dict[str, asyncio.Future[MediaArtifact]] = {}
        self.sessions = Sessions(self.cfg.session_ttl_s)
        self.limiter = LoginLimiter(self.cfg.login_max_failures, self.cfg.login_window_s)
        self.password_hash: str | None = None
        self.prom = Metrics(lambda: self.reports, __version__)
        self.started_mono = time.monotonic()
        self.heartbeat_mono = time.monotonic()
        self._sys: SystemInfo | None = None
        self._sys_mono = 0.0
        self._probe: tuple[float, bool, str] = (0.0, False, "not probed yet")
        self._runner: Any = None
        self._mdns: Any = None
        self.url = ""
        self.port = 0
        self.requests = 0
        self.logins_failed = 0
        #: the first-run page's last test frame (JPEG)
        self.setup_frame: bytes | None = None
        self._frame_subs: dict[str, Any] = {}
        self._boxes_sent: dict[tuple[str, str], float] = {}
        #: the last config.snapshot (redacted); None: the config this module was given
        self.config_in_force: dict[str, Any] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def check(self, app: AppConfig) -> None:
        cfg = self.config_of(app)
        if self._runner is not None and cfg.listen != self.cfg.listen:
            raise ModuleConfigError(
                f"status_page.listen: changing it from {self.cfg.listen!r} to {cfg.listen!r} "
                "needs a restart"
            )

    async def configure(self, app: AppConfig) -> None:
        await self.check(app)  # refuses before anything is adopted
        cfg = self.config_of(app)
        if cfg.password_hash != self.cfg.password_hash:
            self.sessions.clear()  # a new password logs everybody out
        self.cfg = cfg
        self.app_cfg = app
        self.sessions.ttl_s = cfg.session_ttl_s
        if (cfg.login_max_failures, cfg.login_window_s) != (
            self.limiter.max_failures,
            self.limiter.window_s,
        ):
            self.limiter = LoginLimiter(cfg.login_max_failures, cfg.login_window_s)
        if cfg.password_hash is not None:
            self.password_hash = cfg.password_hash.get_secret_value()
        elif self._runner is not None:
            await self._ensure_initial_password()
        if self._runner is not None:
            self._follow_cameras()  # a camera added from the first-run page shows at once

    def _follow_cameras(self) -> None:
        """One latest-wins frame subscription per enabled camera, kept in step with config."""
        wanted = set(self.camera_ids())
        for cam in list(self._frame_subs):
            if cam not in wanted:
                self._frame_subs.pop(cam)()
                self.frames.pop(cam, None)
        for cam in sorted(wanted - set(self._frame_subs)):
            self._frame_subs[cam] = self.bus.subscribe(
                topics.FRAME.at(camera=cam),
                self._on_frame,
                policy="latest",
                module=self.ctx.instance,
            )

    async def start(self) -> None:
        from aiohttp import web

        from ._web import build_app

        if self.password_hash is None:
            await self._ensure_initial_password()
        self._follow_cameras()
        self.index = Requester(self.bus, self.ctx.instance)
        self.subscribe(topics.HEALTH.name, self._on_health, policy="latest")
        self.subscribe(topics.BUS_STATUS.name, self._on_bus, policy="latest")
        self.subscribe(topics.CONTROL_STATE.name, self._on_state, policy="block")
        self.subscribe(topics.CONFIG_SNAPSHOT.name, self._on_verdict, policy="block")
        self.subscribe(topics.CONFIG_REJECTED.name, self._on_verdict, policy="block")
        self.subscribe(topics.MOTION.name, self._on_motion, policy="drop_oldest", maxsize=256)
        self.subscribe(topics.OBJECTS.name, self._on_objects, policy="drop_oldest", maxsize=256)
        for phase in ("started", "updated", "ended"):
            self.subscribe(topics.EVENT.pattern(phase=phase), self._on_event, policy="block")
        self.subscribe(topics.ARTIFACT.pattern(), self._on_artifact, policy="block")
        self.subscribe(topics.STORED.name, self._on_stored, policy="drop_oldest", maxsize=256)
        self.subscribe(topics.NOTIFY.pattern(), self._on_notify, policy="block")

        app = await build_app(self)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.host or None, self.cfg.port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise ModuleNotReady(
                f"status_page.listen: cannot listen on {self.cfg.listen}: {e}"
            ) from e
        self._runner = runner
        self.port = self._bound_port(runner)
        shown = (
            self.cfg.host if self.cfg.host not in ("", "0.0.0.0", "::") else socket.gethostname()
        )
        self.url = f"http://{shown}:{self.port}/"
        self.spawn(self._heartbeat(), "heartbeat")
        self.spawn(self._system_loop(), "system")
        if self.cfg.mdns:
            self.spawn(self._advertise(), "mdns")
        self.set_state("ok", self.url)
        self.log.info("status_page_listening", url=self.url, public_url=self.cfg.public_url)

    @staticmethod
    def _bound_port(runner: Any) -> int:
        for addr in runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                return int(addr[1])
        return 0

    async def stop(self) -> None:
        self.index.close()
        for q in list(self.clients):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        if self._mdns is not None:
            with contextlib.suppress(Exception):
                await self._mdns.stop()
            self._mdns = None
        for unsub in self._frame_subs.values():
            unsub()
        self._frame_subs.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        for verdict in self._verdicts.values():
            verdict.cancel()
        for waiter in self._state_waiters:
            waiter.cancel()
        for shot in self._snapshot_waiters.values():
            shot.cancel()
        self._snapshot_waiters.clear()
        self._verdicts.clear()
        self._state_waiters.clear()
        await super().stop()

    async def _ensure_initial_password(self) -> None:
        path = self.app_cfg.storage.root / PASSWORD_FILE

        def read_or_make() -> str:
            try:
                return path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                pass
            pw = secrets.token_urlsafe(12)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(pw + "\n")
            return pw

        try:
            pw = await self.ctx.executor.run(read_or_make)
        except OSError as e:
            self.log.warning("initial_password_unavailable", path=str(path), error=repr(e))
            return
        self.password_hash = await self.ctx.executor.run(hash_password, pw)
        self.log.warning("status_page_initial_password", path=str(path))

    async def _advertise(self) -> None:
        if self.cfg.host.startswith("127.") or self.cfg.host in ("localhost", "::1"):
            return
        try:
            from ._mdns import Advertiser
        except ImportError:
            self.log.info("mdns_unavailable", reason="install the 'mdns' extra (zeroconf)")
            return
        adv = Advertiser()
        self._mdns = adv
        name = self.cfg.mdns_name or f"Spyoncino on {socket.gethostname().split('.')[0]}"
        try:
            addrs = await adv.start(name, self.cfg.host, self.port)
        except asyncio.CancelledError:
            await adv.stop()  # stopped while announcing: leave no socket behind
            raise
        except ImportError:
            self.log.info("mdns_unavailable", reason="install the 'mdns' extra (zeroconf)")
            return
        except Exception as e:
            self.log.warning("mdns_failed", error=repr(e))
            await adv.stop()
            return
        self.log.info("mdns_advertised", name=name, addresses=addrs, port=self.port)

    async def _heartbeat(self) -> None:
        while True:
            self.heartbeat_mono = time.monotonic()
            await asyncio.sleep(1.0)

    async def _system_loop(self) -> None:
        while True:
            await self.system_info()
            await asyncio.sleep(10.0)

    # -- bus handlers ------------------------------------------------------------------------
    async def _on_frame(self, msg: Message[Frame]) -> None:
        self.frames[msg.payload.camera_id] = msg.payload

    async def _on_health(self, msg: Message[HealthReport]) -> None:
        self.reports.health = msg.payload
        self.broadcast("health", {"cameras": [c.__dict__ for c in self.camera_views()]})

    async def _on_bus(self, msg: Message[BusStatus]) -> None:
        self.reports.bus = msg.payload

    async def _on_state(self, msg: Message[ControlState]) -> None:
        self.control = msg.payload
        self.reports.armed = msg.payload.armed
        waiters, self._state_waiters = self._state_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(msg.payload)
        self.broadcast("state", self.control_dict())

    async def _on_verdict(self, msg: Message[ConfigSnapshot | ConfigRejected]) -> None:
        if isinstance(msg.payload, ConfigSnapshot):
            # the config in force, also when the change did not concern this module (a zone)
            self.config_in_force = msg.payload.config
        fut = self._verdicts.pop(msg.payload.request_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg.payload)

    async def _on_motion(self, msg: Message[MotionEvent]) -> None:
        m = msg.payload
        self.prom.on_motion(m.camera_id)
        self._send_boxes("motion", m.camera_id, m.frame_width, m.frame_height, m.boxes, ())

    async def _on_objects(self, msg: Message[DetectionEvent]) -> None:
        d = msg.payload
        self.prom.on_detections(d)
        boxes = tuple(x.box for x in d.detections)
        labels = tuple(f"{x.label} {x.score:.2f}" for x in d.detections)
        self._send_boxes("objects", d.camera_id, d.frame_width, d.frame_height, boxes, labels)

    def _send_boxes(
        self, kind: str, cam: str, w: int, h: int, boxes: tuple[Any, ...], labels: tuple[str, ...]
    ) -> None:
        """What the live view draws over the picture: at most BOX_RATE_HZ per camera and kind,
        and only while someone watches (no live view open: nothing is built)."""
        if self.streams == 0 or not self.clients:
            return
        now = time.monotonic()
        if now - self._boxes_sent.get((cam, kind), 0.0) < 1.0 / BOX_RATE_HZ:
            return
        self._boxes_sent[(cam, kind)] = now
        self.broadcast(
            "boxes",
            {
                "camera_id": cam,
                "kind": kind,
                "w": w,
                "h": h,
                "boxes": [[round(b.x1), round(b.y1), round(b.x2), round(b.y2)] for b in boxes],
                "labels": list(labels),
            },
        )

    async def _on_event(self, msg: Message[EventNotice]) -> None:
        self.prom.on_event(msg.payload)
        row = self.live.on_event(msg.payload)
        self.broadcast("event", row.as_dict())

    async def _on_artifact(self, msg: Message[MediaArtifact]) -> None:
        self.prom.on_artifact(msg.payload)
        waiter = self._snapshot_waiters.pop(msg.payload.event_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg.payload)
        row = self.live.on_artifact(msg.payload)
        if row is not None:
            self.broadcast("event", row.as_dict())

    async def _on_stored(self, msg: Message[StoredEvent]) -> None:
        self.broadcast("stored", {"id": msg.payload.event_id, "camera_id": msg.payload.camera_id})

    async def _on_notify(self, msg: Message[AlertNotification]) -> None:
        self.prom.on_notification(msg.payload)

    def broadcast(self, kind: str, data: Any) -> None:
        """Hand a live update to every SSE client; a client that cannot keep up loses it."""
        for q in self.clients:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait((kind, data))

    # -- views of the state ------------------------------------------------------------------
    def camera_ids(self) -> list[str]:
        return [cid for cid, cam in self.app_cfg.cameras.items() if cam.enabled]

    def camera_views(self) -> list[CameraView]:
        inputs: dict[str, ModuleHealth] = {}
        for mh in self.reports.health.modules if self.reports.health else ():
            cam_id = camera_of(mh)
            if cam_id is not None:
                inputs[cam_id] = mh
        now = time.monotonic()
        out = []
        for cid in self.camera_ids():
            cam = self.app_cfg.cameras[cid]
            m = inputs.get(cid)
            if m is None:
                state = "unknown"
            elif m.state in ("failed", "quarantined", "stopped"):
                state = m.state
            else:
                state = str(m.metrics.get("camera_state", m.state))
            fps = m.metrics.get("fps") if m else None
            frame = self.frames.get(cid)
            out.append(
                CameraView(
                    id=cid,
                    name=cam.name or cid,
                    state=state,
                    fps=float(fps) if isinstance(fps, (int, float)) else None,
                    last_frame_age_s=round(now - frame.mono_ts, 1) if frame else None,
                )
            )
        return out

    def control_dict(self) -> dict[str, Any] | None:
        if self.control is None:
            return None
        now = time.time()
        return {
            "armed": self.control.armed,
            "muted_until": {k: v for k, v in self.control.muted_until.items() if v > now},
        }

    async def system_info(self) -> SystemInfo:
        """Cached for a few seconds: the overview may be polled by several phones at once."""
        now = time.monotonic()
        if self._sys is None or now - self._sys_mono > 5.0:
            self._sys_mono = now
            throttled = await read_throttled()
            info = await self.ctx.executor.run(
                collect, self.app_cfg.storage.root, self.started_mono, __version__, throttled
            )
            self._sys = info
            r = self.reports
            r.disk_free, r.disk_total = info.disk_free, info.disk_total
            r.cpu_temp_c, r.throttled = info.cpu_temp_c, info.throttled
        return self._sys

    async def storage_writable(self) -> tuple[bool, str]:
        at, ok, why = self._probe
        if time.monotonic() - at < self.cfg.storage_probe_s and at > 0:
            return ok, why
        root = self.app_cfg.storage.root

        def probe() -> tuple[bool, str]:
            p = root / f".ready-probe-{os.getpid()}"
            try:
                root.mkdir(parents=True, exist_ok=True)
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, b"ok")
                finally:
                    os.close(fd)
                    with contextlib.suppress(OSError):  # also when the write failed (disk full)
                        p.unlink()
            except OSError as e:
                return False, f"storage root {str(root)!r} is not writable: {e.strerror or e}"
            return True, "writable"

        ok, why = await self.ctx.executor.run(probe)
        self._probe = (time.monotonic(), ok, why)
        return ok, why

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {"config": {"ok": True, "cameras": len(self.camera_ids())}}
        h = self.reports.health
        cams = self.camera_ids()
        stale_after = max(15.0, 3 * self.app_cfg.runtime.health_interval)
        if h is None:
            checks["cameras"] = {"ok": False, "reason": "no health report yet"}
        elif time.time() - h.at > stale_after:
            checks["cameras"] = {
                "ok": False,
                "reason": f"health report is {time.time() - h.at:.0f}s old",
            }
        elif not cams:
            checks["cameras"] = {"ok": True, "reason": "no cameras configured"}
        else:
            views = {v.id: v.state for v in self.camera_views()}
            started = [c for c in cams if views.get(c) in CAMERA_OK]
            checks["cameras"] = {
                "ok": bool(started),
                "states": views,
                "reason": "" if started else "no camera is streaming",
            }
        ok, why = await self.storage_writable()
        # a writer that failed (SQLITE_FULL, I/O error) says so through its health metrics;
        # the probe's few bytes may still fit where a transaction does not
        writers = [
            f"{m.module}: {m.detail or m.last_error or 'cannot write'}"
            for m in (h.modules if h is not None else ())
            if m.metrics.get("storage_writable") == 0
        ]
        if writers:
            ok, why = False, "; ".join([*writers, *([] if ok else [why])])
        checks["storage"] = {"ok": ok, "reason": "" if ok else why}
        return all(c["ok"] for c in checks.values()), checks

    # -- commands ----------------------------------------------------------------------------
    async def command(
        self,
        name: CommandName,
        source: str,
        *,
        camera_id: str | None = None,
        duration_s: float | None = None,
        wait_state: bool = True,
    ) -> tuple[str, ControlState | None]:
        """Publish ``control.command``; wait briefly for the ``control.state`` that follows."""
        rid = uuid.uuid4().hex
        fut: asyncio.Future[ControlState] | None = None
        if wait_state:
            fut = asyncio.get_running_loop().create_future()
            self._state_waiters.append(fut)
        cmd = ControlCommand(
            command=name, camera_id=camera_id, duration_s=duration_s, source=source, request_id=rid
        )
        await self.bus.publish(topics.CONTROL.name, cmd)
        self.log.info("control_command_sent", command=name, camera=camera_id, source=source)
        if fut is None:
            return rid, None
        try:
            return rid, await asyncio.wait_for(fut, timeout=2.0)
        except TimeoutError:
            return rid, None
        finally:
            if fut in self._state_waiters:
                self._state_waiters.remove(fut)

    async def snapshot(self, camera_id: str, source: str) -> tuple[str, MediaArtifact | None]:
        """Ask for a snapshot now; the snapshot module stores it as ``manual-<request id>``."""
        rid = uuid.uuid4().hex
        fut: asyncio.Future[MediaArtifact] = asyncio.get_running_loop().create_future()
        self._snapshot_waiters[f"manual-{rid}"] = fut
        cmd = ControlCommand(command="snapshot", camera_id=camera_id, source=source, request_id=rid)
        await self.bus.publish(topics.CONTROL.name, cmd)
        self.log.info("control_command_sent", command="snapshot", camera=camera_id, source=source)
        try:
            return rid, await asyncio.wait_for(fut, timeout=5.0)
        except TimeoutError:
            return rid, None  # nobody writes snapshots here: the live image still works
        finally:
            self._snapshot_waiters.pop(f"manual-{rid}", None)

    async def update_config(
        self, changes: dict[str, Any], source: str
    ) -> ConfigSnapshot | ConfigRejected | None:
        rid = uuid.uuid4().hex
        fut: asyncio.Future[ConfigSnapshot | ConfigRejected] = (
            asyncio.get_running_loop().create_future()
        )
        self._verdicts[rid] = fut
        await self.bus.publish(
            topics.CONFIG_UPDATE.name, ConfigUpdate(changes=changes, source=source, request_id=rid)
        )
        try:
            return await asyncio.wait_for(fut, timeout=self.cfg.config_timeout_s)
        except TimeoutError:
            return None
        finally:
            self._verdicts.pop(rid, None)

    async def check_password(self, password: str) -> bool:
        if self.password_hash is None:
            return False
        return await self.ctx.executor.run(verify_password, password, self.password_hash)

    async def jpeg(self, camera: str, width: int) -> bytes | None:
        """The latest frame of ``camera`` as JPEG, encoded once per frame and size."""
        frame = self.frames.get(camera)
        if frame is None or not frame.has_image:
            return None
        key = (camera, width)
        cached = self.jpegs.get(key)
        if cached is not None and cached[0] == frame.seq:
            return cached[1]
        pending = self._encoding.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._encoding[key] = fut
        try:
            data = await self.ctx.executor.run(_encode, frame, width, self.cfg.jpeg_quality)
            self.jpegs[key] = (frame.seq, data)
            fut.set_result(data)
            return data
        except Exception as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise, nobody else needs it
            raise
        finally:
            self._encoding.pop(key, None)

    def metrics(self) -> dict[str, float | int | str]:
        return {
            "port": self.port,
            "clients": len(self.clients),
            "streams": self.streams,
            "sessions": len(self.sessions),
            "requests": self.requests,
            "logins_failed": self.logins_failed,
        }

    def config_view(self) -> dict[str, Any]:
        """The whole config in force, secrets shown as ``***``."""
        if self.config_in_force is not None:
            return self.config_in_force
        return dump_config(self.app_cfg)

    @property
    def storage_root(self) -> Path:
        return self.app_cfg.storage.root


def _encode(frame: Frame, width: int, quality: int) -> bytes:
    import cv2

    img: Any = frame.image
    if width and img.shape[1] > width:
        height = max(1, round(img.shape[0] * width / img.shape[1]))
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf)


__all__ = ["Config", "StatusPage", "hash_password", "verify_password"]
