"""Clip recorder: H.264 MP4 with pre-roll and post-roll, shared encoding, bounded memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from spyoncino.helpers.packets import PacketRing, cut_decodable
from spyoncino.modules.event.clip import ClipRecorder, Config, _Packet, preroll_budget
from spyoncino.schemas import topics
from spyoncino.schemas.control import ControlCommand
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact

from .conftest import Harness, make_frame, read_seq

FPS = 10


def notice(event_id: str, phase: str, start_s: float, end_s: float | None = None) -> EventNotice:
    return EventNotice(
        event_id=event_id,
        camera_id="cam",
        kind="object",
        phase=phase,  # type: ignore[arg-type]
        labels=("person",),
        top_score=0.9,
        started_at=1_700_000_000.0 + start_s,
        updated_at=1_700_000_000.0 + (end_s or start_s),
        ended_at=None if end_s is None else 1_700_000_000.0 + end_s,
        started_mono=start_s,
    )


async def recorder(h: Harness, **cfg: Any) -> tuple[ClipRecorder, list[tuple[str, Any]]]:
    data = {"clip": cfg, "cameras": {"cam": {"source": "x.mp4"}}}
    app = h.app({"clip": ClipRecorder}, data)
    rec = h.record("media.clip.ready")
    return await h.start(ClipRecorder, app), rec


async def play(
    h: Harness, seqs: range, script: dict[int, EventNotice | list[EventNotice]], **kw: Any
) -> None:
    topic = topics.FRAME.at(camera="cam")
    for seq in seqs:
        await h.bus.publish(topic, make_frame("cam", seq, seq / FPS, **kw))
        await h.bus.wait_idle(topic)
        todo = script.get(seq, [])
        for ev in todo if isinstance(todo, list) else [todo]:
            await h.bus.publish(f"event.object.{ev.phase}", ev)
            await h.bus.wait_idle(f"event.object.{ev.phase}")


def probe(path: str) -> tuple[str, str, float, list[int]]:
    """(codec, pix_fmt, duration, frame seqs read back from the green level)."""
    with av.open(path) as c:
        s = c.streams.video[0]
        seqs = [read_seq(f.to_ndarray(format="bgr24")) for f in c.decode(s)]
        return s.codec_context.name, s.codec_context.pix_fmt, float(c.duration or 0) / 1e6, seqs


def moov_before_mdat(path: str) -> bool:
    data = Path(path).read_bytes()
    return 0 <= data.find(b"moov") < data.find(b"mdat")


async def test_clip_has_preroll_postroll_and_plays_inline(harness: Harness) -> None:
    _, rec = await recorder(harness)
    script: dict[int, Any] = {
        62: notice("ev1", "started", 6.0),  # confirmed two frames after the first sighting
        130: notice("ev1", "ended", 6.0, 8.0),  # the tracker says so 5 s after the last sighting
    }
    await play(harness, range(0, 140), script)
    await harness.settle()
    (art,) = [p for _, p in rec]
    assert isinstance(art, MediaArtifact)
    assert art.relpath.endswith("/ev1.mp4")
    assert art.mime == "video/mp4"
    codec, pix_fmt, duration, seqs = probe(art.path)
    assert codec == "h264"
    assert pix_fmt == "yuv420p"
    assert moov_before_mdat(art.path)  # faststart: phones play it while downloading
    # first frame ~3 s (pre-roll) before the start, cut at the keyframe at or before it
    assert 26 <= seqs[0] <= 30
    assert seqs[-1] == 100  # end (8 s) + post-roll (2 s)
    assert seqs == sorted(seqs)
    assert duration >= 3.0 + 2.0 + 2.0
    assert art.duration_s == pytest.approx(duration, abs=0.15)
    assert (art.width, art.height) == (640, 360)


async def test_overlapping_events_share_one_encoding(harness: Harness) -> None:
    mod, rec = await recorder(harness)
    script: dict[int, Any] = {
        40: notice("a", "started", 4.0),
        60: notice("b", "started", 5.5),
        70: notice("a", "ended", 4.0, 7.0),
        95: notice("b", "ended", 5.5, 9.0),
    }
    await play(harness, range(0, 125), script)
    await harness.settle()
    clips = {p.event_id: p for _, p in rec}
    assert set(clips) == {"a", "b"}
    _, _, _, seqs_a = probe(clips["a"].path)
    _, _, _, seqs_b = probe(clips["b"].path)
    assert seqs_a[0] <= 10
    assert seqs_a[-1] == 90
    assert 15 <= seqs_b[0] <= 25
    assert seqs_b[-1] == 110
    # one encoder: the frames from the first session start to the last clip's end, once each
    assert mod.frames_encoded <= 125


async def test_event_that_comes_back_during_postroll_keeps_recording(harness: Harness) -> None:
    _, rec = await recorder(harness, postroll_s=3.0)
    script: dict[int, Any] = {
        30: notice("ev", "started", 3.0),
        60: notice("ev", "ended", 3.0, 5.0),
        65: notice("ev", "updated", 3.0),
        100: notice("ev", "ended", 3.0, 9.0),
    }
    await play(harness, range(0, 130), script)
    await harness.settle()
    (art,) = [p for _, p in rec]
    assert probe(art.path)[3][-1] == 120


async def test_stop_finishes_open_clips(harness: Harness) -> None:
    mod, rec = await recorder(harness)
    await play(harness, range(0, 50), {40: notice("ev", "started", 4.0)})
    assert mod.metrics()["pending"] == 1
    await harness.stop()
    await harness.settle()
    (art,) = [p for _, p in rec]
    assert probe(art.path)[3][-1] == 49


async def test_nothing_is_decoded_beyond_the_sampling_rate(harness: Harness) -> None:
    decodes: list[int] = []
    mod, _ = await recorder(harness, fps=5.0)
    topic = topics.FRAME.at(camera="cam")
    for seq in range(100):  # 25 fps camera
        await harness.bus.publish(topic, make_frame("cam", seq, seq / 25, decodes=decodes))
        await harness.bus.wait_idle(topic)
    assert len(decodes) == 20
    assert mod.frames_encoded == 0  # no event: nothing encoded


async def test_preroll_of_a_720p_camera_stays_within_its_budget(harness: Harness) -> None:
    mod, _ = await recorder(harness)
    cfg = Config()
    budget = preroll_budget(cfg, 1280, 720)
    assert budget == 36 * 640 * 360 * 3 // 2  # 12.4 MB, as the docs state
    topic = topics.FRAME.at(camera="cam")
    peak = 0
    for seq in range(250):  # 10 s at 25 fps
        await harness.bus.publish(topic, make_frame("cam", seq, seq / 25, 1280, 720))
        await harness.bus.wait_idle(topic)
        ring = mod.cams["cam"].ring
        held = sum(a.nbytes for _, a in ring)
        assert held == mod.preroll_bytes("cam")
        peak = max(peak, held)
    assert peak <= budget
    assert peak >= budget * 0.8  # it fills to about the budget (25 fps samples at 8.3 fps)
    assert all(a.shape == (540, 640) for _, a in mod.cams["cam"].ring)


async def test_small_budget_caps_the_ring(harness: Harness) -> None:
    mod, _ = await recorder(harness, width=1280, preroll_budget_mb=2.0)
    topic = topics.FRAME.at(camera="cam")
    for seq in range(100):
        await harness.bus.publish(topic, make_frame("cam", seq, seq / 10, 1280, 720))
        await harness.bus.wait_idle(topic)
        assert mod.preroll_bytes("cam") <= 2_000_000
    assert len(mod.cams["cam"].ring) == 1  # one 1280x720 I420 frame is 1.38 MB


async def test_the_cameras_budget_from_the_board_caps_the_preroll(harness: Harness) -> None:
    # runtime.camera_buffer_mb (16 MB on a Pi Zero 2 W) wins over a larger preroll_budget_mb
    data = {"clip": {"width": 1280}, "cameras": {"cam": {"source": "x.mp4"}}}
    data["runtime"] = {"camera_buffer_mb": 3.0}
    mod = await harness.start(ClipRecorder, harness.app({"clip": ClipRecorder}, data))
    assert preroll_budget(Config(width=1280), 1280, 720, camera_buffer_mb=3.0) == 3_000_000
    topic = topics.FRAME.at(camera="cam")
    for seq in range(60):
        await harness.bus.publish(topic, make_frame("cam", seq, seq / 10, 1280, 720))
        await harness.bus.wait_idle(topic)
        assert mod.preroll_bytes("cam") <= 3_000_000
    assert len(mod.cams["cam"].ring) == 2  # one 1280x720 I420 frame is 1.38 MB


def test_cut_starts_at_a_keyframe() -> None:
    packets = [_Packet(t * 100, t % 10 == 0, b"x") for t in range(50)]
    got = cut_decodable(packets, 2500, 3500)
    assert got[0].pts == 2000
    assert got[0].key
    assert got[-1].pts == 3500
    assert cut_decodable(packets, -100, 500)[0].pts == 0
    assert np.all(np.diff([p.pts for p in got]) > 0)


async def test_event_before_the_first_frame_still_gets_a_clip(harness: Harness) -> None:
    _, rec = await recorder(harness, preroll_s=1.0)
    await harness.bus.publish("event.object.started", notice("early", "started", 0.0))
    await harness.bus.wait_idle("event.object.started")
    await play(harness, range(0, 60), {30: notice("early", "ended", 0.0, 3.0)})
    await harness.settle()
    (art,) = [p for _, p in rec]
    seqs = probe(art.path)[3]
    assert seqs[0] == 0
    assert seqs[-1] == 50


async def test_event_resumed_after_its_clip_was_written_gets_it_rewritten(
    harness: Harness,
) -> None:
    mod, rec = await recorder(harness)
    script: dict[int, Any] = {
        32: notice("ev", "started", 3.0),
        50: notice("ev", "ended", 3.0, 5.0),  # clip written at 7.0 (post-roll)
        90: notice("ev", "updated", 3.0),  # the tracker's cooldown brings it back at 9.0
        130: notice("ev", "ended", 3.0, 12.0),
    }
    await play(harness, range(0, 150), script)
    await harness.settle()
    first, second = (p for _, p in rec)
    assert first.path == second.path
    seqs = probe(second.path)[3]
    assert seqs[0] <= 3  # pre-roll of the original start
    assert seqs[-1] == 140  # the resumed end + post-roll
    assert 70 in seqs
    assert [s for s in seqs if 70 < s < 75] == []  # a new encoder resumes at its keyframe
    assert seqs == sorted(seqs)
    assert second.duration_s is not None
    assert second.duration_s >= 12.0
    assert mod.metrics()["clips_resumed"] == 1


async def test_auto_picks_libx264_where_the_pi_encoder_cannot_open(harness: Harness) -> None:
    mod, _ = await recorder(harness)
    assert mod.metrics()["encoder"] == "libx264"  # h264_v4l2m2m is listed but has no device


async def test_forced_hardware_encoder_falls_back_to_libx264(harness: Harness) -> None:
    mod, rec = await recorder(harness, encoder="h264_v4l2m2m", preroll_s=1.0)
    await play(
        harness,
        range(0, 60),
        {20: notice("hw", "started", 2.0), 30: notice("hw", "ended", 2.0, 3.0)},
    )
    await harness.settle()
    (art,) = [p for _, p in rec]
    assert probe(art.path)[0] == "h264"
    assert mod.metrics()["encoder"] == "libx264"


async def ask_clip(h: Harness, seconds: float | None, request_id: str = "r1") -> None:
    cmd = ControlCommand(
        command="clip", camera_id="cam", duration_s=seconds, source="test", request_id=request_id
    )
    await h.bus.publish(topics.CONTROL.name, cmd)
    await h.bus.wait_idle(topics.CONTROL.name)


async def test_clip_command_sends_the_last_seconds_from_the_ring(harness: Harness) -> None:
    _, rec = await recorder(harness)
    await play(harness, range(0, 50), {})
    await ask_clip(harness, 3.0)
    await harness.settle()
    (art,) = [p for _, p in rec]
    assert art.event_id == "manual-r1"
    assert art.kind == "clip"
    assert art.relpath.endswith("/manual-r1.mp4")
    assert Path(art.path).is_file()
    codec, pix_fmt, duration, seqs = probe(art.path)
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    assert moov_before_mdat(art.path)
    assert seqs[-1] == 49  # up to now
    # 3 s back (seq 19), from the keyframe at or before it: at most one keyframe interval more
    assert 9 <= seqs[0] <= 19
    assert seqs == list(range(seqs[0], 50))
    assert 2.9 <= duration <= 3.1 + 1.0


async def test_clip_command_longer_than_the_ring_records_forward(harness: Harness) -> None:
    _, rec = await recorder(harness)  # the ring holds 3.5 s
    await play(harness, range(0, 50), {})
    await ask_clip(harness, 6.0, "r2")
    assert rec == []  # not yet: 2.5 s more are needed
    await play(harness, range(50, 100), {})
    await harness.settle()
    (art,) = [p for _, p in rec]
    assert art.event_id == "manual-r2"
    _, _, duration, seqs = probe(art.path)
    assert seqs[0] == 15  # the oldest frame the ring held (3.5 s before seq 49)
    assert seqs[-1] == 75  # 6 s after it
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert duration == pytest.approx(6.0, abs=0.15)
    assert art.duration_s == pytest.approx(duration, abs=0.15)


async def test_clip_command_for_an_unknown_camera_is_ignored(harness: Harness) -> None:
    _, rec = await recorder(harness)
    await play(harness, range(0, 20), {})
    cmd = ControlCommand(command="clip", camera_id="nope", source="test", request_id="x")
    await harness.bus.publish(topics.CONTROL.name, cmd)
    await harness.settle()
    await harness.stop()
    await harness.settle()
    assert rec == []


async def test_clip_command_during_an_event_shares_its_encoder(harness: Harness) -> None:
    mod, rec = await recorder(harness)
    await play(harness, range(0, 50), {40: notice("ev", "started", 4.0)})
    await ask_clip(harness, 8.0, "r3")  # the ring holds 3.5 s: 4.5 s more are recorded
    await play(harness, range(50, 110), {70: notice("ev", "ended", 4.0, 7.0)})
    await harness.settle()
    clips = {p.event_id: p for _, p in rec}
    assert set(clips) == {"ev", "manual-r3"}
    manual = probe(clips["manual-r3"].path)[3]
    assert manual[0] == 15
    assert manual[-1] == 95
    assert probe(clips["ev"].path)[3][-1] == 90
    assert mod.frames_encoded <= 110


# -- remux: the camera's own H.264 packets, no encoder --------------------------------------
def h264_file(path: Path, frames: int, *, gop: int = 20, bframes: int = 2) -> Path:
    """An MP4 like a camera's recording: H.264 High with B-frames, make_frame's seq drawn in."""
    from fractions import Fraction

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        s.codec_context.gop_size = gop
        s.codec_context.max_b_frames = bframes
        s.codec_context.options = {"preset": "ultrafast", "bf": str(bframes)}
        for seq in range(frames):
            img = make_frame("cam", seq, seq / FPS).image
            vf = av.VideoFrame.from_ndarray(img, format="bgr24")
            vf.pts, vf.time_base = seq, Fraction(1, FPS)
            out.mux(s.encode(vf))
        out.mux(s.encode(None))
    return path


async def play_source(
    h: Harness,
    path: Path,
    script: dict[int, EventNotice | list[EventNotice]],
    on_frame: Callable[[int], Awaitable[None]] | None = None,
) -> PacketRing:
    """What the file input does: demux into the ring, publish each decoded frame with it."""
    ring = PacketRing()
    topic = topics.FRAME.at(camera="cam")
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert ring.reset(stream)
        tb = float(stream.time_base)
        for packet in c.demux(stream):
            ring.append(packet)
            for vf in packet.decode():
                seq = round(vf.pts * tb * FPS)
                ring.anchor(vf.pts * tb, seq / FPS)
                f = make_frame("cam", seq, seq / FPS)
                f = dataclasses.replace(f, source_packets=ring)
                await h.bus.publish(topic, f)
                await h.bus.wait_idle(topic)
                todo = script.get(seq, [])
                for ev in todo if isinstance(todo, list) else [todo]:
                    await h.bus.publish(f"event.object.{ev.phase}", ev)
                    await h.bus.wait_idle(f"event.object.{ev.phase}")
                if on_frame is not None:
                    await on_frame(seq)
    return ring


async def test_h264_source_is_remuxed_with_preroll_and_never_encoded(
    harness: Harness, tmp_path: Path
) -> None:
    src = h264_file(tmp_path / "cam.mp4", 140)
    mod, rec = await recorder(harness)
    script: dict[int, Any] = {
        62: notice("ev1", "started", 6.0),
        130: notice("ev1", "ended", 6.0, 8.0),
    }
    await play_source(harness, src, script)
    await harness.settle()
    (art,) = [p for _, p in rec]
    codec, pix_fmt, duration, seqs = probe(art.path)
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    assert moov_before_mdat(art.path)
    # from the camera's keyframe at or before the pre-roll start (GOP 2 s: 2.0 s)
    assert seqs[0] == 20
    # end + post-roll; a B-frame stream is cut in decode order, so the reference pictures
    # decoded before the last B-frame (up to max_b_frames + 1 later) come along
    assert 100 <= seqs[-1] <= 103
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # every picture, in order, once
    assert mod.frames_encoded == 0  # no encoder, and no picture was converted for the ring
    assert mod.preroll_bytes("cam") == 0
    assert mod.metrics()["clips_remuxed"] == 1
    assert art.duration_s == pytest.approx(duration, abs=0.15)
    assert (art.width, art.height) == (640, 360)


async def test_remux_takes_no_picture_while_no_event_is_open(
    harness: Harness, tmp_path: Path
) -> None:
    src = h264_file(tmp_path / "cam.mp4", 60)
    decodes: list[int] = []
    mod, rec = await recorder(harness)
    ring = PacketRing()
    topic = topics.FRAME.at(camera="cam")
    with av.open(str(src)) as c:
        stream = c.streams.video[0]
        ring.reset(stream)
        tb = float(stream.time_base)
        for packet in c.demux(stream):
            ring.append(packet)
            for vf in packet.decode():
                seq = round(vf.pts * tb * FPS)
                ring.anchor(vf.pts * tb, seq / FPS)
                f = make_frame("cam", seq, seq / FPS, decodes=decodes)
                await harness.bus.publish(topic, dataclasses.replace(f, source_packets=ring))
                await harness.bus.wait_idle(topic)
    assert decodes == []  # no colour decode, no resize, no conversion per frame
    assert ring.keep_s >= Config().preroll_s  # the recorder asked the ring for its pre-roll
    # the ring holds the pre-roll plus the GOP it starts in, not the whole stream
    assert 0 < ring.nbytes < sum(len(p.data) for p in ring.after(0)[2]) + 1
    oldest = ring.oldest_mono()
    assert oldest is not None and 6.0 - Config().preroll_s - 3.0 <= oldest <= 6.0 - 3.0
    assert rec == []
    assert mod.frames_encoded == 0


def test_ring_keeps_from_a_keyframe_and_within_its_budget(tmp_path: Path) -> None:
    src = h264_file(tmp_path / "cam.mp4", 100, gop=10, bframes=0)
    ring = PacketRing(keep_s=2.0)
    with av.open(str(src)) as c:
        stream = c.streams.video[0]
        ring.reset(stream)
        for packet in c.demux(stream):
            ring.append(packet)
    ring.anchor(0.0, 100.0)
    _, off, packets = ring.after(0)
    assert off == pytest.approx(100_000.0)
    assert packets[0].key
    assert 2000 <= packets[-1].pts - packets[0].pts <= 3000  # 2 s + at most one GOP
    # packets decode on their own from the first (the parameter sets are in front of it)
    assert packets[0].data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
    small = PacketRing(keep_s=60.0, budget_bytes=sum(len(p.data) for p in packets) // 2)
    with av.open(str(src)) as c:
        small.reset(c.streams.video[0])
        for packet in c.demux(c.streams.video[0]):
            small.append(packet)
    assert small.nbytes <= small.budget_bytes
    assert small.dropped_for_budget > 0


def noisy_h264(path: Path, frames: int) -> Path:
    """A camera's busy H.264 stream at 320x180 (every picture noise: ~30 kB a frame)."""
    from fractions import Fraction

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
        s.codec_context.gop_size = 20
        s.codec_context.options = {"preset": "ultrafast", "crf": "18"}
        for seq in range(frames):
            img = make_frame("cam", seq, seq / FPS, width=320, height=180, noise=True).image
            vf = av.VideoFrame.from_ndarray(img, format="bgr24")
            vf.pts, vf.time_base = seq, Fraction(1, FPS)
            out.mux(s.encode(vf))
        out.mux(s.encode(None))
    return path


@pytest.mark.parametrize("source", ["encoded", "remuxed"])
async def test_a_long_activity_is_recorded_within_the_cameras_budget(
    harness: Harness, tmp_path: Path, source: str
) -> None:
    """#17: an open activity's packets were all kept in memory until it closed (up to
    max_duration_s: a 4 Mbit/s camera holds ~60 MB for 120 s). They go to a file in
    storage.scratch as they come; memory stays within runtime.camera_buffer_mb."""
    import tracemalloc

    budget_mb = 6.0
    data = {
        "clip": {"fps": FPS},
        "cameras": {"cam": {"source": "x.mp4"}},
        "runtime": {"camera_buffer_mb": budget_mb},
    }
    app = harness.app({"clip": ClipRecorder}, data)
    rec = harness.record("media.clip.ready")
    src = noisy_h264(tmp_path / "cam.mp4", 700) if source == "remuxed" else None
    held = 0

    async def measure(seq: int) -> None:
        nonlocal held
        if seq == 625:  # the activity's last second, 59 s in
            held = tracemalloc.get_traced_memory()[0] - before

    tracemalloc.start()
    try:
        mod = await harness.start(ClipRecorder, app)
        before = tracemalloc.get_traced_memory()[0]
        script: dict[int, Any] = {
            30: notice("ev", "started", 3.0),
            630: notice("ev", "ended", 3.0, 62.0),
        }
        if src is not None:
            await play_source(harness, src, script, on_frame=measure)
        else:
            for seq in range(0, 700, 5):
                await play(harness, range(seq, seq + 5), script, width=320, height=180, noise=True)
                await measure(seq)
        await harness.settle()
        spooled = mod.metrics().get("bytes_spooled", 0)
        await mod.stop()  # nothing can resume now: the packet files go
        harness.modules.remove(mod)
    finally:
        tracemalloc.stop()
    (art,) = [p for _, p in rec]
    assert art.size_bytes > 2.5 * budget_mb * 1_000_000  # far more than the budget was recorded
    assert 0 < held < budget_mb * 1_000_000, f"{held / 1e6:.1f} MB held during the activity"
    assert spooled > art.size_bytes / 2
    _, _, _, seqs = probe(art.path)
    assert seqs[0] <= 1 and seqs[-1] >= 640  # all of it, pre-roll to post-roll
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert not list((harness.root / ".scratch").glob("*"))  # the spooled packets are gone
