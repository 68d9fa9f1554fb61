from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import structlog
from pydantic import Field, SecretStr

from spyoncino.core.config import (
    AppConfig,
    ConfigError,
    ConfigService,
    build_app_model,
    dump_config,
    load_layers,
    redact_url,
    secret_values,
)
from spyoncino.core.contracts import BaseModule, CameraOptions, ModuleConfig
from spyoncino.core.logging import add_secrets, setup_logging
from spyoncino.core.orchestrator import discover


class ChatConfig(ModuleConfig):
    type: Literal["chat"] = "chat"
    token: SecretStr | None = Field(default=None, description="bot token")
    chat_ids: list[int] = Field(default_factory=list, description="who gets alerts")
    api_base_url: str = Field(default="https://api.example.invalid", description="API")
    retries: int = Field(default=3, ge=0, le=10, description="retries")
    retired: ClassVar[dict[str, str]] = {"poll_s": "nothing: the chat is pushed to"}


class ChatCamera(CameraOptions):
    silent: bool = Field(default=False, description="no sound")
    retired: ClassVar[dict[str, str]] = {"loud": "silent"}


class Chat(BaseModule):
    Config: ClassVar[type[ModuleConfig]] = ChatConfig
    Camera: ClassVar[type[CameraOptions] | None] = ChatCamera

    async def configure(self, app: AppConfig) -> None:
        pass

    async def start(self) -> None:
        pass


MODEL = build_app_model({**discover(), "chat": Chat})


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def load(
    tmp_path: Path,
    config: str | None,
    env: dict[str, str] | None = None,
    secrets: str | None = None,
) -> ConfigService:
    cfg = write(tmp_path, "config.yaml", config) if config is not None else None
    sec = write(tmp_path, "secrets.yaml", secrets) if secrets is not None else None
    return ConfigService(MODEL, load_layers(cfg, sec, env or {}, dotenv=tmp_path / ".env"))


def test_embedded_demo_applies_without_a_file(tmp_path: Path) -> None:
    app = load(tmp_path, None).current
    assert list(app.cameras) == ["sample"]
    assert app.cameras["sample"].source == "spyoncino:sample.mp4"
    assert app.storage.root == Path("./var/spyoncino")


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    config = """
cameras:
  front_door:
    source: /tmp/front.mp4
    chat: {silent: true}
chat:
  chat_ids: [1]
  api_base_url: http://127.0.0.1:9
  retries: 1
storage:
  root: /tmp/x
"""
    # packaged default says /var/lib/spyoncino; the file overrides it
    app = load(tmp_path, config).current
    assert app.storage.root == Path("/tmp/x")
    assert app.log.level == "info"  # from the packaged default, untouched by the file
    assert list(app.cameras) == ["front_door"]  # the demo camera is not merged in
    chat = app.section("chat", ChatConfig)
    assert chat.chat_ids == [1] and chat.retries == 1
    assert app.cameras["front_door"].options("chat", ChatCamera).silent is True
    # the environment overrides the file, keeping the file's other keys
    env = {
        "SPYONCINO_CHAT__CHAT_IDS": "[1,2]",
        "SPYONCINO_CHAT__TOKEN": "123:from-env",
        "SPYONCINO_LOG__LEVEL": "debug",
    }
    app = load(tmp_path, config, env).current
    chat = app.section("chat", ChatConfig)
    assert chat.chat_ids == [1, 2]
    assert chat.api_base_url == "http://127.0.0.1:9"
    assert chat.token is not None and chat.token.get_secret_value() == "123:from-env"
    assert app.log.level == "debug"
    # the secrets file overrides the environment
    app = load(tmp_path, config, env, secrets="chat:\n  token: '123:from-secrets'\n").current
    chat = app.section("chat", ChatConfig)
    assert chat.token is not None and chat.token.get_secret_value() == "123:from-secrets"
    assert chat.chat_ids == [1, 2]


def test_dotenv_is_read_but_the_real_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SPYONCINO_CHAT__RETRIES=7\nSPYONCINO_LOG__LEVEL=error\n")
    app = load(tmp_path, None, {"SPYONCINO_LOG__LEVEL": "warning"}).current
    assert app.section("chat", ChatConfig).retries == 7
    assert app.log.level == "warning"


def test_env_can_add_a_camera(tmp_path: Path) -> None:
    app = load(tmp_path, None, {"SPYONCINO_CAMERAS__GARAGE__SOURCE": "/tmp/g.mp4"}).current
    assert set(app.cameras) == {"sample", "garage"}


def test_the_programs_own_knobs_in_the_environment_are_not_config(tmp_path: Path) -> None:
    # SPYONCINO_CHECK_PAYLOADS=1 (the bus's run-time payload check) once failed every start
    # with "check_payloads: unknown key"
    (tmp_path / "s.yaml").write_text("{}\n")
    env = {"SPYONCINO_CHECK_PAYLOADS": "1", "SPYONCINO_SECRETS_FILE": str(tmp_path / "s.yaml")}
    app = load(tmp_path, None, env).current
    assert set(app.cameras) == {"sample"}


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "cameras:\n  a: {source: x\n")
    (err,) = exc.value.errors
    assert "config.yaml:" in err and "invalid YAML" in err
    assert ":3:" in err or ":2:" in err


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(tmp_path, "- a\n- b\n")


def test_unknown_key_names_file_and_dotted_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "chat:\n  chat_idz: [1]\n")
    assert exc.value.errors == [
        f"{tmp_path / 'config.yaml'}: chat.chat_idz: unknown key (did you mean 'chat_ids'?)"
    ]


def test_a_retired_key_from_an_older_release_loads_and_is_named(tmp_path: Path) -> None:
    """A config file written for the release before still loads after an update (the
    updater's check-config would otherwise refuse the update), and the log names each key
    that is no longer read and what replaced it; a typo of a live key is still an error."""
    out = io.StringIO()
    setup_logging(level="INFO", stream=out)
    cfg = load(
        tmp_path,
        "chat:\n  poll_s: 5\n  retries: 4\ncameras:\n  a: {source: x.mp4, chat: {loud: true}}\n",
    ).current
    assert cfg.chat.retries == 4  # type: ignore[attr-defined]
    warned = [json.loads(line) for line in out.getvalue().splitlines() if "retired" in line]
    assert {(w["key"], w["instead"]) for w in warned} == {
        ("chat.poll_s", "nothing: the chat is pushed to"),
        ("ChatCamera.loud", "silent"),
    }
    with pytest.raises(ConfigError, match=r"chat\.pol_s: unknown key"):
        load(tmp_path, "chat:\n  pol_s: 5\n")


def test_unknown_key_suggests_only_a_close_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "cameras:\n  a:\n    source: x.mp4\n    sorce: y\n    zzz: 1\n")
    assert any(
        "cameras.a.sorce: unknown key (did you mean 'source'?)" in e for e in exc.value.errors
    )
    assert any(e.endswith("cameras.a.zzz: unknown key") for e in exc.value.errors)


def test_unknown_camera_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "cameras:\n  a:\n    source: x.mp4\n    fps: 5\n")
    assert "cameras.a.fps: unknown key" in exc.value.errors[0]


def test_wrong_type_names_key_value_and_expectation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "chat:\n  retries: lots\n")
    (err,) = exc.value.errors
    assert err.startswith(str(tmp_path / "config.yaml"))
    assert "chat.retries" in err and "'lots'" in err and "integer" in err


def test_out_of_range_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "chat:\n  retries: 50\n")
    (err,) = exc.value.errors
    assert "chat.retries" in err and "less than or equal to 10" in err and "50" in err


def test_error_blames_the_environment_when_it_set_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "chat:\n  retries: 2\n", {"SPYONCINO_CHAT__RETRIES": "99"})
    assert exc.value.errors[0].startswith("environment: chat.retries")


def test_every_error_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "chat:\n  retries: 50\n  nope: 1\nlog:\n  level: loud\n")
    assert len(exc.value.errors) == 3


def test_camera_ids_must_be_safe_for_topics_and_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="camera id"):
        load(tmp_path, "cameras:\n  'Front Door':\n    source: x.mp4\n")
    # "$" matches before a trailing newline: such an id made a folder with a newline in it
    with pytest.raises(ConfigError, match="camera id"):
        load(tmp_path, 'cameras:\n  "gate\\n":\n    source: x.mp4\n')


def test_camera_fields_and_count_are_bounded(tmp_path: Path) -> None:
    """A name with a newline or 10,000 characters went into captions, pages and logs."""
    for bad in (
        'cameras:\n  gate:\n    source: x.mp4\n    name: "Gate\\nFAKE ALERT"\n',
        f"cameras:\n  gate:\n    source: x.mp4\n    name: {'n' * 200}\n",
        f"cameras:\n  gate:\n    source: {'x' * 5000}.mp4\n",
        "cameras:\n  gate:\n    source: ''\n",
        "cameras:\n" + "".join(f"  c{i}:\n    source: x.mp4\n" for i in range(65)),
    ):
        with pytest.raises(ConfigError):
            load(tmp_path, bad)
    ok = load(tmp_path, "cameras:\n  gate:\n    source: x.mp4\n    name: Front gate 2\n")
    assert ok.current.cameras["gate"].name == "Front gate 2"


def test_secrets_are_redacted_in_dumps_and_errors(tmp_path: Path) -> None:
    svc = load(
        tmp_path,
        "cameras:\n  gate:\n    source: rtsp://admin:hunter22@10.0.0.5/stream\n",
        {"SPYONCINO_CHAT__TOKEN": "123456:SECRET-TOKEN"},
    )
    dumped = json.dumps(dump_config(svc.current))
    assert "SECRET-TOKEN" not in dumped and "hunter22" not in dumped
    assert '"token": "***"' in dumped
    assert "rtsp://***@10.0.0.5/stream" in dumped
    assert set(secret_values(svc.current)) == {"123456:SECRET-TOKEN", "hunter22"}
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, None, {"SPYONCINO_CHAT__TOKEN": '@json ["not-a-string-SECRET"]'})
    assert "SECRET" not in str(exc.value)


def test_secrets_never_reach_a_log_line() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    add_secrets(["123456:SECRET-TOKEN"])
    log = structlog.get_logger("t")
    log.info("sending", url="https://api/bot123456:SECRET-TOKEN/sendPhoto", token="x")
    log.info("camera", source="rtsp://admin:hunter22@10.0.0.5/s")
    text = out.getvalue()
    assert "SECRET-TOKEN" not in text and "hunter22" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["token"] == "***"
    assert "***" in lines[0]["url"]
    assert lines[1]["source"] == "rtsp://***@10.0.0.5/s"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://u:p@h:554/x", "rtsp://***@h:554/x"),
        ("rtsp://h/x", "rtsp://h/x"),
        ("http://token@h/", "http://***@h/"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


async def test_preview_and_apply_changes(tmp_path: Path) -> None:
    svc = load(tmp_path, "chat:\n  retries: 2\n")
    calls: list[tuple[Any, Any]] = []

    async def reconfigure(old: AppConfig, new: AppConfig) -> list[str]:
        calls.append((old, new))
        return ["chat"]

    result = await svc.apply_changes({"chat": {"retries": 4}}, reconfigure)
    assert result.ok and result.version == 2 and result.changed_modules == ("chat",)
    assert svc.current.section("chat", ChatConfig).retries == 4
    # a later update keeps the earlier one
    result = await svc.apply_changes({"log": {"level": "debug"}}, reconfigure)
    assert svc.current.section("chat", ChatConfig).retries == 4
    bad = await svc.apply_changes({"chat": {"retries": -1}}, reconfigure)
    assert not bad.ok and "chat.retries" in bad.reason and bad.version == 3
    assert svc.current.section("chat", ChatConfig).retries == 4

    async def refuse(old: AppConfig, new: AppConfig) -> list[str]:
        raise RuntimeError("module x refused")

    refused = await svc.apply_changes({"chat": {"retries": 5}}, refuse)
    assert not refused.ok and "refused" in refused.reason
    assert svc.current.section("chat", ChatConfig).retries == 4


def test_hardware_profile_defaults_sit_below_the_users_settings(tmp_path: Path) -> None:
    cfg = write(tmp_path, "config.yaml", "cameras: {}\nruntime:\n  hardware_profile: pi-zero-2w\n")
    svc = ConfigService.load(MODEL, config_path=cfg, environ={})
    assert any(label.startswith("hardware profile pi-zero-2w") for label in svc.sources)
    assert svc.current.runtime.workers == 2
    assert svc.current.model_dump()["motion"]["width"] == 160
    mine = write(
        tmp_path, "config.yaml", "runtime:\n  hardware_profile: pi-zero-2w\n  workers: 3\n"
    )
    assert ConfigService.load(MODEL, config_path=mine, environ={}).current.runtime.workers == 3


def test_a_profile_with_threads_0_gives_the_detector_one_thread_per_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generic-x86 says 0 (one per CPU core; ``spyoncino doctor`` says so): a 6-core PC infers
    on 6 threads, not on the detector's fallback of 2; a number the owner sets still wins."""
    monkeypatch.setattr("os.cpu_count", lambda: 6)

    def threads(text: str) -> int:
        cfg = write(tmp_path, "config.yaml", text)
        app = ConfigService.load(MODEL, config_path=cfg, environ={}).current
        return int(app.model_dump()["detector"]["num_threads"])

    assert threads("cameras: {}\nruntime:\n  hardware_profile: generic-x86\n") == 6
    assert threads("cameras: {}\nruntime:\n  hardware_profile: pi-3b-plus\n") == 3
    mine = "runtime:\n  hardware_profile: generic-x86\ndetector:\n  num_threads: 1\n"
    assert threads(mine) == 1


def on_boards(tmp_path: Path) -> dict[str, Any]:
    """The configuration in force with nothing set but the board, for three boards."""
    apps = {}
    for board in ("pi-zero-2w", "pi-4", "generic-x86"):
        cfg = write(
            tmp_path, "config.yaml", f"cameras: {{}}\nruntime:\n  hardware_profile: {board}\n"
        )
        apps[board] = ConfigService.load(MODEL, config_path=cfg, environ={}).current
    return apps


def test_each_camera_gets_its_buffer_budget_from_the_board(tmp_path: Path) -> None:
    """A Pi Zero 2 W holds 16 MB of video per camera, a PC 64 MB; the owner may set another."""
    assert {b: a.runtime.camera_buffer_mb for b, a in on_boards(tmp_path).items()} == {
        "pi-zero-2w": 16,
        "pi-4": 32,
        "generic-x86": 64,
    }
    mine = write(
        tmp_path, "config.yaml", "runtime:\n  hardware_profile: pi-zero-2w\n  camera_buffer_mb: 8\n"
    )
    assert (
        ConfigService.load(MODEL, config_path=mine, environ={}).current.runtime.camera_buffer_mb
        == 8
    )


def test_a_camera_that_sets_no_frame_rate_is_held_to_the_boards(tmp_path: Path) -> None:
    """The profile's frame rate (``spyoncino doctor`` prints "up to N fps") is what a camera
    without its own ``max_fps`` is processed at: a 25 fps camera on a Pi Zero 2 W costs 5 fps
    of work, not 25; the owner's runtime figure, then the camera's own, win over it."""
    assert {b: a.runtime.camera_max_fps for b, a in on_boards(tmp_path).items()} == {
        "pi-zero-2w": 5,
        "pi-4": 10,
        "generic-x86": 15,
    }
    mine = write(
        tmp_path,
        "config.yaml",
        "runtime:\n  hardware_profile: pi-zero-2w\n  camera_max_fps: 8\n"
        "cameras:\n  door: {source: rtsp://cam/door}\n"
        "  yard: {source: rtsp://cam/yard, max_fps: 2}\n",
    )
    app = ConfigService.load(MODEL, config_path=mine, environ={}).current
    assert app.runtime.camera_max_fps == 8
    assert {cid: app.frame_cap(cid) for cid in app.cameras} == {"door": 8, "yard": 2}


def test_the_profiles_model_is_the_default_below_the_users_choice(tmp_path: Path) -> None:
    """A Pi Zero 2 W gets the lighter person model unless the owner picks one."""
    cfg = write(tmp_path, "config.yaml", "cameras: {}\nruntime:\n  hardware_profile: pi-zero-2w\n")
    svc = ConfigService.load(MODEL, config_path=cfg, environ={})
    model = svc.current.model_dump()["detector"]["model"]
    assert model == "spyoncino:models/person_ssdlite_mobilenet_v2_int8.tflite"
    mine = write(
        tmp_path,
        "config.yaml",
        "runtime:\n  hardware_profile: pi-zero-2w\ndetector:\n  model: /srv/my.tflite\n",
    )
    chosen = ConfigService.load(MODEL, config_path=mine, environ={}).current.model_dump()
    assert chosen["detector"]["model"] == "/srv/my.tflite"


def test_unknown_hardware_profile_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        ConfigService.load(MODEL, environ={"SPYONCINO_RUNTIME__HARDWARE_PROFILE": "pi-9"})
    assert exc.value.errors[0].startswith("environment:")
    assert "pi-9" in exc.value.errors[0]
