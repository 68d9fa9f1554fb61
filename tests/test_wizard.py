"""``spyoncino setup`` driven through its prompts, as an owner answers them."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import cv2
import yaml

from tests.integration.test_run_demo import run_cli
from tests.support.botapi import BotApiEmulator, botapi  # noqa: F401 - the fixture

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
SAMPLE = Path(__file__).resolve().parents[1] / "spyoncino" / "data" / "sample.mp4"


class Dialogue:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen = ""

    async def expect(self, text: str, timeout: float = 60) -> None:
        assert self.proc.stdout is not None

        async def read() -> None:
            assert self.proc.stdout is not None
            while text not in self.seen:
                chunk = await self.proc.stdout.read(1024)
                if not chunk:
                    raise AssertionError(f"{text!r} never came; output: {self.seen}")
                self.seen += chunk.decode()

        await asyncio.wait_for(read(), timeout)

    async def answer(self, prompt: str, text: str) -> None:
        await self.expect(prompt)
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()
        self.seen = self.seen[self.seen.index(prompt) + len(prompt) :]

    async def finish(self) -> int:
        out, _ = await asyncio.wait_for(self.proc.communicate(), 60)
        self.seen += out.decode()
        return self.proc.returncode or 0


async def start(tmp_path: Path, api: str) -> Dialogue:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPYONCINO_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spyoncino",
        "setup",
        "--config",
        str(tmp_path / "etc" / "config.yaml"),
        "--telegram-api-url",
        api,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env=env,
    )
    return Dialogue(proc)


async def test_setup_writes_a_camera_and_a_confirmed_chat(
    tmp_path: Path,
    botapi: BotApiEmulator,  # noqa: F811
) -> None:
    talk = await start(tmp_path, botapi.base_url)
    await talk.answer("Which camera? ", "f")
    await talk.answer("video file path: ", str(SAMPLE))
    await talk.expect("got a 768x576 frame")
    await talk.answer("Name for this camera [file]: ", "yard")
    await talk.answer("bot token from @BotFather (Enter to skip): ", TOKEN)
    await talk.expect("send /start to @")
    # a stranger writes first: the owner says no, and only then the owner's own chat
    botapi.push_message(chat_id=666, user_id=666, text="/start")
    await talk.answer("(chat 666): allow it? [y/N] ", "n")
    botapi.push_message(chat_id=4242, user_id=4242, text="/start")
    await talk.answer("(chat 4242): allow it? [y/N] ", "y")
    assert await talk.finish() == 0, talk.seen
    assert "the configuration is valid" in talk.seen

    config = yaml.safe_load((tmp_path / "etc" / "config.yaml").read_text())
    assert config["cameras"] == {"yard": {"source": str(SAMPLE)}}
    assert config["telegram"]["chat_ids"] == [4242]
    secrets = tmp_path / "etc" / "secrets.yaml"
    assert yaml.safe_load(secrets.read_text()) == {"telegram": {"token": TOKEN}}
    assert secrets.stat().st_mode & 0o077 == 0o040  # group-readable, nobody else
    assert TOKEN not in (tmp_path / "etc" / "config.yaml").read_text()
    frame = cv2.imread(str(tmp_path / "etc" / "setup-test-frame.jpg"))
    assert frame is not None
    assert frame.shape[:2] == (576, 768)
    welcomed = [c for c in botapi.calls if c.method == "sendMessage"]
    assert [c.chat_id for c in welcomed] == [4242]

    # what it wrote is what check-config accepts
    res = run_cli(["check-config", "--config", str(tmp_path / "etc" / "config.yaml")], tmp_path)
    assert res.returncode == 0, res.stderr


async def test_a_missing_file_is_refused_until_a_real_one_is_given(
    tmp_path: Path,
    botapi: BotApiEmulator,  # noqa: F811
) -> None:
    talk = await start(tmp_path, botapi.base_url)
    await talk.answer("Which camera? ", "f")
    await talk.answer("video file path: ", str(tmp_path / "nope.mp4"))
    await talk.answer("keep it anyway? [y/N] ", "")
    await talk.answer("Which camera? ", "f")
    await talk.answer("video file path: ", str(SAMPLE))
    await talk.answer("Name for this camera [file]: ", "Bad Name")
    await talk.answer("Name for this camera [file]: ", "")
    await talk.answer("(Enter to skip): ", "")
    assert await talk.finish() == 0, talk.seen
    config = yaml.safe_load((tmp_path / "etc" / "config.yaml").read_text())
    assert config["cameras"] == {"file": {"source": str(SAMPLE)}}
    assert "telegram" not in config
    assert not (tmp_path / "etc" / "secrets.yaml").exists()
    # and it runs: the camera it added records events
    env = {
        "SPYONCINO_CAMERAS__FILE__FILE__PACE": "lockstep",
        "SPYONCINO_STORAGE__ROOT": str(tmp_path / "media"),
        "SPYONCINO_STATUS_PAGE__ENABLED": "false",
    }
    res = run_cli(["run", "--config", str(tmp_path / "etc" / "config.yaml")], tmp_path, env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on 1 camera(s): file" in res.stdout
    index = res.stdout.split("event index")[1].split()[0]
    events = sqlite3.connect(index).execute("SELECT count(*) FROM events WHERE camera_id = 'file'")
    assert events.fetchone()[0] > 0


async def test_quitting_writes_nothing_and_keeps_the_old_config(
    tmp_path: Path,
    botapi: BotApiEmulator,  # noqa: F811
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "config.yaml").write_text("cameras: {old: {source: /dev/video9}}\n")
    talk = await start(tmp_path, botapi.base_url)
    await talk.answer("Which camera? ", "q")
    assert await talk.finish() == 130
    assert "nothing was written" in talk.seen
    assert "old" in (etc / "config.yaml").read_text()
