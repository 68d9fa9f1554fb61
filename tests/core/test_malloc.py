"""glibc malloc settings and trimming (spyoncino.core.malloc) and the runtime's use of them.

The defect: memory a closed activity freed (its clip's packets, the animation's decoded frames)
stayed resident in the middle of glibc's heaps, so the service grew in steps and never came
back down. Measured here on the process's own anonymous memory, which only this test's thread
moves by tens of megabytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from spyoncino.core import malloc
from spyoncino.core.config import ConfigService, Layer, build_app_model
from spyoncino.core.orchestrator import Orchestrator

pytestmark = pytest.mark.skipif(not malloc.available(), reason="glibc only (malloc_trim)")

MB = 1 << 20


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def fragment(total: int = 96 * MB, block: int = 100_000) -> list[bytearray]:
    """Fill a heap with ``block``-sized buffers and free every other one, as a closed activity
    does between buffers that live on; returns the survivors."""
    blocks = [bytearray(block) for _ in range(total // block)]
    for b in blocks:
        b[::4096] = b"\x01" * len(b[::4096])  # touch every page: make it resident
    return blocks[::2]


def in_thread(fn: Any) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_trim_hands_back_what_a_thread_freed_inside_its_heap() -> None:
    # a worker thread, as the executor's are: its own arena (below the mmap threshold)
    keep = in_thread(fragment)
    before = rss_anon()
    assert malloc.trim() is True
    released = before - rss_anon()
    # half of the 96 MB was freed; most of it is whole pages between the survivors
    assert released > 24 * MB, f"trim released {released / MB:.1f} MB"
    assert len(keep) > 0


def test_a_set_environment_variable_wins_over_the_config() -> None:
    env = {"MALLOC_ARENA_MAX": "4"}
    done = malloc.tune(arena_max=2, mmap_threshold=0, environ=env)
    assert "arena_max" not in done
    assert "mmap_threshold" not in done  # 0: left to glibc


TUNED = """
import json, sys
from spyoncino.core import malloc
MB = 1 << 20
done = malloc.tune(arena_max=2, mmap_threshold=MB, environ={}) if sys.argv[1] == "tune" else {}
first = bytearray(4 * MB)
del first  # glibc's own (dynamic) threshold would now rise to 4 MB: 2 MB from the heap
before = malloc.stats()["mmapped"]
second = bytearray(2 * MB)
print(json.dumps({"done": done, "grew": malloc.stats()["mmapped"] - before}))
"""


def _tuned(mode: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", TUNED, mode], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_tune_sets_what_the_environment_leaves() -> None:
    # fresh interpreters: in this long-lived test-worker process, free chunks left in the heap
    # by earlier tests would serve the buffers without any mapping, threshold or not
    got = _tuned("tune")
    assert got["done"] == {"arena_max": 2, "mmap_threshold": MB}
    # the threshold stays fixed: a 2 MB buffer after a freed 4 MB one is still its own mapping
    # (handed back to the system on free), where glibc's sliding threshold puts it in the heap
    assert got["grew"] >= 2 * MB, got
    assert _tuned("default")["grew"] < 2 * MB  # what the fixed threshold changes


async def test_the_runtime_trims_the_heaps_periodically(monkeypatch: pytest.MonkeyPatch) -> None:
    trimmed = asyncio.Event()
    threads: list[str] = []
    loop = asyncio.get_running_loop()

    def fake_trim() -> bool:
        threads.append(threading.current_thread().name)
        loop.call_soon_threadsafe(trimmed.set)
        return True

    monkeypatch.setattr(malloc, "trim", fake_trim)
    registry: dict[str, Any] = {}
    config = ConfigService(
        build_app_model(registry), [Layer("test", {"runtime": {"malloc_trim_s": 0.05}})]
    )
    orch = Orchestrator(config, registry)
    await orch.start()
    try:
        await asyncio.wait_for(trimmed.wait(), 10)
    finally:
        await orch.stop()
    assert threads[0].startswith("spyoncino"), "trim runs in a worker, never on the loop"
