"""Animations cut from the event's clip: a remux of a short window where the clip is H.264,
one small encode otherwise, a GIF only when asked for; no frame of the camera is touched."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

import av
import pytest

from spyoncino.modules.event.clip import ClipRecorder
from spyoncino.modules.event.gif import Config as GifConfig
from spyoncino.modules.event.gif import GifMaker, pick_evenly
from spyoncino.schemas import topics
from spyoncino.schemas.media import MediaArtifact
from tests.support.wait import until

from .conftest import Harness, read_seq
from .test_clip import h264_file, notice, play, play_source

SCRIPT: dict[int, Any] = {
    62: notice("ev", "started", 6.0),  # pre-roll from 3.0 s
    130: notice("ev", "ended", 6.0, 8.0),  # the clip ends at 10 s (post-roll 2 s)
}


async def makers(
    h: Harness, clip: dict[str, Any] | None = None, **cfg: Any
) -> tuple[GifMaker, list[tuple[str, Any]], list[tuple[str, Any]]]:
    app = h.app(
        {"clip": ClipRecorder, "gif": GifMaker},
        {"gif": cfg, "clip": clip or {}, "cameras": {"cam": {"source": "x.mp4"}}},
    )
    clips = h.record("media.clip.ready")
    rec = h.record("media.gif.ready")
    await h.start(ClipRecorder, app)
    return await h.start(GifMaker, app), rec, clips


async def one_clip(h: Harness, tmp_path: Path) -> tuple[Any, Any, list[tuple[str, Any]]]:
    """The clip recorder's clip of SCRIPT's event, before any animation maker runs: the app,
    the clip's artifact and the recorder of animations."""
    src = h264_file(tmp_path / "cam.mp4", 140)
    app = h.app({"clip": ClipRecorder, "gif": GifMaker}, {"cameras": {"cam": {"source": "x.mp4"}}})
    clips = h.record("media.clip.ready")
    rec = h.record("media.gif.ready")
    await h.start(ClipRecorder, app)
    await play_source(h, src, SCRIPT)
    await h.settle()
    (clip,) = [p for _, p in clips]
    return app, clip, rec


async def drained(h: Harness, mod: GifMaker) -> None:
    await h.settle()
    await asyncio.wait_for(mod._idle.wait(), 30)
    await h.settle()


def read_anim(path: str) -> tuple[str, str, int, float, list[int]]:
    """(codec, pix_fmt, width, duration, the seqs of its pictures) as a player decodes it."""
    with av.open(path) as c:
        assert not c.streams.audio
        s = c.streams.video[0]
        seqs = [read_seq(f.to_ndarray(format="bgr24")) for f in c.decode(s)]
        cc = s.codec_context
        return cc.name, cc.pix_fmt, cc.width, float(c.duration or 0) / 1e6, seqs


def faststart(path: str) -> bool:
    data = Path(path).read_bytes()
    return 0 <= data.find(b"moov") < data.find(b"mdat")


def test_a_config_of_the_frame_sampling_release_still_loads() -> None:
    cfg = GifConfig.model_validate({"buffer_frames": 120, "resume_grace_s": 30, "fps": 5})
    assert cfg.fps == 5 and not hasattr(cfg, "buffer_frames")


def test_pick_evenly() -> None:
    assert pick_evenly(5, 10) == [0, 1, 2, 3, 4]
    assert pick_evenly(100, 5) == [0, 25, 50, 74, 99]


async def test_camera_h264_clip_becomes_a_remuxed_animation_from_the_event_start(
    harness: Harness, tmp_path: Path
) -> None:
    src = h264_file(tmp_path / "cam.mp4", 140)  # B-frames, a keyframe every 2 s
    mod, rec, clips = await makers(harness, duration_s=3.0)
    await play_source(harness, src, SCRIPT)
    await drained(harness, mod)
    (clip,) = [p for _, p in clips]
    (art,) = [p for _, p in rec]
    assert isinstance(art, MediaArtifact)
    assert art.kind == "gif"  # what Telegram sends with sendAnimation
    assert art.mime == "video/mp4"
    assert art.relpath == clip.relpath.replace(".mp4", ".anim.mp4")
    codec, pix_fmt, width, duration, seqs = read_anim(art.path)
    assert (codec, pix_fmt, width) == ("h264", "yuv420p", 640)  # the camera's own pictures
    assert faststart(art.path)  # plays while it loads
    # the clip starts at 2.0 s (keyframe before the pre-roll), the event (6.0 s) 4.0 s into
    # it: the animation starts at the keyframe at or before that, 3 s long, every picture
    assert seqs[0] == 60
    assert 89 <= seqs[-1] <= 92  # 3 s (30 pictures), and B-frames decoded before the last
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert art.duration_s == pytest.approx(duration, abs=0.15)
    assert duration <= 3.0 + 0.35  # duration_s from the keyframe it starts at
    assert mod.metrics()["gifs_remuxed"] == 1
    assert os.path.getsize(art.path) == art.size_bytes < clip.size_bytes


async def test_the_recorders_own_clip_is_remuxed_too(harness: Harness) -> None:
    mod, rec, _ = await makers(harness, duration_s=4.0)
    await play(harness, range(0, 140), SCRIPT, width=1280, height=720)
    await drained(harness, mod)
    (art,) = [p for _, p in rec]
    codec, pix_fmt, width, _, seqs = read_anim(art.path)
    assert (codec, pix_fmt, width) == ("h264", "yuv420p", 640)  # the clip's size
    assert 50 <= seqs[0] <= 60  # the clip's keyframe (every 1 s) at or before the start
    assert seqs[-1] >= seqs[0] + 38
    assert mod.metrics()["gifs_remuxed"] == 1


async def test_without_remux_one_encode_at_480_px(harness: Harness, tmp_path: Path) -> None:
    src = h264_file(tmp_path / "cam.mp4", 140)
    mod, rec, _ = await makers(harness, remux=False, duration_s=4.0)
    await play_source(harness, src, SCRIPT)
    await drained(harness, mod)
    (art,) = [p for _, p in rec]
    codec, pix_fmt, width, _, seqs = read_anim(art.path)
    assert (codec, pix_fmt, width) == ("h264", "yuv420p", 480)
    assert faststart(art.path)
    assert 58 <= seqs[0] <= 62
    steps = [b - a for a, b in itertools.pairwise(seqs)]
    assert set(steps) == {2}  # 5 fps of a 10 fps clip
    assert len(seqs) == 20 and art.duration_s == 4.0
    assert (art.width, art.height) == (480, 270)
    assert mod.metrics()["gifs_encoded"] == 1


async def test_gif_only_when_asked_for_decoded_from_the_clip(
    harness: Harness, tmp_path: Path
) -> None:
    src = h264_file(tmp_path / "cam.mp4", 140)
    mod, rec, _ = await makers(harness, format="gif", duration_s=4.0)
    await play_source(harness, src, SCRIPT)
    await drained(harness, mod)
    (art,) = [p for _, p in rec]
    assert art.mime == "image/gif"
    assert art.relpath.endswith("/ev.gif")
    assert Path(art.path).read_bytes()[:6] == b"GIF89a"
    with av.open(art.path) as c:
        seqs = [read_seq(f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]
        assert c.streams.video[0].codec_context.width == 480
    assert 58 <= seqs[0] <= 62 and len(seqs) == 20
    assert art.size_bytes <= 3_000_000


@pytest.mark.parametrize("remux", [True, False])
async def test_busy_footage_stays_below_the_size_cap(harness: Harness, remux: bool) -> None:
    mod, rec, clips = await makers(harness, max_bytes=100_000, remux=remux)
    await play(harness, range(0, 140), SCRIPT, noise=True)
    await drained(harness, mod)
    (clip,) = [p for _, p in clips]
    assert clip.size_bytes > 300_000  # the window would not fit whole
    (art,) = [p for _, p in rec]
    assert art.size_bytes <= 100_000
    _, _, _, _, seqs = read_anim(art.path)
    assert len(seqs) >= 2 and seqs == sorted(seqs)


async def test_no_frame_reaches_the_animation_module(harness: Harness) -> None:
    """Idle and busy cost (#20): the animation is cut from the clip; the camera's frames are
    neither subscribed to nor decoded for it."""
    mod, rec, _ = await makers(harness)

    def frame_subs() -> int:
        return sum(
            1
            for s in harness.bus.status().subscriptions
            if s.module == mod.ctx.instance and "frame" in s.pattern
        )

    await play(harness, range(0, 70), {62: notice("ev", "started", 6.0)})
    assert frame_subs() == 0
    await play(harness, range(70, 140), {130: notice("ev", "ended", 6.0, 8.0)})
    await drained(harness, mod)
    assert frame_subs() == 0
    assert len(rec) == 1


async def test_a_clip_asked_for_gets_no_animation(harness: Harness) -> None:
    mod, rec, _ = await makers(harness)
    art = MediaArtifact(
        event_id="manual-r1",
        camera_id="cam",
        kind="clip",
        path="/nonexistent.mp4",
        relpath="cam/2026-01-01/manual-r1.mp4",
        size_bytes=1,
        sha256="0" * 64,
        mime="video/mp4",
        created_at=0.0,
    )
    await harness.bus.publish(topics.ARTIFACT.at(artifact="clip"), art)
    await drained(harness, mod)
    assert rec == [] and mod.gifs_dropped == 0


async def test_stop_without_time_spools_and_the_next_start_builds(
    harness: Harness, tmp_path: Path
) -> None:
    app, clip, rec = await one_clip(harness, tmp_path)
    # the clip reaches the animation maker as the stop comes, with no time left
    mod = await harness.start(GifMaker, app)
    await harness.bus.publish(topics.ARTIFACT.at(artifact="clip"), clip)
    await harness.bus.wait_idle(topics.ARTIFACT.at(artifact="clip"))
    assert mod.pending() == 1
    mod.stop_deadline = asyncio.get_running_loop().time()
    await mod.stop()
    harness.modules.remove(mod)
    assert mod.gifs_spooled == 1
    spool = harness.root / ".spool" / "gif"
    assert [p.name for p in spool.glob("*.job")] == ["ev.job"]
    rec.clear()
    again = await harness.start(GifMaker, app)
    await until(lambda: bool(rec))
    await drained(harness, again)
    (art,) = [p for _, p in rec]
    assert art.relpath.endswith("/ev.anim.mp4") and Path(art.path).is_file()
    assert read_anim(art.path)[4][0] == 60  # from the event's start
    assert not list(spool.glob("*.job"))  # built: not again


async def test_a_clip_published_just_before_the_stop_still_gets_its_animation(
    harness: Harness, tmp_path: Path
) -> None:
    """The clip recorder writes the clips of open events at its own stop, just before this
    module stops: one still queued for the module must not be lost with the subscription."""
    app, clip, rec = await one_clip(harness, tmp_path)
    mod = await harness.start(GifMaker, app)
    await harness.bus.publish(topics.ARTIFACT.at(artifact="clip"), clip)
    await mod.stop()  # no wait: the clip is still in the module's queue
    harness.modules.remove(mod)
    await harness.settle()
    built = [p for _, p in rec]
    spooled = list((harness.root / ".spool" / "gif").glob("*.job"))
    assert len(built) + len(spooled) == 1


async def test_a_clip_that_does_not_say_where_its_event_starts_is_cut_from_its_start(
    harness: Harness, tmp_path: Path
) -> None:
    # another module's clip without event_offset_s: from its first picture, not from where
    # the clip recorder's own pre-roll would put it (this module reads no other's config)
    app, clip, rec = await one_clip(harness, tmp_path)
    assert clip.event_offset_s  # the recorder's own clip says: 4 s in
    mod = await harness.start(GifMaker, app)
    await harness.bus.publish(
        topics.ARTIFACT.at(artifact="clip"), clip.model_copy(update={"event_offset_s": None})
    )
    await drained(harness, mod)
    (art,) = [p for _, p in rec]
    assert read_anim(art.path)[4][0] == 20  # the clip's first picture (its keyframe at 2.0 s)
