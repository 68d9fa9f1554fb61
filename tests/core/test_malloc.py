"""glibc malloc settings and trimming (spyoncino.core.malloc) and the runtime's use of them.

The defect: memory a closed activity freed (its clip's packets, the animation's decoded frames)
stayed resident in the middle of glibc's heaps, so the service grew in steps and never came
back down. Measured here on the process's own anonymous memory, which only this test's thread
moves by tens of megabytes.
"""

from __future__ import annotations

import asyncio
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


def test_tune_sets_what_the_environment_leaves() -> None:
    done = malloc.tune(arena_max=2, mmap_threshold=MB, environ={})
    assert done == {"arena_max": 2, "mmap_threshold": MB}
    stats = malloc.stats()
    assert stats is not None
    big = bytearray(4 * MB)  # above the fixed threshold: its own mapping, returned on free
    assert malloc.stats()["mmapped"] >= stats["mmapped"] + 4 * MB  # type: ignore[index]
    del big


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
