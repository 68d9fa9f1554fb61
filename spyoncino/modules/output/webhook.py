"""Webhook alerts: POST a JSON document per alert (and per GIF/clip) to one URL.

For home-automation hubs and scripts. The body names the event and its artifact (path on the
box, and a URL when ``media_base_url`` is set). With ``secret`` set, every request carries
``X-Spyoncino-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact body bytes, so the
receiver can check that the box sent it. Delivery goes through the persistent outbox (stored
first, in order, retried with backoff, 429 ``Retry-After`` honoured).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import ModuleConfig, ModuleConfigError
from spyoncino.helpers.outbox import (
    AlertGate,
    OutboxChannel,
    OutboxItem,
    OutboxSettings,
    PermanentError,
    RetryAfter,
    ServerError,
    TransientError,
)
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.health import CameraHealthNotice
from spyoncino.schemas.media import MediaArtifact

CHANNEL = "webhook"
SIGNATURE_HEADER = "X-Spyoncino-Signature"


class Config(ModuleConfig):
    type: Literal["webhook"] = "webhook"
    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Where alerts are POSTed; without it the module stays inert.",
    )
    secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key for the X-Spyoncino-Signature header."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra request headers (e.g. Authorization); values are kept secret.",
    )
    media_base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Base URL under which the box serves media; adds artifact URLs to the body.",
    )
    alert_kinds: tuple[Literal["object", "motion"], ...] = Field(
        default=("object", "motion"), description="Event kinds that raise an alert."
    )
    followups: tuple[Literal["gif", "clip"], ...] = Field(
        default=("gif", "clip"), description="Artifacts posted after the alert when ready."
    )
    snapshot_wait_s: float = Field(
        default=10.0,
        ge=1.0,
        le=600.0,
        description="An event still without a snapshot this long after it started is alerted "
        "as text (the snapshot writer failed: disk full, no picture).",
    )
    respect_arming: bool = Field(
        default=True, description="Stay quiet while disarmed or muted, like Telegram."
    )
    health_alerts: bool = Field(
        default=True,
        description="Send camera-health alerts and recoveries (stream lost, covered, frozen, "
        "moved); they follow mutes, not disarming.",
    )
    timeout_s: float = Field(default=10.0, ge=0.5, le=120.0, description="Request timeout.")
    outbox: OutboxSettings = Field(
        default_factory=lambda: OutboxSettings(min_interval_s=0.0),
        description="Delivery: retries, horizon, rate limits.",
    )


def signature(secret: str, body: bytes) -> str:
    """The header value a receiver recomputes: ``sha256=<hex HMAC-SHA256 of body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def recipient_of(url: str) -> str:
    """The URL's host and port: names the recipient without credentials or query secrets."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


class WebhookOutput(OutboxChannel[Config]):
    Config: ClassVar[type[ModuleConfig]] = Config
    channel: ClassVar[str] = CHANNEL

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.names: dict[str, str] = {}
        self.db_path: Path | None = None
        self._session: Any = None

    async def check(self, app: AppConfig) -> None:
        cfg = app.section(self.name or CHANNEL, Config)
        old = self.cfg
        if self.outbox is not None and (
            (old.url is None) != (cfg.url is None) or old.timeout_s != cfg.timeout_s
        ):
            raise ModuleConfigError("webhook.url/timeout_s: this change takes effect on restart")

    async def configure(self, app: AppConfig) -> None:
        await self.check(app)  # refuses before anything is adopted
        self.cfg = app.section(self.name or CHANNEL, Config)
        self.names = app.camera_names()
        self.db_path = app.storage.db_path
        if self.outbox is not None:  # running: adopt what can change in place
            self.adopt_settings()
            self.gate.followups = frozenset(self.cfg.followups)
            self.gate.respect_state = self.cfg.respect_arming

    async def start(self) -> None:
        if self.cfg.url is None:
            self.log.info("webhook_disabled", reason="no url configured")
            self.set_state("ok", "disabled: no url")
            return
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        )
        assert self.db_path is not None
        outbox = await self.open_outbox(self.db_path)
        self.gate = AlertGate(
            self.cfg.alert_kinds,
            self.cfg.followups,
            respect_state=self.cfg.respect_arming,
            budget=outbox.admit,
        )
        self.listen()
        self.set_state("ok", recipient_of(self.cfg.url))

    async def _enqueue(self, ev: EventNotice, art: MediaArtifact | None) -> None:
        assert self.outbox is not None
        assert self.cfg.url is not None
        await self.outbox.enqueue(
            recipient=recipient_of(self.cfg.url),
            event_id=ev.event_id,
            camera_id=ev.camera_id,
            kind=art.kind if art is not None else "text",
            payload=self.document(ev, art),
        )

    async def _enqueue_health(self, notice: CameraHealthNotice) -> None:
        assert self.outbox is not None
        assert self.cfg.url is not None
        await self.outbox.enqueue(
            recipient=recipient_of(self.cfg.url),
            event_id=notice.notice_id,
            camera_id=notice.camera_id,
            kind=f"health_{notice.phase}",
            payload=self.health_document(notice),
        )

    @staticmethod
    def health_document(notice: CameraHealthNotice) -> dict[str, Any]:
        """The JSON body of a camera-health alert (``spyoncino.camera_health``) or recovery
        (``spyoncino.camera_recovered``)."""
        return {
            "type": "spyoncino.camera_health"
            if notice.phase == "alert"
            else "spyoncino.camera_recovered",
            "health": notice.model_dump(mode="json"),
        }

    async def stop(self) -> None:
        await super().stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def document(self, ev: EventNotice, art: MediaArtifact | None) -> dict[str, Any]:
        """The JSON body (without ``sent_at``, added per attempt); ``artifact`` is null when
        the snapshot was never made."""
        doc: dict[str, Any] = {
            "type": "spyoncino.alert"
            if art is None or art.kind == "snapshot"
            else f"spyoncino.{art.kind}",
            "event": {
                "id": ev.event_id,
                "camera_id": ev.camera_id,
                "camera_name": self.names.get(ev.camera_id, ev.camera_id),
                "kind": ev.kind,
                "labels": list(ev.labels),
                "top_score": ev.top_score,
                "zones": list(ev.zones),
                "started_at": ev.started_at,
            },
            "artifact": None,
        }
        if art is None:
            return doc
        artifact: dict[str, Any] = {
            "kind": art.kind,
            "path": art.path,
            "relpath": art.relpath,
            "mime": art.mime,
            "size_bytes": art.size_bytes,
            "sha256": art.sha256,
            "width": art.width,
            "height": art.height,
            "duration_s": art.duration_s,
        }
        if self.cfg.media_base_url:
            artifact["url"] = f"{self.cfg.media_base_url.rstrip('/')}/{art.relpath}"
        doc["artifact"] = artifact
        return doc

    async def _deliver(self, item: OutboxItem) -> str | None:
        import aiohttp

        assert self._session is not None
        assert self.cfg.url is not None
        doc = dict(item.payload, sent_at=time.time(), attempt=item.attempts)
        if item.coalesced:
            doc["coalesced_events"] = item.coalesced
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json"}
        headers.update({k: v.get_secret_value() for k, v in self.cfg.headers.items()})
        if self.cfg.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.cfg.secret.get_secret_value(), body)
        try:
            async with self._session.post(self.cfg.url, data=body, headers=headers) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After", "")
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise TransientError(f"{type(e).__name__}: {e}") from e
        if 200 <= status < 300:
            return str(status)
        if status == 429:
            raise RetryAfter(float(retry_after) if retry_after.isdigit() else 5.0, "429")
        if status >= 500:  # the server answered: the items behind this one go on
            raise ServerError(f"HTTP {status}")
        if status == 408:
            raise TransientError(f"HTTP {status}")
        raise PermanentError(f"HTTP {status}")
