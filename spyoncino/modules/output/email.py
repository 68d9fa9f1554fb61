"""Email alerts: one message per alert with the snapshot JPEG attached, over SMTP.

``aiosmtplib`` is an optional dependency (``pip install spyoncino[email]``), imported when the
module starts: without it the module is quarantined with a clear message and the rest of the
box keeps running. Delivery goes through the persistent outbox: stored first, in order per
recipient, retried with backoff on connection errors and 4xx replies, failed at once on 5xx
(the server refuses the message itself).
"""

from __future__ import annotations

import importlib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import ModuleConfig, ModuleConfigError
from spyoncino.helpers.files import local_time
from spyoncino.helpers.outbox import (
    AlertGate,
    OutboxChannel,
    OutboxItem,
    OutboxSettings,
    PermanentError,
    TransientError,
)
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.health import CameraHealthNotice
from spyoncino.schemas.media import MediaArtifact

CHANNEL = "email"


class Config(ModuleConfig):
    type: Literal["email"] = "email"
    host: str | None = Field(
        default=None, description="SMTP server; without it the module stays inert."
    )
    port: int = Field(default=587, ge=1, le=65535, description="SMTP port (587 STARTTLS, 465 TLS).")
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls", description="starttls (port 587), tls (implicit, 465) or none (LAN)."
    )
    username: str | None = Field(default=None, description="SMTP login, if the server needs one.")
    password: SecretStr | None = Field(default=None, description="SMTP password (secrets file).")
    sender: str = Field(
        default="spyoncino@localhost", description="From address.", pattern=r"^[^@\s]+@[^@\s]+$"
    )
    recipients: list[str] = Field(
        default_factory=list, max_length=32, description="Who receives alerts (the allowlist)."
    )
    subject: str = Field(
        default="[spyoncino] {camera}: {what} at {time}",
        max_length=200,
        description="Subject template: {camera}, {what}, {time}.",
    )
    alert_kinds: tuple[Literal["object", "motion"], ...] = Field(
        default=("object", "motion"), description="Event kinds that raise an alert."
    )
    snapshot_wait_s: float = Field(
        default=10.0,
        ge=1.0,
        le=600.0,
        description="An event still without a snapshot this long after it started is alerted "
        "as text (the snapshot writer failed: disk full, no picture).",
    )
    max_attachment_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        le=50 * 1024 * 1024,
        description="Larger snapshots are not attached (the message says so).",
    )
    health_alerts: bool = Field(
        default=True,
        description="Send camera-health alerts and recoveries (stream lost, covered, frozen, "
        "moved); they follow mutes, not disarming.",
    )
    timeout_s: float = Field(default=30.0, ge=1.0, le=300.0, description="SMTP timeout.")
    outbox: OutboxSettings = Field(
        default_factory=lambda: OutboxSettings(min_interval_s=0.0),
        description="Delivery: retries, horizon, rate limits.",
    )


def _what(ev: EventNotice) -> str:
    if ev.kind == "object" and ev.labels:
        return ", ".join(ev.labels) + f" ({ev.top_score:.0%})"
    return "motion"


class EmailOutput(OutboxChannel[Config]):
    Config: ClassVar[type[ModuleConfig]] = Config
    channel: ClassVar[str] = CHANNEL

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.names: dict[str, str] = {}
        self.tz: str | None = None
        self.db_path: Path | None = None
        self._smtp: Any = None

    async def check(self, app: AppConfig) -> None:
        cfg = app.section(self.name or CHANNEL, Config)
        try:
            cfg.subject.format(camera="c", what="w", time="t")
        except (KeyError, IndexError, ValueError) as e:
            raise ModuleConfigError(
                f"email.subject: unknown placeholder in {cfg.subject!r} "
                "(use {camera}, {what}, {time})"
            ) from e
        if self.outbox is not None and (self.cfg.host is None) != (cfg.host is None):
            raise ModuleConfigError("email.host: turning email on or off needs a restart")

    async def configure(self, app: AppConfig) -> None:
        await self.check(app)  # refuses before anything is adopted
        self.cfg = app.section(self.name or CHANNEL, Config)
        self.names = app.camera_names()
        self.tz = app.runtime.timezone
        self.db_path = app.storage.db_path
        if self.outbox is not None:  # running: adopt what can change in place
            self.adopt_settings()

    async def start(self) -> None:
        if self.cfg.host is None or not self.cfg.recipients:
            self.log.info("email_disabled", reason="no host or no recipients configured")
            self.set_state("ok", "disabled: no host/recipients")
            return
        try:
            self._smtp = await self.ctx.executor.run(importlib.import_module, "aiosmtplib")
        except ImportError as e:
            raise ModuleConfigError(
                "email: aiosmtplib is not installed (pip install 'spyoncino[email]')"
            ) from e
        assert self.db_path is not None
        outbox = await self.open_outbox(self.db_path)
        self.gate = AlertGate(self.cfg.alert_kinds, (), budget=outbox.admit)
        self.listen()
        self.set_state("ok", f"{len(self.cfg.recipients)} recipient(s) via {self.cfg.host}")

    async def _enqueue(self, ev: EventNotice, art: MediaArtifact | None) -> None:
        assert self.outbox is not None
        name = self.names.get(ev.camera_id, ev.camera_id)
        when = local_time(ev.started_at, self.tz).strftime("%Y-%m-%d %H:%M:%S")
        payload = {
            "subject": self.cfg.subject.format(camera=name, what=_what(ev), time=when),
            "body": f"{name}: {_what(ev)}\n{when}\n"
            + (f"zone: {', '.join(ev.zones)}\n" if ev.zones else "")
            + f"event {ev.event_id}\n",
            "path": art.path if art is not None else None,
            "camera_name": name,
        }
        for rcpt in self.cfg.recipients:
            await self.outbox.enqueue(
                recipient=rcpt,
                event_id=ev.event_id,
                camera_id=ev.camera_id,
                kind=art.kind if art is not None else "text",
                payload=payload,
            )

    async def _enqueue_health(self, notice: CameraHealthNotice) -> None:
        assert self.outbox is not None
        when = local_time(notice.at, self.tz).strftime("%Y-%m-%d %H:%M:%S")
        what = "camera problem" if notice.phase == "alert" else "camera recovered"
        payload = {
            "subject": f"[spyoncino] {notice.camera_name}: {what} at {when}",
            "body": f"{notice.message}\n{when}\n",
            "path": None,
            "camera_name": notice.camera_name,
        }
        for rcpt in self.cfg.recipients:
            await self.outbox.enqueue(
                recipient=rcpt,
                event_id=notice.notice_id,
                camera_id=notice.camera_id,
                kind=f"health_{notice.phase}",
                payload=payload,
            )

    async def message(self, item: OutboxItem) -> EmailMessage:
        p = item.payload
        msg = EmailMessage()
        msg["From"] = self.cfg.sender
        msg["To"] = item.recipient
        subject = str(p["subject"])
        body = str(p["body"])
        if item.coalesced:
            subject = f"{item.coalesced + 1} events on {p['camera_name']} while offline"
            body = f"{subject}; the latest:\n\n{body}"
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain="spyoncino")
        run = self.outbox.run_io if self.outbox is not None else self.ctx.executor.run
        path = Path(str(p["path"])) if p.get("path") else None
        data: bytes | None = None
        if path is None:
            if not item.kind.startswith("health_"):  # a camera-health notice has no picture
                body += "\n(no picture: the snapshot was not made)\n"
        else:
            data, body = await self._attachment(path, body, run)
        msg.set_content(body)
        if data is not None and path is not None:
            msg.add_attachment(data, maintype="image", subtype="jpeg", filename=path.name)
        return msg

    async def _attachment(self, path: Path, body: str, run: Any) -> tuple[bytes | None, str]:
        data: bytes | None = None
        try:
            size = await run(lambda: path.stat().st_size)
            data = await run(path.read_bytes) if size <= self.cfg.max_attachment_bytes else None
            if data is None:
                body += f"\n(snapshot not attached: {size} bytes is over the limit)\n"
        except OSError as e:
            data = None
            body += f"\n(snapshot unavailable: {e.strerror or type(e).__name__})\n"
        return data, body

    async def _deliver(self, item: OutboxItem) -> str | None:
        smtp = self._smtp
        assert smtp is not None
        msg = await self.message(item)
        cfg = self.cfg
        try:
            await smtp.send(
                msg,
                hostname=cfg.host,
                port=cfg.port,
                username=cfg.username,
                password=cfg.password.get_secret_value() if cfg.password else None,
                start_tls=cfg.security == "starttls",
                use_tls=cfg.security == "tls",
                timeout=cfg.timeout_s,
            )
        except smtp.SMTPResponseException as e:
            code = int(getattr(e, "code", 0) or 0)
            if 500 <= code < 600:
                raise PermanentError(f"SMTP {code}") from e
            raise TransientError(f"SMTP {code}") from e
        except smtp.SMTPRecipientsRefused as e:
            raise PermanentError("recipient refused") from e
        except (smtp.SMTPException, OSError, TimeoutError) as e:
            raise TransientError(type(e).__name__) from e
        return str(msg["Message-ID"])
