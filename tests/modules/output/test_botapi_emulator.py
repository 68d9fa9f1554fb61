"""The Bot API emulator itself, as a separate process (how subprocess tests use it)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[3]


async def test_standalone_emulator_serves_records_and_faults(tmp_path: Path) -> None:
    record = tmp_path / "calls.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.botapi",
        "--port",
        "0",
        "--record",
        str(record),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("READY ")
        base = f"http://127.0.0.1:{int(line.split()[1])}"
        bot = f"{base}/bot123:abc"
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{bot}/getMe") as r:
                me = await r.json()
            assert me["result"]["is_bot"] is True
            await s.post(
                f"{base}/_emu/push_message", json={"chat_id": 5, "user_id": 5, "text": "/status"}
            )
            async with s.post(f"{bot}/getUpdates", data={"timeout": "1"}) as r:
                updates = (await r.json())["result"]
            assert updates[0]["message"]["entities"][0]["type"] == "bot_command"
            form = aiohttp.FormData()
            form.add_field("chat_id", "5")
            form.add_field("photo", b"\xff\xd8\xff\xd9", filename="a.jpg")
            async with s.post(f"{bot}/sendPhoto", data=form) as r:
                sent = await r.json()
            assert sent["result"]["chat"]["id"] == 5
            assert sent["result"]["photo"][-1]["file_size"] == 4
            await s.post(f"{base}/_emu/fault", json={"kind": "429", "retry_after": 7})
            async with s.post(f"{bot}/sendMessage", data={"chat_id": "5", "text": "x"}) as r:
                assert r.status == 429
                assert (await r.json())["parameters"]["retry_after"] == 7
            await s.post(f"{base}/_emu/fault", json={"kind": "hang", "method": "sendMessage"})
            t0 = time.monotonic()
            try:
                async with s.post(
                    f"{bot}/sendMessage",
                    data={"chat_id": "5", "text": "y"},
                    timeout=aiohttp.ClientTimeout(total=0.5),
                ):
                    pass
            except TimeoutError:
                pass
            assert time.monotonic() - t0 >= 0.5
            async with s.get(f"{base}/_emu/calls") as r:
                calls = await r.json()
        methods = [(c["method"], c["answered"]) for c in calls]
        assert ("sendPhoto", "ok") in methods
        assert ("sendMessage", "429") in methods
        assert ("sendMessage", "hang") in methods
        assert len(record.read_text().splitlines()) == len(calls)
    finally:
        proc.terminate()
        await proc.wait()
