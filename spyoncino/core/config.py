"""Configuration: layered sources -> one validated, frozen ``AppConfig``.

Layers, lowest first:

1. the packaged defaults (``spyoncino/data/default.yaml``);
2. the embedded demo (``spyoncino/data/demo.yaml``) when no config file is found, otherwise
   ``--config PATH`` or ``/etc/spyoncino/config.yaml``;
3. ``SPYONCINO_``-prefixed environment variables, nested with ``__``
   (``SPYONCINO_TELEGRAM__CHAT_IDS='[1,2]'``), values parsed the Dynaconf way (TOML literals,
   ``@json``), plus the same variables from ``./.env`` (the real environment wins);
4. a secrets file (``--secrets PATH``, ``$SPYONCINO_SECRETS_FILE`` or
   ``/etc/spyoncino/secrets.yaml``).

Dictionaries merge key by key across layers; lists and scalars replace. The merged data is
validated by pydantic into ``AppConfig``, whose module sections come from the modules that are
registered (entry points), so third-party modules get validation and schema for free.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
)

if TYPE_CHECKING:
    from spyoncino.core.contracts import BaseModule

ENV_PREFIX = "SPYONCINO_"
#: variables with the prefix that steer the program, not its configuration
NOT_CONFIG_ENV = frozenset({"SPYONCINO_SECRETS_FILE", "SPYONCINO_CHECK_PAYLOADS"})
SYSTEM_CONFIG = Path("/etc/spyoncino/config.yaml")
SYSTEM_SECRETS = Path("/etc/spyoncino/secrets.yaml")
REDACTED = "***"
#: more cameras than any board can take: a bound, not a target
MAX_CAMERAS = 64
CAMERA_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")  # \Z: "$" allows a trailing newline

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """Configuration problems, each naming the source, the dotted key and the bad value."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# -- core sections -----------------------------------------------------------------------------
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level written to the log."
    )
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON lines otherwise (journald)."
    )


class BusConfig(_Section):
    status_interval: float = Field(
        default=10.0, ge=0.0, le=3600.0, description="Seconds between status.bus reports (0: off)."
    )
    queue_size: int = Field(
        default=64, ge=1, le=100_000, description="Default queue length of lossless subscriptions."
    )
    high_watermark: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Queue fill share that triggers a warning."
    )


class RuntimeConfig(_Section):
    workers: int = Field(
        default=2, ge=1, le=16, description="Threads for CPU work and blocking I/O (bounded pool)."
    )
    drain_timeout: float = Field(
        default=20.0,
        ge=0.0,
        le=300.0,
        description="Seconds to finish pending media and alerts when a replay ends.",
    )
    stop_timeout: float = Field(
        default=8.0, ge=1.0, le=60.0, description="Seconds a module gets to stop on shutdown."
    )
    shutdown_budget_s: float = Field(
        default=12.0,
        ge=1.0,
        le=300.0,
        description="Seconds the whole shutdown (SIGTERM to exit) may take; keep it below the "
        "unit's TimeoutStopSec (15 s). Media not built in it is kept and built on the next start.",
    )
    health_interval: float = Field(
        default=5.0, gt=0.0, le=600.0, description="Seconds between health polls."
    )
    max_start_attempts: int = Field(
        default=5, ge=1, le=100, description="Failed starts before a module is quarantined."
    )
    camera_buffer_mb: float = Field(
        default=32.0,
        gt=0.0,
        le=1024.0,
        description="Memory budget of one camera's buffered video, from the hardware profile: "
        "its H.264 packet ring (what clips are cut from) and its pre-roll pictures (cameras "
        "without H.264) are each held within it; the oldest seconds go first.",
    )
    camera_max_fps: float | None = Field(
        default=None,
        gt=0.0,
        le=120.0,
        description="Frames per second processed from a camera that sets no max_fps of its "
        "own, from the hardware profile (Pi Zero 2 W 5, Pi 4 10, a PC 15); frames over it are "
        "decoded and dropped on a live camera's thread (the fps_cap reason), a file's on the "
        "video's own clock. None: no cap.",
    )
    malloc_arena_max: int = Field(
        default=2,
        ge=0,
        le=64,
        description="glibc malloc arenas (M_ARENA_MAX; 0: glibc's default, 8 per core). Each "
        "thread's own arena keeps what it freed; MALLOC_ARENA_MAX in the environment wins.",
    )
    malloc_mmap_threshold_kb: int = Field(
        default=256,
        ge=0,
        le=32768,
        description="Blocks at least this big (frames, clips) get their own mapping, returned "
        "when freed (M_MMAP_THRESHOLD; 0: glibc's moving threshold). MALLOC_MMAP_THRESHOLD_ wins.",
    )
    malloc_trim_s: float = Field(
        default=15.0,
        ge=0.0,
        le=3600.0,
        description="Seconds between handing memory freed inside the heaps back to the system "
        "(malloc_trim, in a worker; 0: never).",
    )
    timezone: str | None = Field(
        default=None, description="IANA zone for captions and folders; None: the system's."
    )
    hardware_profile: str = Field(
        default="auto",
        description=(
            "Board profile (pi-zero-2w, pi-3b-plus, pi-4, pi-5, jetson-orin-nano, generic-x86) "
            "or a profile YAML path; auto: detected from /proc/device-tree/model. Its defaults "
            "sit just above the packaged ones, so anything you set wins."
        ),
    )


class StorageConfig(_Section):
    root: Path = Field(
        default=Path("/var/lib/spyoncino"), description="Where media and the event index live."
    )
    scratch: Path | None = Field(
        default=None,
        description=(
            "Folder for GIF/clip assembly (a tmpfs spares the SD card); None: <root>/.scratch."
        ),
    )
    database: str = Field(default="events.sqlite3", description="Index file name under root.")

    @property
    def db_path(self) -> Path:
        return self.root / self.database

    @property
    def scratch_dir(self) -> Path:
        return self.scratch if self.scratch is not None else self.root / ".scratch"


class PrivacyMask(_Section):
    """A polygon blacked out of every frame before anything reads it (normalised 0..1)."""

    name: str = Field(min_length=1, max_length=40, description="Shown on the zones page.")
    polygon: tuple[tuple[float, float], ...] = Field(
        min_length=3, max_length=64, description="[[x, y], ...] corners, each 0..1, at least three."
    )

    @field_validator("polygon")
    @classmethod
    def _normalised(cls, value: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        for x, y in value:
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(f"mask corner ({x}, {y}) is outside 0..1")
        return value


class CameraBase(_Section):
    """Settings every camera has; modules add their own sub-sections (``motion:``, ...)."""

    source: str = Field(
        min_length=1,
        max_length=2048,
        description="File path, rtsp://..., csi://0, /dev/video0 or 'spyoncino:sample.mp4'.",
    )
    enabled: bool = Field(default=True, description="Read this camera.")
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        # no control characters: the name goes into captions, pages and log lines
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="Display name (at most 64 characters); defaults to the id.",
    )
    max_fps: float | None = Field(
        default=None,
        gt=0.0,
        le=120.0,
        description="Cap on frames processed per second; unset: runtime.camera_max_fps (the "
        "board's).",
    )
    luma_width: int = Field(
        default=320, ge=64, le=1920, description="Width of the small luma plane motion reads."
    )
    privacy_masks: tuple[PrivacyMask, ...] = Field(
        default=(),
        max_length=16,
        description=(
            "Areas blacked out of every frame at the input: never detected, stored, sent or "
            "shown live (a neighbour's window)."
        ),
    )

    def options(self, section: str, model: type[M]) -> M:
        """This camera's options for ``section``, or the model's defaults."""
        value = getattr(self, section, None)
        if value is None:
            return model()
        return cast("M", value)


class AppConfig(_Section):
    """The whole configuration. Module sections are added when the registry is built."""

    cameras: dict[str, CameraBase] = Field(default_factory=dict)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    bus: BusConfig = Field(default_factory=BusConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("cameras")
    @classmethod
    def _camera_ids(cls, value: dict[str, CameraBase]) -> dict[str, CameraBase]:
        if len(value) > MAX_CAMERAS:
            raise ValueError(f"{len(value)} cameras: at most {MAX_CAMERAS}")
        for cid in value:
            if not CAMERA_ID.match(cid):
                raise ValueError(
                    f"camera id {cid!r} must be lowercase letters, digits, '_' or '-' "
                    "(it names topics and folders)"
                )
        return value

    def camera_names(self, *, enabled_only: bool = False) -> dict[str, str]:
        """Camera id -> the name people see (``name``, else the id)."""
        return {
            cid: cam.name or cid
            for cid, cam in self.cameras.items()
            if cam.enabled or not enabled_only
        }

    def frame_cap(self, camera_id: str) -> float | None:
        """Frames per second processed from a camera: its own ``max_fps``, else the board's
        (``runtime.camera_max_fps``); None: every frame."""
        return self.cameras[camera_id].max_fps or self.runtime.camera_max_fps

    def section(self, name: str, model: type[M]) -> M:
        value = getattr(self, name, None)
        if value is None:
            return model()
        if not isinstance(value, model):
            raise TypeError(f"config section {name!r} is {type(value).__name__}, not {model}")
        return value


def build_app_model(modules: Mapping[str, type[BaseModule]]) -> type[AppConfig]:
    """AppConfig with one section per registered module and per-camera option sections."""
    cam_fields: dict[str, Any] = {}
    app_fields: dict[str, Any] = {}
    for name, cls in sorted(modules.items()):
        app_fields[name] = (cls.Config, Field(default_factory=cls.Config))
        if cls.Camera is not None:
            cam_fields[name] = (cls.Camera | None, Field(default=None))
    camera_model = cast(
        "type[CameraBase]", create_model("CameraConfig", __base__=CameraBase, **cam_fields)
    )
    app_fields["cameras"] = (dict[str, camera_model], Field(default_factory=dict))  # type: ignore[valid-type]
    return cast("type[AppConfig]", create_model("AppConfig", __base__=AppConfig, **app_fields))


# -- loading -----------------------------------------------------------------------------------
def _lower_keys(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in data.items()}
    return data


def deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_yaml(path: Path, label: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{label}: cannot read: {e.strerror or e}"]) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark is not None else label
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{label}: the top level must be a mapping, got {type(data).__name__}"])
    return cast("dict[str, Any]", _lower_keys(data))


def _env_layer(environ: Mapping[str, str], dotenv: Path | None) -> dict[str, Any]:
    from dynaconf.utils.parse_conf import parse_conf_data

    values: dict[str, str] = {}
    if dotenv is not None and dotenv.is_file():
        from dynaconf.vendor.dotenv import dotenv_values

        read_dotenv: Callable[[Path], dict[str, str | None]] = dotenv_values
        values.update({k: v for k, v in read_dotenv(dotenv).items() if v is not None})
    values.update(environ)
    out: dict[str, Any] = {}
    for key, raw in values.items():
        if not key.startswith(ENV_PREFIX) or key in NOT_CONFIG_ENV:
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        value = parse_conf_data(raw, tomlfy=True, box_settings={})
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                nxt = node[p] = {}
            node = nxt
        node[parts[-1]] = _lower_keys(value) if isinstance(value, dict) else value
    return out


def _data_file(name: str) -> Path:
    return Path(str(resources.files("spyoncino") / "data" / name))


@dataclass(frozen=True)
class Layer:
    label: str
    data: dict[str, Any]


def load_layers(
    config_path: Path | None = None,
    secrets_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    dotenv: Path | None = Path(".env"),
) -> list[Layer]:
    env = os.environ if environ is None else environ
    layers = [Layer("default.yaml (packaged)", _load_yaml(_data_file("default.yaml"), "default"))]
    if config_path is None and SYSTEM_CONFIG.is_file():
        config_path = SYSTEM_CONFIG
    if config_path is None:
        layers.append(Layer("demo.yaml (embedded)", _load_yaml(_data_file("demo.yaml"), "demo")))
    else:
        layers.append(Layer(str(config_path), _load_yaml(config_path, str(config_path))))
    env_data = _env_layer(env, dotenv)
    if env_data:
        layers.append(Layer("environment", env_data))
    if secrets_path is None:
        if env.get("SPYONCINO_SECRETS_FILE"):
            secrets_path = Path(env["SPYONCINO_SECRETS_FILE"])
        elif SYSTEM_SECRETS.is_file():
            secrets_path = SYSTEM_SECRETS
    if secrets_path is not None:
        layers.append(Layer(str(secrets_path), _load_yaml(secrets_path, str(secrets_path))))
    return layers


def _get_path(data: Any, loc: Iterable[str | int]) -> tuple[bool, Any]:
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:  # noqa: SIM114 - mypy narrows each branch
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False, None
    return True, node


def value_origin(layers: list[Layer], loc: tuple[str | int, ...]) -> str:
    """The label of the top-most layer that sets exactly ``loc``; else the schema's default."""
    for layer in reversed(layers):
        if _get_path(layer.data, loc)[0]:
            return layer.label
    return "built-in default"


def _origin(layers: list[Layer], loc: tuple[str | int, ...]) -> str:
    for n in range(len(loc), 0, -1):
        for layer in reversed(layers):
            found, _ = _get_path(layer.data, loc[:n])
            if found:
                return layer.label
    return layers[-1].label if layers else "config"


def _is_secret_key(key: str) -> bool:
    return key in {
        "token",
        "password",
        "password_hash",
        "api_token",
        "secret",
        "hmac_secret",
        "secret_access_key",
        "encryption_key",
    }


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def known_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The keys the schema accepts under ``loc`` (``cameras.<id>`` descends into the value)."""
    annotations: list[Any] = [model]
    for part in loc:
        deeper: list[Any] = []
        for ann in annotations:
            if get_origin(ann) is dict:
                deeper.append(get_args(ann)[1])
            for m in _models_in(ann):
                if str(part) in m.model_fields:
                    deeper.append(m.model_fields[str(part)].annotation)
        annotations = deeper
    return sorted({k for ann in annotations for m in _models_in(ann) for k in m.model_fields})


def format_errors(
    exc: ValidationError, layers: list[Layer], model: type[BaseModel] | None = None
) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic puts the union member / model name in loc for optional sub-models
        loc = tuple(p for p in loc if not (isinstance(p, str) and p[:1].isupper()))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        origin = _origin(layers, loc)
        if err["type"] == "extra_forbidden":
            hint = ""
            if model is not None and loc:
                close = difflib.get_close_matches(str(loc[-1]), known_keys(model, loc[:-1]), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(f"{origin}: {dotted}: unknown key{hint}")
            continue
        value = err.get("input")
        shown = REDACTED if loc and _is_secret_key(str(loc[-1])) else _short(value)
        out.append(f"{origin}: {dotted}: {err['msg']} (got {shown})")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate(model: type[AppConfig], layers: list[Layer]) -> AppConfig:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer.data)
    try:
        return model.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_errors(e, layers, model)) from e


# -- redaction ---------------------------------------------------------------------------------
_URL_CREDS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<creds>[^/@\s]+)@")


def redact_url(url: str) -> str:
    """``rtsp://user:pass@host/x`` -> ``rtsp://***@host/x``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_CREDS.sub(r"\g<scheme>***@", url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{REDACTED}@{host}", parts.path, parts.query, parts.fragment))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    out = _URL_CREDS.sub(r"\g<scheme>***@", text)
    for s in secrets:
        if s and len(s) >= 4:
            out = out.replace(s, REDACTED)
    return out


def redacted_dict(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            k: (REDACTED if _is_secret_key(k) and v not in (None, "") else redacted_dict(v))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redacted_dict(v) for v in data]
    if isinstance(data, str):
        return redact_url(data) if "://" in data else data
    return data


def dump_config(app: AppConfig) -> dict[str, Any]:
    """The configuration as plain data with every secret replaced by ``***``."""
    return cast("dict[str, Any]", redacted_dict(app.model_dump(mode="json")))


def secret_values(app: BaseModel) -> list[str]:
    """Every secret in ``app`` (for scrubbing logs)."""
    out: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, SecretStr):
            out.append(obj.get_secret_value())
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                walk(getattr(obj, name))
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif isinstance(obj, str) and "://" in obj:
            parts = urlsplit(obj)
            if parts.password:
                out.append(parts.password)

    walk(app)
    return [s for s in out if s]


def with_profile_layer(model: type[AppConfig], layers: list[Layer]) -> list[Layer]:
    """Insert the hardware profile's defaults just above the packaged defaults.

    The profile is the one ``runtime.hardware_profile`` names (any layer may set it) or the
    one detected from the device tree. Each installed module's section contributes its own
    defaults (``ModuleConfig.profile_defaults``); core names none of them.
    """
    from spyoncino.core.contracts import ModuleConfig
    from spyoncino.platform.profiles import ProfileError, detect_profile

    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer.data)
    override = (merged.get("runtime") or {}).get("hardware_profile")
    try:
        profile, reason = detect_profile(override=override)
    except ProfileError as e:
        raise ConfigError([f"{_origin(layers, ('runtime', 'hardware_profile'))}: {e}"]) from e
    data: dict[str, Any] = {
        "runtime": {
            "workers": profile.runtime.workers,
            "camera_buffer_mb": profile.camera.buffer_mb,
            "camera_max_fps": profile.camera.max_fps,
        }
    }
    for name, info in model.model_fields.items():  # each module says what the board means
        section = info.annotation
        if isinstance(section, type) and issubclass(section, ModuleConfig):
            defaults = section.profile_defaults(profile)
            if defaults:
                data[name] = defaults
    return [layers[0], Layer(f"hardware profile {profile.name} ({reason})", data), *layers[1:]]


# -- the service -------------------------------------------------------------------------------
Reconfigure = Callable[[AppConfig, AppConfig], Awaitable[list[str]]]


@dataclass(frozen=True)
class ApplyResult:
    ok: bool
    version: int
    changed_modules: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    #: applied, but something the user should know (e.g. it could not be saved)
    warnings: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        return "; ".join(self.errors)


class ConfigService:
    """Holds the configuration in force and applies partial updates transactionally."""

    def __init__(self, model: type[AppConfig], layers: list[Layer]) -> None:
        self.model = model
        self.layers = list(layers)
        self.current = validate(model, self.layers)
        self.version = 1
        self._overrides: dict[str, Any] = {}
        #: where accepted changes are saved (None: they live in memory only)
        self.overlay_path: Path | None = None
        #: why a saved overlay was set aside at load, for the log and the status page
        self.overlay_error: str | None = None

    @classmethod
    def load(
        cls,
        model: type[AppConfig],
        config_path: Path | None = None,
        secrets_path: Path | None = None,
        environ: Mapping[str, str] | None = None,
        overlay_path: Path | Literal["auto"] | None = None,
    ) -> ConfigService:
        """The layered config; with ``overlay_path`` the saved changes sit above the file.

        ``"auto"`` keeps them in ``<storage.root>/config.overlay.yaml``, the service's state
        directory, so a change made on the status page, from Telegram or the API survives a
        restart. Only the running service asks for it; commands that inspect a config file
        (``check-config FILE`` passes ``"auto"`` too, to show what the service will run).
        """
        layers = load_layers(config_path, secrets_path, environ)
        service = cls(model, with_profile_layer(model, layers))
        if overlay_path == "auto":
            overlay_path = service.current.storage.root / OVERLAY_NAME
        if overlay_path is not None:
            service.attach_overlay(overlay_path)
        return service

    def attach_overlay(self, path: Path) -> None:
        """Load the changes saved at ``path`` as the layer above the config file."""
        self.overlay_path = path
        saved_secrets = secrets_overlay_path(path)
        try:
            data = _load_yaml(path, str(path)) if path.is_file() else {}
            if saved_secrets.is_file():
                data = deep_merge(data, _load_yaml(saved_secrets, str(saved_secrets)))
            if not data:
                return
            layers = [*self.layers]
            layers.insert(min(3, len(layers)), Layer(f"{path} (saved changes)", data))
            current = validate(self.model, layers)
        except ConfigError as e:
            # a machine-written file must never keep the box from starting: set it aside
            self.overlay_error = f"{path}: saved changes ignored: " + "; ".join(e.errors)
            return
        self.layers, self.current, self._overrides = layers, current, data

    @property
    def sources(self) -> list[str]:
        return [layer.label for layer in self.layers]

    def preview(self, changes: Mapping[str, Any]) -> AppConfig:
        """Validate ``changes`` on top of the current config without applying them."""
        overrides = deep_merge(self._overrides, _lower_keys(dict(changes)))
        return validate(self.model, [*self.layers, Layer("update", overrides)])

    async def apply_changes(
        self, changes: Mapping[str, Any], reconfigure: Reconfigure
    ) -> ApplyResult:
        """Validate, then let ``reconfigure(old, new)`` apply; it rolls back itself on error."""
        try:
            new = self.preview(changes)
        except ConfigError as e:
            return ApplyResult(False, self.version, errors=tuple(e.errors))
        old = self.current
        try:
            changed = await reconfigure(old, new)
        except Exception as e:
            return ApplyResult(False, self.version, errors=(str(e) or repr(e),))
        overrides = deep_merge(self._overrides, _lower_keys(dict(changes)))
        warnings: tuple[str, ...] = ()
        if self.overlay_path is not None:
            try:
                await asyncio.to_thread(save_overlays, self.overlay_path, overrides)
            except OSError as e:
                # applied but not saved: say so rather than pretend it will survive a restart
                warnings = (f"applied but not saved ({e.strerror or e}): lost at restart",)
        self.current = new
        self._overrides = overrides
        self.version += 1
        return ApplyResult(True, self.version, tuple(changed), warnings=warnings)


OVERLAY_NAME = "config.overlay.yaml"
#: the secrets among the saved changes (a bot token typed on the status page), owner-only
SECRETS_OVERLAY_NAME = "secrets.overlay.yaml"


def secrets_overlay_path(overlay: Path) -> Path:
    return overlay.with_name(SECRETS_OVERLAY_NAME)


def split_secrets(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``data`` as (everything but the secrets, the secrets alone), the same nesting."""
    plain: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            p, s = split_secrets(value)
            if p or not s:
                plain[key] = p
            if s:
                secret[key] = s
        elif _is_secret_key(str(key)) and value not in (None, ""):
            secret[key] = value
        else:
            plain[key] = value
    return plain, secret


def save_overlays(path: Path, data: Mapping[str, Any]) -> None:
    """The saved changes at ``path`` and their secrets beside it (mode 0600), both atomic.

    The status page's Telegram form sends the bot token through ``config.update`` like any
    change; it is kept out of the overlay (0640, shown by ``check-config --show``) and in
    ``secrets.overlay.yaml``, readable by the service's user only."""
    plain, secret = split_secrets(data)
    spath = secrets_overlay_path(path)
    if secret or spath.exists():
        save_overlay(spath, secret, mode=0o600, what="Secrets")
    save_overlay(path, plain)


def save_overlay(
    path: Path, data: Mapping[str, Any], *, mode: int = 0o640, what: str = "Changes"
) -> None:
    """Write the saved changes atomically: temp + fsync + rename; the previous kept as .bak."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        f"# {what} made on the status page, from Telegram or the API, applied above "
        "config.yaml.\n"
        "# Written by spyoncino; delete this file to go back to config.yaml alone.\n"
        + yaml.safe_dump(dict(data), sort_keys=True)
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():  # the previous version, by a hard link renamed into place
            bak = path.with_name(f".{path.name}.bak.tmp")
            bak.unlink(missing_ok=True)
            os.link(path, bak)
            os.replace(bak, path.with_name(path.name + ".bak"))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def module_view(app: AppConfig, name: str, *, camera_id: str | None = None) -> Any:
    """What of ``app`` a module named ``name`` sees; used to decide who must reconfigure."""
    section = getattr(app, name, None)
    cams: dict[str, Any] = {}
    for cid, cam in app.cameras.items():
        if camera_id is not None and cid != camera_id:
            continue
        cams[cid] = (
            cam.model_dump(mode="json")
            if camera_id
            else (
                cam.source,
                cam.enabled,
                getattr(cam, name, None),
            )
        )
    return (section, cams, app.storage)


__all__ = [
    "REDACTED",
    "AppConfig",
    "ApplyResult",
    "BusConfig",
    "CameraBase",
    "ConfigError",
    "ConfigService",
    "LogConfig",
    "StorageConfig",
    "build_app_model",
    "dump_config",
    "load_layers",
    "redact_url",
    "secret_values",
]
