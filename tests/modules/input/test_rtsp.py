"""RTSP input against a real GStreamer RTSP server on 127.0.0.1 (see conftest.py)."""

from __future__ import annotations

import asyncio
import resource
import time

import pytest
import structlog

from spyoncino.modules.input.rtsp import RtspInput
from tests.support.wait import until

FAST = {"open_timeout_s": 5.0, "read_timeout_s": 2.0, "stall_timeout_s": 4.0}


def cpu_seconds() -> float:
    """CPU time of this whole process (every thread: decoder, camera reader, event loop)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_accepts_rtsp_and_rtsps_only() -> None:
    assert RtspInput.accepts("rtsp://cam.lan/stream1")
    assert RtspInput.accepts("RTSPS://u:p@cam.lan:322/x")
    assert not RtspInput.accepts("/dev/video0")
    assert not RtspInput.accepts("http://cam.lan/mjpeg")
    assert not RtspInput.accepts("csi://0")


async def test_frames_arrive_at_full_size_and_native_rate(rtsp_server, camera_input) -> None:
    server = rtsp_server()
    h = await camera_input(RtspInput, server.url(), "rtsp", options=FAST)
    await h.wait_frames(45, timeout=30)
    first = h.frames[0][1]
    assert (first.width, first.height) == (768, 576)
    assert first.luma.shape == (240, 320)
    assert first.image.shape == (576, 768, 3)  # colour decoded on demand
    # the first frames come in a burst (FFmpeg probes the stream first); then the server's pace
    steady = [t for t, _ in h.frames[-20:]]
    fps = (len(steady) - 1) / (steady[-1] - steady[0])
    assert 8.5 <= fps <= 11.5, fps
    # let the burst leave the health figure's 5 s window: 5.5 s of frames at the server's pace
    await h.wait_frames(len(h.frames) + 55, timeout=30)
    m = h.module.metrics()
    assert m["camera_state"] == "streaming"
    assert m["resolution"] == "768x576"
    assert 8.5 <= float(m["fps"]) <= 11.5
    assert 0 <= float(m["last_frame_age_s"]) < 1.0
    assert h.module.health().state == "ok"


async def test_server_death_reconnects_without_busy_loop_and_recovers(
    rtsp_server, camera_input
) -> None:
    server = rtsp_server()
    h = await camera_input(RtspInput, server.url(), "rtsp", options=FAST)
    await h.wait_frames(5, timeout=30)

    server.kill()
    await h.wait_state(("stalled", "reconnecting"), timeout=10)
    assert h.module.health().state == "degraded"

    # waiting for the camera costs (almost) nothing: no busy loop. After four reconnects the
    # backoff is at its 4-8 s step, so the quick return below needs the port probe.
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    # polled: the reconnect count is the input's own state
    await until(lambda: h.module.reconnects >= 4, 40, "four reconnects", interval=0.2)
    cpu_share = (cpu_seconds() - cpu0) / (time.monotonic() - wall0)
    assert cpu_share < 0.02, f"{cpu_share:.1%} CPU while the camera is away"
    assert h.module.cam_state in ("stalled", "reconnecting")
    assert h.module.reconnects >= 3
    assert "connection refused" in (h.module.last_error or "")

    before = len(h.frames)
    server.start()  # same port
    back = time.monotonic()
    await h.wait_frames(before + 3, timeout=10)
    assert time.monotonic() - back < 10
    await h.wait_state(("streaming",), timeout=1)
    assert h.module.health().state == "ok"


async def test_a_frozen_server_is_a_stall_and_recovers(rtsp_server, camera_input) -> None:
    server = rtsp_server()
    h = await camera_input(RtspInput, server.url(), "rtsp", options=FAST)
    await h.wait_frames(5, timeout=30)
    server.freeze()  # connection open, no data: only timeouts can notice
    took = await h.wait_state(("stalled",), timeout=10)
    assert took < FAST["stall_timeout_s"] + 3
    assert "timed out" in (h.module.last_error or "") or "no answer" in (h.module.last_error or "")
    before = len(h.frames)
    server.thaw()
    await h.wait_frames(before + 3, timeout=20)


async def test_wrong_path_reports_404_and_backs_off(rtsp_server, camera_input) -> None:
    server = rtsp_server()
    with structlog.testing.capture_logs() as logs:
        h = await camera_input(
            RtspInput, server.url(path="/nope"), "rtsp", options=FAST, start=False
        )
        h.module.backoff_base = 0.2  # same doubling, shorter test
        await h.module.start()
        await until(lambda: h.module.reconnects >= 4, 15, "four reconnects")  # module state
    health = h.module.health()
    assert health.state == "degraded"
    assert "404" in (health.last_error or "")
    assert h.module.cam_state == "reconnecting"
    retries = [e for e in logs if e["event"] == "camera_reconnecting"]
    assert len(retries) >= 4
    for e in retries:
        nominal = 0.2 * 2 ** (e["attempt"] - 1)
        assert nominal * 0.5 <= e["retry_in_s"] <= nominal + 0.01, e
    assert not h.frames


async def test_wrong_credentials_clear_error_and_no_secret_anywhere(
    rtsp_server, camera_input, capfd
) -> None:
    user, good, bad = "operator", "Sup3rS3cretPw", "Wr0ngPassw0rd"
    server = rtsp_server(user=user, password=good)
    with structlog.testing.capture_logs() as logs:
        wrong = await camera_input(
            RtspInput, server.url(user=user, password=bad), "rtsp", options=FAST, start=False
        )
        wrong.module.backoff_base = 0.2
        await wrong.module.start()
        await until(lambda: wrong.module.reconnects >= 2, 15, "two reconnects")  # module state
        assert "401" in (wrong.module.health().last_error or "")
        assert wrong.module.cam_state == "reconnecting"
        await wrong.module.stop()

        right = await camera_input(
            RtspInput, server.url(user=user, password=good), "rtsp", options=FAST
        )
        await right.wait_frames(3, timeout=30)
        server.kill()  # errors after a good connection are logged too
        await right.wait_state(("stalled", "reconnecting"), timeout=10)
        shown = [
            repr(wrong.module.health()),
            repr(right.module.health()),
            repr(right.module.metrics()),
        ]
    assert logs, "expected log lines"
    out, err = capfd.readouterr()
    for text in [*map(repr, logs), *shown, out, err]:
        for secret in (good, bad, f"{user}:"):
            assert secret not in text, text
    assert any("***@127.0.0.1" in repr(e) for e in logs)


async def test_bad_url_is_a_config_error(camera_input) -> None:
    from spyoncino.core.contracts import ModuleConfigError

    with pytest.raises(ModuleConfigError, match=r"cameras\.cam\.rtsp\.detect_url"):
        await camera_input(
            RtspInput,
            "rtsp://u:p@cam.lan/main",
            "rtsp",
            options={"detect_url": "http://u:p@cam.lan/sub"},
            start=False,
        )


async def test_detect_sub_stream_is_the_one_decoded(rtsp_server, camera_input) -> None:
    server = rtsp_server()
    h = await camera_input(
        RtspInput,
        "rtsp://127.0.0.1:9/main-stream-not-decoded",
        "rtsp",
        options={**FAST, "detect_url": server.url(), "fast_decode": True},
    )
    await h.wait_frames(3, timeout=30)
    assert h.module.metrics()["stream"] == "detect"
    assert h.frames[-1][1].luma.shape == (240, 320)  # deblocking skipped, pictures still fine


def test_decoder_threads_follow_the_stream_size() -> None:
    assert RtspInput.auto_threads(768, 576) == 1
    assert RtspInput.auto_threads(1280, 720) == 1
    assert RtspInput.auto_threads(1920, 1080) == 2
    assert RtspInput.auto_threads(0, 0) == 2  # unknown before the first picture: play safe


async def test_colour_decoded_on_other_threads_while_streaming(rtsp_server, camera_input) -> None:
    """Consumers (detector, clips) convert frames on pool threads while the camera decodes.

    A full `spyoncino run` on this stream segfaulted inside PyAV's converter (`to_ndarray`,
    called by the clip module) while the camera thread decoded; this test does not reproduce
    that crash reliably, it checks the replacement (OpenCV on plane views) under the same
    concurrency.
    """
    server = rtsp_server()
    h = await camera_input(RtspInput, server.url(), "rtsp", options=FAST)
    await h.wait_frames(35, timeout=30)
    seen = 0
    end = len(h.frames) + 40  # about 4 s of streaming while colour is decoded from threads
    while len(h.frames) < end:
        frames = [f for _, f in h.frames[-4:]]
        images = await asyncio.gather(*(asyncio.to_thread(lambda f=f: f.image) for f in frames))
        assert all(img.shape == (576, 768, 3) for img in images)
        seen += len(images)
        await h.wait_frames(len(h.frames) + 1, timeout=10)  # the next frame, then again
    assert seen > 40
    assert h.module.cam_state == "streaming"


async def test_packets_are_kept_compressed_and_remux_into_a_playable_clip(
    rtsp_server, camera_input, tmp_path
) -> None:
    import av

    from spyoncino.helpers.packets import cut_decodable
    from spyoncino.modules.event.clip import _Session, mux_mp4, take_source

    server = rtsp_server()
    h = await camera_input(RtspInput, server.url(), "rtsp", options=FAST)
    await h.wait_frames(45, timeout=30)
    last = h.frames[-1][1]
    ring = last.source_packets
    assert ring is not None and ring.ready
    assert (ring.width, ring.height) == (768, 576)
    ring.retain(3.0)
    await h.wait_frames(len(h.frames) + 40, timeout=30)
    session = _Session(codec=None, encoder="copy", size=(768, 576), source=ring, rate=10.0)
    take_source(session)
    assert session.packets[0].key
    newest = h.frames[-1][1].mono_ts
    # packets are on the frames' clock: the newest is within a GOP of the newest frame
    assert abs(session.last_pts / 1000 - newest) < 1.0
    packets = cut_decodable(session.packets, round((newest - 3.0) * 1000), session.last_pts)
    out = tmp_path / "clip.mp4"
    duration = mux_mp4(packets, session.size, session.rate, out)
    with av.open(str(out)) as c:
        pictures = sum(1 for _ in c.decode(video=0))
    assert duration >= 3.0
    assert pictures == len(packets)  # every packet decoded: the first keyframe carries SPS/PPS


async def test_a_hardware_decoder_the_box_lacks_falls_back_to_software(
    rtsp_server, camera_input
) -> None:
    # FFmpeg lists h264_v4l2m2m everywhere; without the Pi's decoder device it cannot open
    server = rtsp_server()
    h = await camera_input(
        RtspInput, server.url(), "rtsp", options=FAST, section={"hw_decoder": "h264_v4l2m2m"}
    )
    await h.wait_frames(5, timeout=30)
    assert h.module.metrics()["decoder"] == "h264"
    assert h.frames[-1][1].image.shape == (576, 768, 3)


def test_nv12_frames_give_the_same_luma_and_colour_as_i420() -> None:
    import av
    import numpy as np

    from spyoncino.helpers.camera import av_frame_to_raw
    from tests.modules.input.conftest import clip

    with av.open(str(clip())) as c:
        frame = next(c.decode(video=0))
    i420 = av_frame_to_raw(frame, 320)
    nv12 = av_frame_to_raw(frame.reformat(format="nv12"), 320)
    assert np.array_equal(nv12.luma, i420.luma)
    diff = np.abs(nv12.decode().astype(int) - i420.decode().astype(int))
    assert diff.mean() < 1.0  # the same picture; only chroma interpolation differs


# -- detect sub-stream decoded, main stream recorded by remux ---------------------------------
@pytest.fixture(scope="session")
def two_streams():
    """The footage as a camera's 1280x720 main stream and 640x360 sub-stream (cached)."""
    from tests.modules.input.conftest import clip
    from tests.support.media import scaled_h264

    return scaled_h264(clip(), 1280, 720), scaled_h264(clip(), 640, 360)


def _grey(img, width: int = 160):
    import cv2

    g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return cv2.resize(g, (width, width * g.shape[0] // g.shape[1]), interpolation=cv2.INTER_AREA)


async def clip_module(h, tmp_path, **cfg):
    """A clip recorder on the input's bus, and the list its artifacts land in."""
    from spyoncino.core.config import build_app_model
    from spyoncino.core.contracts import ModuleContext
    from spyoncino.modules.event.clip import ClipRecorder
    from spyoncino.schemas import topics
    from tests.support.wait import Log

    ClipRecorder.name = "clip"
    model = build_app_model({"rtsp": RtspInput, "clip": ClipRecorder})
    app = model.model_validate(
        {
            "cameras": {"cam": {"source": "rtsp://x/y"}},
            "clip": cfg,
            "storage": {"root": str(tmp_path)},
        }
    )
    mod = ClipRecorder(ModuleContext(bus=h.bus, executor=h.executor, app=app, instance="clip"))
    out: Log = Log()

    async def on(msg) -> None:
        out.append(msg.payload)

    h.bus.subscribe(topics.ARTIFACT.at(artifact="clip"), on, policy="block", module="test")
    await mod.configure(app)
    await mod.start()
    return mod, out


async def one_event(h, out, start: float, seconds: float, event_id: str = "ev"):
    """An event from ``start`` (frame clock) lasting ``seconds`` of frames; its clip."""
    from spyoncino.schemas.events import EventNotice

    def notice(phase: str, end: float | None = None) -> EventNotice:
        return EventNotice(
            event_id=event_id,
            camera_id="cam",
            kind="object",
            phase=phase,  # type: ignore[arg-type]
            labels=("person",),
            top_score=0.9,
            started_at=1_700_000_000.0,
            updated_at=1_700_000_000.0,
            ended_at=None if end is None else 1_700_000_000.0 + end,
            started_mono=start,
        )

    n = len(out)
    await h.bus.publish("event.object.started", notice("started"))
    await h.wait_frames(len(h.frames) + round(seconds * 10), timeout=30)
    await h.bus.publish("event.object.ended", notice("ended", seconds))
    return (await out.wait_for(n + 1, timeout=30))[n:]


async def test_detect_url_decodes_the_sub_stream_and_clips_remux_the_main_one(
    rtsp_server, camera_input, two_streams, tmp_path
) -> None:
    import av
    import numpy as np

    main, sub = two_streams
    server = rtsp_server(mounts={"/main": main, "/sub": sub})
    h = await camera_input(
        RtspInput, server.url("/main"), "rtsp", options={**FAST, "detect_url": server.url("/sub")}
    )
    clips, out = await clip_module(h, tmp_path, preroll_s=2.0, postroll_s=1.0)
    await h.wait_frames(30, timeout=30)
    await until(lambda: h.module.record.live, 20, "main stream received")
    await h.wait_frames(len(h.frames) + 30, timeout=30)  # 3 s: a pre-roll's worth in the ring
    start = h.frames[-1][1].mono_ts

    (art,) = await one_event(h, out, start, 2.0)
    frames = [f for _, f in h.frames]

    # the clip is the main stream, remuxed: its size, no encoder anywhere
    assert (art.width, art.height) == (1280, 720)
    assert clips.frames_encoded == 0 and clips.metrics()["clips_remuxed"] == 1
    with av.open(art.path) as c:
        pics = [
            (float(f.pts * f.time_base), f.to_ndarray(format="bgr24")) for f in c.decode(video=0)
        ]
    assert pics[0][1].shape == (720, 1280, 3)
    # pre-roll (2 s, from the keyframe before it: GOP 1 s) + 2 s event + 1 s post-roll
    assert 4.8 <= art.duration_s <= 6.3, art.duration_s
    # and on the frames' clock: the clip's pictures are the sub-stream's pictures of the same
    # moments. Each clip picture is matched to the detect frame that looks most like it; the
    # implied clip start must be the keyframe at or before start - pre-roll
    lumas = [(f.mono_ts, _grey(f.luma).astype(np.int16)) for f in frames]
    starts = []
    for t, img in pics[::5]:
        g = _grey(img).astype(np.int16)
        mono, _ = min(lumas, key=lambda ml: float(np.abs(ml[1] - g).mean()))
        starts.append(mono - t)
    clip_start = float(np.median(starts)) - start
    assert -3.0 - 0.3 <= clip_start <= -2.0 + 0.3, (clip_start, starts)  # measured -2.2

    # the main stream was never decoded; the sub-stream is the one that was
    m = h.module.metrics()
    assert m["stream"] == "detect" and m["resolution"] == "640x360"
    assert m["record_resolution"] == "1280x720" and m["record_state"] == "streaming"
    assert m["record_decoder_open"] == 0 and int(m["record_packets"]) > 50
    assert m["clip_stream"] == "main"
    assert int(m["frames_decoded"]) >= len(frames)
    assert h.module.health().state == "ok"
    await clips.stop()


async def test_main_stream_down_detection_goes_on_and_clips_fall_back_to_the_sub_stream(
    rtsp_server, camera_input, two_streams, tmp_path
) -> None:
    main, sub = two_streams
    detect = rtsp_server(mounts={"/sub": sub})
    record = rtsp_server(mounts={"/main": main})
    h = await camera_input(
        RtspInput, record.url("/main"), "rtsp", options={**FAST, "detect_url": detect.url("/sub")}
    )
    clips, out = await clip_module(h, tmp_path, preroll_s=1.0, postroll_s=0.5)
    await h.wait_frames(20, timeout=30)
    await until(lambda: h.module.clip_stream == "main", 20, "clips from the main stream")

    record.kill()  # the main stream goes away; the sub-stream does not
    await until(lambda: h.module.record.state == "reconnecting", 20, "main stream lost")
    await h.wait_frames(len(h.frames) + 25, timeout=30)  # still detecting, pre-roll refilled
    m = h.module.metrics()
    assert m["camera_state"] == "streaming" and m["clip_stream"] == "detect"
    assert m["record_state"] == "reconnecting" and m["record_last_error"]
    health = h.module.health()
    assert health.state == "degraded" and "clips from the sub-stream" in health.detail
    (art,) = await one_event(h, out, h.frames[-1][1].mono_ts, 1.0, "down")
    assert (art.width, art.height) == (640, 360)  # a clip all the same, at the sub-stream's size
    assert art.duration_s >= 2.0

    record.start()  # the same port again: the camera is back
    await until(lambda: h.module.record.live, 40, "main stream back")
    await h.wait_frames(len(h.frames) + 25, timeout=30)
    assert h.module.metrics()["clip_stream"] == "main"
    assert h.module.health().state == "ok"
    (art,) = await one_event(h, out, h.frames[-1][1].mono_ts, 1.0, "back")
    assert (art.width, art.height) == (1280, 720)
    assert int(h.module.metrics()["record_reconnects"]) >= 1
    assert clips.frames_encoded == 0  # both clips remuxed, neither encoded
    await clips.stop()


async def test_a_sub_stream_reconnect_does_not_interrupt_the_main_stream(
    rtsp_server, camera_input, two_streams
) -> None:
    main, sub = two_streams
    detect = rtsp_server(mounts={"/sub": sub})
    record = rtsp_server(mounts={"/main": main})
    h = await camera_input(
        RtspInput, record.url("/main"), "rtsp", options={**FAST, "detect_url": detect.url("/sub")}
    )
    await h.wait_frames(10, timeout=30)
    await until(lambda: h.module.record.live, 20, "main stream received")
    detect.kill()
    await h.wait_state(("reconnecting", "stalled"), timeout=20)
    before = h.module.record.packets
    await until(lambda: h.module.record.packets >= before + 20, 10, "main packets go on")
    m = h.module.metrics()
    assert m["record_state"] == "streaming" and m["record_reconnects"] == 0
