"""The ``s3`` section: where copies go, what is copied, how fast, and how it is verified."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from spyoncino.core.contracts import ModuleConfig
from spyoncino.helpers.outbox import OutboxSettings

MiB = 1024 * 1024

#: artifact kinds, and ``event``: the event's index row as JSON, copied when the event ends
CopyKind = Literal["snapshot", "snapshot_clean", "thumbnail", "gif", "clip", "event"]


def _outbox_defaults() -> OutboxSettings:
    # evidence: keep trying for the longest horizon the outbox has, never fold, no rate caps
    # (max_kbps is the budget); an attempt may take long because a part of a clip may
    return OutboxSettings(
        horizon_s=30 * 86400.0,
        backoff_max_s=300.0,
        attempt_timeout_s=600.0,
        min_interval_s=0.0,
        camera_budget=0,
        coalesce_after=0,
    )


class Config(ModuleConfig):
    type: Literal["s3"] = "s3"
    bucket: str | None = Field(
        default=None,
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$",
        description="Bucket the copies go to; without it the module stays inert.",
    )
    endpoint_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="S3 API endpoint (Backblaze B2, Cloudflare R2, Wasabi, MinIO...); "
        "None: AWS for the region.",
    )
    region: str = Field(
        default="us-east-1",
        pattern=r"^[a-z0-9-]{2,32}$",
        description="Region of the bucket (R2: auto; MinIO: us-east-1).",
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="Bucket in the path (MinIO, most NAS servers) or in the host name (AWS).",
    )
    access_key_id: str | None = Field(
        default=None, max_length=128, description="Access key id (put it in the secrets file)."
    )
    secret_access_key: SecretStr | None = Field(
        default=None, description="Secret access key (put it in the secrets file)."
    )
    prefix: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[A-Za-z0-9!_.*'()/-]*$",
        description="Start of every key; None: '<device_id>/'. Keys are <prefix><camera>/<day>/"
        "<event>.<ext>, the layout of the local media folder.",
    )
    device_id: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_-]{1,64}$",
        description="Names this box in the default prefix; None: the host name, made key-safe.",
    )
    copy_kinds: tuple[CopyKind, ...] = Field(
        default=("snapshot", "clip"),
        min_length=1,
        description="What is copied off the box: artifact kinds, and 'event' (the event's "
        "index row as JSON, <event>.json next to its media, when it ends).",
    )
    select: Literal["alerted", "all"] = Field(
        default="alerted",
        description="Events whose artifacts are copied: 'alerted' (those that raise an alert: "
        "of alert_kinds, while armed and not muted) or 'all' events of alert_kinds.",
    )
    alert_kinds: tuple[Literal["object", "motion"], ...] = Field(
        default=("object", "motion"), description="Event kinds whose media are copied."
    )
    max_kbps: int = Field(
        default=0,
        ge=0,
        le=10_000_000,
        description="Upload budget in kilobits per second (1000 bit/s) across all uploads; "
        "0: no limit.",
    )
    storage_class: str | None = Field(
        default=None,
        pattern=r"^[A-Z_]{2,32}$",
        description="x-amz-storage-class of new objects (STANDARD_IA, GLACIER_IR...); None: "
        "the bucket's default.",
    )
    server_side_encryption: Literal["AES256", "aws:kms"] | None = Field(
        default=None,
        description="Ask the provider to encrypt objects at rest (x-amz-server-side-encryption).",
    )
    sse_kms_key_id: str | None = Field(
        default=None, max_length=2048, description="KMS key for server_side_encryption aws:kms."
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        description="Encrypt copies on the box (AES-256-GCM) with this key: 32 bytes, base64 "
        "(openssl rand -base64 32), in the secrets file. Keep a copy off the box too: without "
        "it the copies cannot be read.",
    )
    multipart_threshold_bytes: int = Field(
        default=16 * MiB,
        ge=64 * 1024,
        le=5 * 1024 * MiB,
        description="Files this large or larger go up in parts, resumed after a restart.",
    )
    part_size_bytes: int = Field(
        default=8 * MiB,
        ge=64 * 1024,
        le=5 * 1024 * MiB,
        description="Size of one part. S3 and most providers refuse parts under 5 MiB (but the "
        "last); smaller values are for test servers.",
    )
    timeout_s: float = Field(
        default=30.0, ge=1.0, le=600.0, description="Connect and read timeout of one request."
    )
    probe_interval_s: float = Field(
        default=60.0,
        ge=0.2,
        le=3600.0,
        description="Longest wait between two checks of an endpoint that is down or refusing.",
    )
    outbox: OutboxSettings = Field(
        default_factory=_outbox_defaults,
        description="Delivery: retries, horizon (how long a copy is retried), attempt timeout.",
    )

    @property
    def snapshot_wait_s(self) -> float:
        """The outbox channel's wait for a missing snapshot (no copy is made without one)."""
        return 600.0


def setting_problems(cfg: Config, section: str) -> list[str]:
    """Settings no retry can fix, each naming its key."""
    out: list[str] = []
    if cfg.bucket is None:
        return out
    if (cfg.access_key_id is None) != (cfg.secret_access_key is None):
        out.append(f"{section}.access_key_id and {section}.secret_access_key go together")
    if cfg.sse_kms_key_id is not None and cfg.server_side_encryption != "aws:kms":
        out.append(f"{section}.sse_kms_key_id: set without server_side_encryption: aws:kms")
    if cfg.encryption_key is not None:
        from ._crypto import load_key

        try:
            load_key(cfg.encryption_key.get_secret_value())
        except ValueError as e:
            out.append(f"{section}.encryption_key: {e}")
    if cfg.part_size_bytes > cfg.multipart_threshold_bytes:
        out.append(f"{section}.part_size_bytes: larger than multipart_threshold_bytes")
    return out
