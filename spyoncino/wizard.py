"""``spyoncino setup``: a camera and Telegram alerts in a few answers, no YAML to write.

The wizard runs in a terminal (or with answers piped in, one a line):

1. it lists the cameras this box can see (what ``spyoncino doctor`` finds: Pi camera modules,
   USB cameras by their stable ``/dev/v4l/by-id`` name) and lets the owner pick one, or type
   an RTSP URL or a video file;
2. it opens the source and grabs one test frame, saved as a JPEG the owner can look at;
3. optionally, it asks for a Telegram bot token, checks it with ``getMe``, asks the owner to
   send ``/start`` to the bot, and adds that chat to the allowlist only after the owner
   confirms it here, on the box (never whoever writes first);
4. it writes ``config.yaml`` and ``secrets.yaml`` atomically (temp file, fsync, rename; the
   previous version kept as ``*.bak``) and validates the result exactly as ``check-config``.

This is an operator's command, not part of the service, so it uses plain blocking I/O.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spyoncino.core.config import CAMERA_ID
from spyoncino.helpers.sources import found_cameras, grab_frame

DEFAULT_API = "https://api.telegram.org"
#: how long the wizard waits for the owner's /start
START_WAIT_S = 120.0


class Cancelled(Exception):
    """The owner pressed Ctrl-C / Ctrl-D or answered 'q'."""


@dataclass
class Answers:
    cameras: dict[str, str] = field(default_factory=dict)
    token: str | None = None
    chat_ids: list[int] = field(default_factory=list)


Ask = Callable[[str], str]


def _ask(prompt: str) -> str:
    try:
        answer = input(prompt)
    except (EOFError, KeyboardInterrupt) as e:
        raise Cancelled from e
    if answer.strip().lower() == "q":
        raise Cancelled
    return answer.strip()


# -- Telegram (plain Bot API over HTTPS; the wizard needs three calls) -------------------------
def bot_call(api: str, token: str, method: str, timeout_s: float = 35.0, **params: Any) -> Any:
    url = f"{api.rstrip('/')}/bot{token}/{method}"
    data = json.dumps(params).encode()
    req = urllib.request.Request(  # noqa: S310 - the URL is the configured Bot API
        url, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RuntimeError(f"cannot reach the Telegram Bot API at {api}: {e}") from e
    if not body.get("ok"):
        raise RuntimeError(f"Telegram said: {body.get('description', 'not ok')}")
    return body["result"]


def telegram_setup(ask: Ask, say: Callable[[str], None], api: str, answers: Answers) -> None:
    token = ask("Telegram bot token from @BotFather (Enter to skip): ")
    if not token:
        return
    try:
        me = bot_call(api, token, "getMe")
    except RuntimeError as e:
        say(f"  that token did not work: {e}; Telegram is left out (run setup again)")
        return
    bot = me.get("username", "your bot")
    answers.token = token
    say(f"  found @{bot}. Now send /start to @{bot} from the phone that should get alerts.")
    offset = 0
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        try:
            updates = bot_call(api, token, "getUpdates", offset=offset, timeout=5)
        except RuntimeError as e:
            say(f"  {e}")
            return
        for update in updates:
            offset = max(offset, int(update["update_id"]) + 1)
            msg = update.get("message") or {}
            chat = msg.get("chat") or {}
            if "id" not in chat or int(chat["id"]) in answers.chat_ids:
                continue
            who = chat.get("title") or " ".join(
                str(p) for p in (chat.get("first_name"), chat.get("last_name")) if p
            )
            text = str(msg.get("text", ""))[:40]
            reply = ask(
                f"  message {text!r} from {who or '?'} (chat {chat['id']}): allow it? [y/N] "
            )
            if reply.lower() in ("y", "yes"):
                answers.chat_ids.append(int(chat["id"]))
                with contextlib.suppress(RuntimeError):
                    bot_call(
                        api,
                        token,
                        "sendMessage",
                        chat_id=chat["id"],
                        text="Spyoncino: this chat now gets the alerts.",
                    )
                return
    say("  no /start arrived; the token is kept, add chat ids later with setup or the config")


# -- writing -----------------------------------------------------------------------------------
def write_atomic(path: Path, text: str, mode: int = 0o640) -> None:
    """temp + fsync + rename, the previous version kept as ``<name>.bak``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if os.geteuid() == 0:  # root:spyoncino like the folder, so the service can read it
        os.chown(tmp, -1, path.parent.stat().st_gid)
    if path.exists():
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(path.name + ".bak"))
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    return data


def merge(config: dict[str, Any], secrets: dict[str, Any], answers: Answers) -> None:
    cameras = config.setdefault("cameras", {}) or {}
    config["cameras"] = cameras
    for cid, source in answers.cameras.items():
        cam = dict(cameras.get(cid) or {})
        cam["source"] = source
        cameras[cid] = cam
    if answers.token:
        secrets.setdefault("telegram", {})["token"] = answers.token
    if answers.chat_ids:
        tg = config.setdefault("telegram", {})
        tg["chat_ids"] = sorted({*tg.get("chat_ids", []), *answers.chat_ids})


def pick_camera(ask: Ask, say: Callable[[str], None], frame_out: Path, answers: Answers) -> None:
    found = found_cameras()
    say("Cameras this box can see:" if found else "No camera module or USB camera found.")
    for i, c in enumerate(found, 1):
        say(f"  [{i}] {c.label}  ({c.source})")
    say("  [r] an RTSP camera (type its URL)   [f] a video file   [s] skip")
    while True:
        pick = ask("Which camera? ").lower()
        if pick == "s" or (not pick and not found):
            return
        if pick.isdigit() and 1 <= int(pick) <= len(found):
            source, name = found[int(pick) - 1].source, found[int(pick) - 1].name
        elif pick == "r":
            source, name = ask("RTSP URL (rtsp://user:pass@host/stream): "), "ipcam"
        elif pick == "f":
            source, name = ask("video file path: "), "file"
        else:
            say("  answer a number, r, f or s (q quits)")
            continue
        result = grab_frame(source, frame_out)
        say(f"  {result}")
        if not result.startswith(("got", "a Pi camera")) and ask(
            "  keep it anyway? [y/N] "
        ).lower() not in ("y", "yes"):
            continue
        while True:
            cid = ask(f"Name for this camera [{name}]: ") or name
            if CAMERA_ID.fullmatch(cid):
                break
            say("  lowercase letters, digits, '_' or '-', at most 32")
        if "://" not in source and not source.startswith("/dev/"):
            source = str(Path(source).expanduser().resolve())
        answers.cameras[cid] = source
        return


def run_setup(
    config_path: Path,
    secrets_path: Path,
    api: str = DEFAULT_API,
    frame_out: Path | None = None,
    ask: Ask = _ask,
    say: Callable[[str], None] = print,
) -> int:
    """The whole dialogue; returns the exit code (0 written and valid, 2 invalid, 130 quit)."""
    from spyoncino.cli._common import preflight
    from spyoncino.core.config import ConfigError, ConfigService, build_app_model
    from spyoncino.core.orchestrator import discover

    frame_out = frame_out or config_path.parent / "setup-test-frame.jpg"
    answers = Answers()
    try:
        config, secrets = _load_yaml(config_path), _load_yaml(secrets_path)
        say(f"Setting up {config_path} (q quits, nothing is written until the end).")
        pick_camera(ask, say, frame_out, answers)
        telegram_setup(ask, say, api, answers)
    except Cancelled:
        say("\ncancelled; nothing was written")
        return 130
    except ValueError as e:
        say(f"setup: {e}")
        return 2
    merge(config, secrets, answers)
    write_atomic(
        config_path, "# written by spyoncino setup\n" + yaml.safe_dump(config, sort_keys=False)
    )
    if answers.token:
        write_atomic(secrets_path, yaml.safe_dump(secrets, sort_keys=False))
    say(f"wrote {config_path}" + (f" and {secrets_path}" if answers.token else ""))
    try:
        registry = discover()
        service = ConfigService.load(
            build_app_model(registry),
            config_path=config_path,
            secrets_path=secrets_path if secrets_path.is_file() else None,
        )
        problems = preflight(registry, service.current)
        if problems:
            raise ConfigError(problems)
    except ConfigError as e:
        say("but the configuration has problems:")
        for err in e.errors:
            say(f"  - {err}")
        return 2
    say("the configuration is valid. Restart the service to use it: systemctl restart spyoncino")
    return 0


def main(args: Any) -> int:
    config = Path(args.config)
    secrets = Path(args.secrets) if args.secrets else config.with_name("secrets.yaml")
    frame = Path(args.frame) if args.frame else None
    code = run_setup(config, secrets, args.telegram_api_url, frame)
    sys.stdout.flush()
    return code
