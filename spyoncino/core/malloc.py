"""glibc malloc settings for a service that decodes frames all day, and handing memory back.

Left alone, glibc's allocator grows a long-running ``spyoncino run`` in steps that never come
down (measured with ``bench/bench_rss.py``: 19-22 % over ten minutes, in 25-40 MB steps when a
long activity closes):

* **One arena per thread.** Every thread that allocates (the worker pool, each camera's
  thread, FFmpeg's and LiteRT's threads) gets an arena of its own, up to eight per core, and
  memory freed into one arena is never reused by another.
  ``arena_max`` (``M_ARENA_MAX``) caps them.
* **The moving mmap threshold.** A block above the threshold gets its own ``mmap`` and goes
  back to the system when freed, but each such free raises the threshold to that block's
  size (up to 32 MB): after the first 10 MB clip read for an upload, every 2.7 MB frame comes
  from the arenas, where freed frames leave holes. A fixed ``mmap_threshold``
  (``M_MMAP_THRESHOLD``; it also stops the trim threshold moving) keeps frames, clips and
  encoder pictures in their own mappings.
* **Free memory inside the heaps.** What is freed in the middle of an arena stays resident
  until ``malloc_trim`` hands its pages back; :func:`trim` does, from a worker thread (it takes
  each arena's lock for a few milliseconds).

:func:`tune` applies the settings with ``mallopt`` when the runtime starts, before it starts
any thread, so ``spyoncino run`` needs no environment; a ``MALLOC_ARENA_MAX`` /
``MALLOC_MMAP_THRESHOLD_`` variable that is set (the systemd unit sets both) was applied by
glibc at exec and wins. Elsewhere than glibc (musl, macOS) every function here does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Mapping
from typing import Any

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: the environment variable glibc reads at exec for each setting
ENV = {"arena_max": "MALLOC_ARENA_MAX", "mmap_threshold": "MALLOC_MMAP_THRESHOLD_"}


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _glibc() -> Any:
    """libc when it is glibc (it has ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  # only glibc has it
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def available() -> bool:
    return _glibc() is not None


def tune(
    *, arena_max: int, mmap_threshold: int, environ: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Set the arena cap and a fixed mmap threshold (bytes); 0 leaves a setting to glibc.

    A setting whose environment variable is set is left as glibc applied it at exec. Returns
    what was set (empty where glibc is absent).
    """
    libc = _glibc()
    if libc is None:
        return {}
    env = os.environ if environ is None else environ
    done: dict[str, int] = {}
    for key, param, value in (
        ("arena_max", M_ARENA_MAX, arena_max),
        ("mmap_threshold", M_MMAP_THRESHOLD, mmap_threshold),
    ):
        if value > 0 and not env.get(ENV[key]) and libc.mallopt(param, value) == 1:
            done[key] = value
    if "mmap_threshold" in done:
        # glibc's own pairing when the threshold moves: trim once twice that is free at the top
        libc.mallopt(M_TRIM_THRESHOLD, 2 * done["mmap_threshold"])
    return done


def trim() -> bool:
    """Give free pages of every arena back to the system (blocking: call it in a worker).
    True when memory was released."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


def stats() -> dict[str, int] | None:
    """The allocator's own count in bytes (``mallinfo2``): ``heap`` (arenas' size), ``in_use``,
    ``free`` (inside the arenas), ``mmapped`` (blocks with their own mapping); None without
    glibc 2.33+."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    mi = libc.mallinfo2()
    return {
        "heap": int(mi.arena),
        "in_use": int(mi.uordblks),
        "free": int(mi.fordblks),
        "mmapped": int(mi.hblkhd),
    }
