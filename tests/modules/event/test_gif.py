"""GIF maker: small, evenly sampled over the event, bounded memory, no idle decoding."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import av
import pytest

from spyoncino.modules.event.gif import GifMaker, pick_evenly
from spyoncino.schemas import topics
from spyoncino.schemas.events import EventNotice

from .conftest import Harness, make_frame, read_seq


def notice(phase: str, start_s: float, end_s: float | None = None) -> EventNotice:
    return EventNotice(
        event_id="ev",
        camera_id="cam",
        kind="object",
        phase=phase,  # type: ignore[arg-type]
        labels=("person",),
        top_score=0.9,
        started_at=1_700_000_000.0 + start_s,
        updated_at=1_700_000_000.0 + start_s,
        ended_at=None if end_s is None else 1_700_000_000.0 + end_s,
        started_mono=start_s,
    )


async def maker(h: Harness, **cfg: Any) -> tuple[GifMaker, list[tuple[str, Any]]]:
    app = h.app({"gif": GifMaker}, {"gif": cfg, "cameras": {"cam": {"source": "x.mp4"}}})
    rec = h.record("media.gif.ready")
    return await h.start(GifMaker, app), rec


async def run(h: Harness, start: int, end: int, total: int, fps: float = 10, **kw: Any) -> None:
    topic = topics.FRAME.at(camera="cam")
    for seq in range(total):
        if seq == start:
            await h.bus.publish("event.object.started", notice("started", seq / fps))
            await h.bus.wait_idle("event.object.started")
        await h.bus.publish(topic, make_frame("cam", seq, seq / fps, **kw))
        await h.bus.wait_idle(topic)
        if seq == end:
            await h.bus.publish("event.object.ended", notice("ended", start / fps, seq / fps))
    await h.settle()


def read_gif(path: str) -> tuple[int, float, list[int]]:
    with av.open(path) as c:
        s = c.streams.video[0]
        seqs = [read_seq(f.to_ndarray(format="bgr24")) for f in c.decode(s)]
        return s.codec_context.width, float(s.average_rate or 0), seqs


def test_pick_evenly() -> None:
    assert pick_evenly(5, 10) == [0, 1, 2, 3, 4]
    assert pick_evenly(100, 5) == [0, 25, 50, 74, 99]


async def test_animation_is_a_small_silent_h264_mp4_spanning_the_event(
    harness: Harness,
) -> None:
    mod, rec = await maker(harness)
    await run(harness, start=20, end=120, total=140, width=1280, height=720)
    (art,) = [p for _, p in rec]
    assert art.kind == "gif"  # what Telegram sends with sendAnimation
    assert art.mime == "video/mp4"
    assert art.relpath.endswith("/ev.anim.mp4")  # never the clip's <event>.mp4
    with av.open(art.path) as c:
        assert not c.streams.audio
        video = c.streams.video[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
    data = Path(art.path).read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")  # faststart: plays while loading
    width, rate, seqs = read_gif(art.path)
    assert width == 480
    assert rate == 5.0
    assert seqs[0] <= 22
    assert seqs[-1] >= 118
    steps = [b - a for a, b in itertools.pairwise(seqs)]
    assert max(steps) - min(steps) <= 2  # evenly spaced
    assert art.duration_s == len(seqs) / 5
    assert art.size_bytes < 600_000  # a GIF of the same frames is several MB
    assert mod.gifs_written == 1


async def test_gif_is_small_narrow_and_spans_the_event(harness: Harness) -> None:
    _, rec = await maker(harness, format="gif")
    await run(harness, start=20, end=120, total=140, width=1280, height=720)
    (art,) = [p for _, p in rec]
    assert art.mime == "image/gif"
    assert art.size_bytes <= 3_000_000
    assert os.path.getsize(art.path) == art.size_bytes
    width, rate, seqs = read_gif(art.path)
    assert width == 480
    assert rate == 5.0
    assert seqs[0] <= 22
    assert seqs[-1] >= 118
    steps = [b - a for a, b in itertools.pairwise(seqs)]
    assert max(steps) - min(steps) <= 2  # evenly spaced
    assert art.duration_s == len(seqs) / 5


async def test_long_event_is_covered_in_bounded_memory(harness: Harness) -> None:
    mod, rec = await maker(harness, buffer_frames=20, max_frames=10)
    peak = 0
    topic = topics.FRAME.at(camera="cam")
    await harness.bus.publish("event.object.started", notice("started", 0.0))
    await harness.bus.wait_idle("event.object.started")
    for seq in range(600):  # 60 s
        await harness.bus.publish(topic, make_frame("cam", seq, seq / 10))
        await harness.bus.wait_idle(topic)
        peak = max(peak, len(mod.cams["cam"].gifs["ev"].frames))
    await harness.bus.publish("event.object.ended", notice("ended", 0.0, 59.9))
    await harness.settle()
    assert peak <= 21
    _, _, seqs = read_gif(next(p for _, p in rec).path)
    assert len(seqs) == 10
    assert seqs[0] == 0
    assert seqs[-1] >= 560


@pytest.mark.parametrize("fmt", ["gif", "mp4"])
async def test_busy_footage_is_shrunk_below_the_size_cap(harness: Harness, fmt: str) -> None:
    _, rec = await maker(harness, max_bytes=300_000, format=fmt)
    await run(harness, start=0, end=99, total=100, noise=True)
    (art,) = [p for _, p in rec]
    assert art.size_bytes <= 300_000


async def test_no_decoding_while_no_event_is_open(harness: Harness) -> None:
    decodes: list[int] = []
    await maker(harness)
    topic = topics.FRAME.at(camera="cam")
    for seq in range(50):
        await harness.bus.publish(topic, make_frame("cam", seq, seq / 10, decodes=decodes))
        await harness.bus.wait_idle(topic)
    assert decodes == []


async def test_frames_reach_the_module_only_while_an_event_is_open(harness: Harness) -> None:
    """Idle cost (#20): a subscription wakes its task for every frame even when the handler
    returns at once; an idle camera's frames should not reach the animation module at all."""
    module, rec = await maker(harness)
    topic = topics.FRAME.at(camera="cam")

    def frame_subs() -> int:
        return sum(
            1
            for s in harness.bus.status().subscriptions
            if s.module == module.ctx.instance and "frame" in s.pattern
        )

    assert frame_subs() == 0
    await harness.bus.publish("event.object.started", notice("started", 0.0))
    await harness.bus.wait_idle("event.object.started")
    assert frame_subs() == 1
    for seq in range(20):
        await harness.bus.publish(topic, make_frame("cam", seq, seq / 10))
        await harness.bus.wait_idle(topic)
    await harness.bus.publish("event.object.ended", notice("ended", 0.0, 1.9))
    await harness.settle()
    assert frame_subs() == 0
    assert len(rec) == 1  # the animation was made from the frames of the open event


async def test_resumed_event_gets_its_gif_rebuilt_over_all_of_it(harness: Harness) -> None:
    _, rec = await maker(harness)
    topic = topics.FRAME.at(camera="cam")
    await harness.bus.publish("event.object.started", notice("started", 0.0))
    for seq in range(120):
        if seq == 40:
            await harness.bus.publish("event.object.ended", notice("ended", 0.0, 4.0))
        if seq == 80:
            await harness.bus.publish("event.object.updated", notice("updated", 0.0))
        await harness.bus.wait_idle("event.object.started", "event.object.ended")
        await harness.bus.publish(topic, make_frame("cam", seq, seq / 10))
        await harness.bus.wait_idle(topic, "event.object.updated")
    await harness.bus.publish("event.object.ended", notice("ended", 0.0, 12.0))
    await harness.settle()
    first, second = (p for _, p in rec)
    assert first.path == second.path
    assert read_gif(first.path)[2][-1] >= 110
    assert read_gif(first.path)[2][0] == 0


async def test_an_animation_is_built_without_holding_all_its_frames_decoded(
    harness: Harness,
) -> None:
    # a closing activity's 50 frames decoded at once were ~20 MB more at its close (480x270 BGR
    # is 389 kB a frame); the MP4 animation decodes each JPEG as the encoder takes it
    import tracemalloc

    mod, _ = await maker(harness, max_frames=50)
    topic = topics.FRAME.at(camera="cam")
    await harness.bus.publish("event.object.started", notice("started", 0.0))
    await harness.bus.wait_idle("event.object.started")
    for seq in range(120):
        await harness.bus.publish(topic, make_frame("cam", seq, seq / 10, width=1280, height=720))
        await harness.bus.wait_idle(topic)
    gif = mod.cams["cam"].gifs["ev"]
    assert len(gif.frames) >= 50
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        art = mod._build("cam", gif)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert art is not None and (art.width, art.height) == (480, 270)
    assert art.duration_s == 10.0  # all 50 frames are in it
    frame = 480 * 270 * 3
    assert peak < 8 * frame, f"{peak / frame:.1f} frames' worth held at once"
