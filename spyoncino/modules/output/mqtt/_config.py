"""The ``mqtt`` section: connection, names, discovery, delivery bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from spyoncino.core.contracts import ModuleConfig
from spyoncino.helpers.updates import DEFAULT_DIR as UPDATE_DIR

_TOPIC_PREFIX = r"^[^#+\s]+(/[^#+\s]+)*$"


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = Field(
        default=None, description="CA certificate (PEM) the broker's certificate is checked with."
    )
    cert_file: Path | None = Field(
        default=None, description="Client certificate (PEM) for brokers that ask for one."
    )
    key_file: Path | None = Field(default=None, description="Private key of cert_file (PEM).")
    insecure: bool = Field(
        default=False, description="Skip the host name check (a self-signed test broker only)."
    )


class Config(ModuleConfig):
    type: Literal["mqtt"] = "mqtt"
    host: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[A-Za-z0-9.\-:\[\]]+$",
        description="Broker host name or address; without it the module stays inert.",
    )
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 with TLS).")
    tls: TlsConfig | None = Field(
        default=None, description="Connect with TLS (an empty mapping: the system's CAs)."
    )
    username: str | None = Field(default=None, max_length=256, description="Broker user name.")
    password: SecretStr | None = Field(
        default=None, description="Broker password (put it in the secrets file)."
    )
    device_id: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_-]{1,64}$",
        description="Names this box on the broker; None: the host name, made topic-safe.",
    )
    device_name: str | None = Field(
        default=None,
        max_length=100,
        description="Device name in Home Assistant; None: Spyoncino <id>.",
    )
    client_id: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="MQTT client id; None: spyoncino-<device id>. Two boxes must differ.",
    )
    topic_prefix: str | None = Field(
        default=None,
        max_length=200,
        pattern=_TOPIC_PREFIX,
        description="Root of this box's topics; None: spyoncino/<device id>.",
    )
    discovery: bool = Field(
        default=True,
        description="Publish Home Assistant discovery; false removes the configs published before.",
    )
    discovery_prefix: str = Field(
        default="homeassistant",
        max_length=100,
        pattern=_TOPIC_PREFIX,
        description="Home Assistant's discovery prefix (its birth topic is <prefix>/status).",
    )
    labels: tuple[str, ...] | None = Field(
        default=None,
        max_length=32,
        description="Labels with a count and an occupancy sensor per camera; None: each "
        "camera's detector labels.",
    )
    keepalive_s: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="MQTT keepalive; the broker declares us gone after 1.5x.",
    )
    connect_timeout_s: float = Field(
        default=10.0, ge=0.5, le=120.0, description="Seconds a connect or publish may take."
    )
    reconnect_min_s: float = Field(
        default=1.0, ge=0.05, le=60.0, description="First wait before reconnecting."
    )
    reconnect_max_s: float = Field(
        default=60.0, ge=1.0, le=3600.0, description="Longest wait between reconnect attempts."
    )
    max_queued_events: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="Events kept while the broker is away; older ones are summarised.",
    )
    state_interval_s: float = Field(
        default=60.0, ge=1.0, le=3600.0, description="Seconds between device state reports."
    )
    update_dir: Path = Field(
        default=UPDATE_DIR,
        description="The over-the-air updater's exchange folder: its last check (check.json) "
        "gives the update entity's latest version.",
    )
    snapshot_max_bytes: int = Field(
        default=2_000_000,
        ge=10_000,
        le=16_000_000,
        description="Larger event snapshots are not published on the snapshot topic.",
    )
    max_command_bytes: int = Field(
        default=256, ge=16, le=65536, description="Longer command payloads are refused."
    )


def setting_problems(cfg: Config, section: str) -> list[str]:
    """Settings no retry can fix: files that are not there, a password with no user."""
    out: list[str] = []
    if cfg.host is None:
        return out
    if cfg.password is not None and cfg.username is None:
        out.append(f"{section}.password: set without {section}.username")
    if cfg.tls is not None:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(cfg.tls, key)
            if path is not None and not Path(path).is_file():
                out.append(f"{section}.tls.{key}: file {str(path)!r} does not exist")
        if (cfg.tls.cert_file is None) != (cfg.tls.key_file is None):
            out.append(f"{section}.tls: cert_file and key_file go together")
    return out
