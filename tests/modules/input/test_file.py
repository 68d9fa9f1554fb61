"""File replay on the shared camera base: native-rate pacing, luma, lazy colour, end of file."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from spyoncino.modules.input.file import FileInput
from spyoncino.testing.clock import FakeClock

from .conftest import SAMPLE_CLIP, SHARED_CLIP

FRAMES = 40  # 4 s of 10 fps footage


async def _assert_real_time(camera_input, clip: Path) -> None:
    """Each frame is published at its due time (the first's + 0.1 s a frame) on the clock the
    input is given: never before it, and as soon as the clock reaches it. The clock moves in
    uneven steps, and frames keep their due times (no drift from late wake-ups)."""
    clock = FakeClock()
    h = await camera_input(FileInput, str(clip), "file", options={"pace": "realtime"}, clock=clock)
    await h.wait_frames(1, timeout=30)
    t0 = clock.monotonic()
    steps = itertools.cycle([0.03, 0.05, 0.04, 0.02, 0.06])  # 0.2 s per cycle of five
    elapsed = 0.0
    for i in range(1, FRAMES):
        due = i * 0.1
        while elapsed + 1e-9 < due:
            await clock.sleeping()  # the input waits for frame i's due time
            assert len(h.frames) == i, f"frame {i} published {due - elapsed:.2f} s early"
            step = next(steps)
            clock.advance(step)
            elapsed += step
        await h.wait_frames(i + 1, timeout=30)
    stamps = [f.wall_ts for _, f in h.frames[:FRAMES]]
    monos = [f.mono_ts for _, f in h.frames[:FRAMES]]
    assert monos[0] == t0
    # each stamped when the clock had just reached (or passed, by < one step) its due time
    late_ms = [(m - t0 - i * 0.1) * 1000 for i, m in enumerate(monos)]
    assert all(-1e-6 <= x < 60 for x in late_ms), late_ms
    assert stamps[-1] - stamps[0] == pytest.approx(monos[-1] - monos[0], abs=1e-6)
    first = h.frames[0][1]
    assert (first.width, first.height) == (768, 576)
    assert first.luma.shape == (240, 320)
    assert first._image is None
    assert first.image.shape == (576, 768, 3)
    assert h.module.metrics()["camera_state"] == "streaming"


@pytest.mark.skipif(not SHARED_CLIP.is_file(), reason="../shared/media/vtest.mp4 is not present")
async def test_vtest_replays_at_native_10fps(camera_input) -> None:
    await _assert_real_time(camera_input, SHARED_CLIP)


async def test_packaged_sample_replays_at_native_10fps(camera_input) -> None:
    await _assert_real_time(camera_input, SAMPLE_CLIP)


async def test_fast_replay_ends_and_reports_ended(camera_input) -> None:
    h = await camera_input(FileInput, str(SAMPLE_CLIP), "file", options={"pace": "fast"})
    await h.wait_state(("ended",), timeout=60)
    assert h.module.is_finished()
    assert len(h.frames) == 250
    assert [f.seq for _, f in h.frames] == list(range(250))
    assert h.module.health().state == "ok"


async def test_fast_replay_keeps_the_videos_clock(camera_input) -> None:
    h = await camera_input(FileInput, str(SAMPLE_CLIP), "file", options={"pace": "fast"})
    await h.wait_state(("ended",), timeout=60)
    frames = [f for _, f in h.frames]
    # read far faster than 10 fps, yet stamped 100 ms apart like the camera that filmed it
    mono_gaps = [round((b.mono_ts - a.mono_ts) * 1000) for a, b in itertools.pairwise(frames)]
    wall_gaps = [round((b.wall_ts - a.wall_ts) * 1000) for a, b in itertools.pairwise(frames)]
    assert set(mono_gaps) == {100}
    assert set(wall_gaps) == {100}


async def test_a_fast_replay_is_capped_on_the_videos_clock_not_the_readers(camera_input) -> None:
    """The board's frame rate holds a replay to the rate of the video's own clock: read far
    faster than real time, a 10 fps file under a 10 fps cap loses no frame (on the reader's
    clock most would be over it, and a demo found no event), and under 5 fps keeps half."""
    frames = {}
    for cap in (10.0, 5.0):
        h = await camera_input(
            FileInput,
            str(SAMPLE_CLIP),
            "file",
            options={"pace": "fast"},
            runtime={"camera_max_fps": cap},
        )
        await h.wait_state(("ended",), timeout=60)
        frames[cap] = [f for _, f in h.frames]
    assert len(frames[10.0]) == 250
    assert len(frames[5.0]) == 125
    kept = frames[5.0]  # 5 a second of the video's time (the cap paces on average)
    assert round((len(kept) - 1) / (kept[-1].mono_ts - kept[0].mono_ts), 1) == 5.0


@pytest.mark.parametrize("keep", [0.5, 0.9])
async def test_a_truncated_file_says_so_instead_of_ending_normally(
    camera_input, tmp_path: Path, keep: float
) -> None:
    """A cut-off mp4 was reported as a normal source_ended (or replayed from the start)."""
    data = SAMPLE_CLIP.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * keep)])
    h = await camera_input(FileInput, str(cut), "file", options={"pace": "fast"})
    await h.wait_state(("failed", "ended"), timeout=60)
    m = h.module.metrics()
    assert m["camera_state"] == "failed"
    assert "truncated" in str(m["last_error"])
    assert m["reconnects"] == 0  # not read again from the start
    seqs = [f.seq for _, f in h.frames]
    assert seqs == list(range(len(seqs))) and 0 < len(seqs) < 250


async def test_a_replayed_camera_decodes_on_one_thread_like_a_live_one(camera_input) -> None:
    # FFmpeg's default (a frame thread per core, plus one) kept each 720p replay ~9 MB bigger
    # than the RTSP camera it stands for (each frame thread holds its own pictures)
    h = await camera_input(FileInput, str(SAMPLE_CLIP), "file", options={"pace": "fast"})
    await h.wait_frames(5, timeout=30)
    ctx = h.module._container.streams.video[0].codec_context
    assert ctx.thread_count == 1


async def test_the_packet_ring_never_holds_more_than_the_cameras_budget(camera_input) -> None:
    # runtime.camera_buffer_mb (from the board's profile) caps what the camera keeps for clips,
    # however many seconds a reader asks to keep: the oldest GOPs go first
    budget_mb = 0.15
    h = await camera_input(
        FileInput,
        str(SAMPLE_CLIP),
        "file",
        options={"pace": "fast"},
        runtime={"camera_buffer_mb": budget_mb},
        start=False,
    )
    h.module.open()
    ring = h.module.packets
    assert ring is not None
    ring.retain(3600.0)  # a reader wanting an hour of pre-roll
    held = []
    for _ in range(240):
        h.module.read()
        held.append(ring.nbytes)
    assert ring.budget_bytes == int(budget_mb * 1_000_000)
    assert max(held) <= ring.budget_bytes
    assert ring.dropped_for_budget > 0
    h.module.close()
