"""CSI (picamera2) input against a fake with the subset of the Picamera2 API it uses.

The fake's H.264 encoder has the shape of picamera2's (``H264Encoder(bitrate, repeat,
iperiod)``, started by ``Picamera2.start_encoder(encoder, output, name=...)``, calling
``Output.outputframe(frame, keyframe, timestamp)`` with microseconds since its first frame on
the sensor clock) and produces real H.264: it encodes the fake's frames with libx264 through
PyAV. No test here runs on a Pi.
"""

from __future__ import annotations

import sys
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from spyoncino.core.bus import Message
from spyoncino.core.config import build_app_model
from spyoncino.core.contracts import ModuleConfigError, ModuleContext
from spyoncino.modules.event.clip import ClipRecorder
from spyoncino.modules.input import csi
from spyoncino.modules.input.csi import Backend, CsiInput, i420_to_bgr
from spyoncino.platform.profiles import detect_profile
from spyoncino.schemas import topics
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact
from tests.support.wait import Log, until


class FakeTransform:
    def __init__(self, hflip: int = 0, vflip: int = 0) -> None:
        self.hflip = hflip
        self.vflip = vflip


def scene(w: int, h: int, number: int = 0) -> np.ndarray:
    """A dark picture with a bright block in the top-left corner and a red bar at the bottom;
    ``number`` (the fake's frame counter) drawn as ten black/white squares across the middle."""
    img = np.full((h, w, 3), 30, np.uint8)
    img[: h // 4, : w // 4] = 230
    img[-h // 8 :, :] = (0, 0, 200)
    cell = w // 20
    y = h * 3 // 8
    for bit in range(10):
        x = w // 4 + bit * cell
        img[y : y + cell, x : x + cell] = 255 if (number >> bit) & 1 else 0
    return img


def read_number(img: np.ndarray) -> int:
    """The number ``scene`` drew into a (grey or BGR) picture."""
    h, w = img.shape[:2]
    cell = w / 20
    y = int(h * 3 / 8 + cell / 2)
    n = 0
    for bit in range(10):
        if float(np.mean(img[y, int(w / 4 + (bit + 0.5) * cell)])) > 128:
            n |= 1 << bit
    return n


def to_i420(img: np.ndarray, stride: int) -> np.ndarray:
    """BGR -> YUV420 laid out like a libcamera buffer whose rows are ``stride`` bytes."""
    h, w = img.shape[:2]
    i420 = cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    if stride == w:
        return i420.reshape(h * 3 // 2, w)
    y = i420[: w * h].reshape(h, w)
    u = i420[w * h : w * h + w * h // 4].reshape(h // 2, w // 2)
    v = i420[w * h + w * h // 4 :].reshape(h // 2, w // 2)
    ys = np.zeros((h, stride), np.uint8)
    ys[:, :w] = y
    us = np.zeros((h // 2, stride // 2), np.uint8)
    us[:, : w // 2] = u
    vs = np.zeros((h // 2, stride // 2), np.uint8)
    vs[:, : w // 2] = v
    return np.concatenate([ys.reshape(-1), us.reshape(-1), vs.reshape(-1)]).reshape(
        h * 3 // 2, stride
    )


class FakeRequest:
    def __init__(self, cam: FakePicamera2, number: int = 0, sensor_ns: int = 0) -> None:
        self.cam = cam
        self.number = number
        self.sensor_ns = sensor_ns
        self.released = False
        self._images: dict[str, np.ndarray] = {}

    def _image(self, name: str) -> np.ndarray:
        if name in self._images:
            return self._images[name].copy()
        cfg = self.cam.camera_config[name]
        w, h = cfg["size"]
        img = scene(w, h, self.number)
        t = self.cam.transform
        if t.hflip:
            img = img[:, ::-1]
        if t.vflip:
            img = img[::-1]
        self._images[name] = to_i420(np.ascontiguousarray(img), cfg["stride"])
        return self._images[name].copy()

    def get_metadata(self) -> dict[str, Any]:
        return {"SensorTimestamp": self.sensor_ns, "FrameDuration": 33333}

    def make_array(self, name: str) -> np.ndarray:
        assert not self.released, "used after release"
        return self._image(name)  # picamera2: (h*3/2, stride) for YUV420

    def make_buffer(self, name: str) -> np.ndarray:
        assert not self.released, "used after release"
        return self._image(name).reshape(-1)

    def release(self) -> None:
        self.released = True
        self.cam.outstanding -= 1


class FakeOutput:
    """picamera2.outputs.Output: what encoders write to (they accept nothing else)."""

    def __init__(self, pts: Any = None) -> None:
        self.recording = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: Any = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        pass

    def _add_stream(self, *args: Any, **kwargs: Any) -> None:
        pass


US = Fraction(1, 1_000_000)


class FakeH264Encoder:
    """picamera2.encoders.h264_encoder.H264Encoder's shape, encoding with libx264 via PyAV.

    Like the V4L2 encoder: timestamps are microseconds since ``firsttimestamp`` (the first
    frame's SensorTimestamp), SPS/PPS come in-band on every keyframe, one access unit per
    frame, no B-frames. ``fail_start`` makes ``start`` raise as a busy codec would;
    ``silent`` makes it stop producing output.
    """

    instances: list[FakeH264Encoder] = []
    fail_start: Exception | None = None

    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int | None = None,
        framerate: float | None = None,
        enable_sps_framerate: bool = False,
        qp: int | None = None,
        profile: str | None = None,
    ) -> None:
        self.bitrate, self.repeat, self.iperiod = bitrate, repeat, iperiod
        self.framerate = framerate
        self._output: list[Any] = []
        self.name: str | None = None
        self.width = self.height = self.stride = 0
        self.format: str | None = None
        self.firsttimestamp: int | None = None
        self._running = False
        self._codec: Any = None
        self.silent = False
        self.frames_encoded = 0
        FakeH264Encoder.instances.append(self)

    @property
    def output(self) -> Any:
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value: Any) -> None:
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, FakeOutput) for v in values):
            raise RuntimeError("Must pass Output")
        self._output = values

    def start(self, quality: Any = None) -> None:
        if self.fail_start is not None:
            raise self.fail_start
        codec: Any = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = self.width, self.height, "yuv420p"
        codec.time_base = US
        codec.framerate = Fraction(round(self.framerate or 30))
        codec.gop_size = self.iperiod or 30
        codec.max_b_frames = 0
        codec.bit_rate = self.bitrate or 2_000_000
        codec.options = {"preset": "ultrafast", "tune": "zerolatency"}
        codec.open()
        self._codec = codec
        self._running = True
        self.firsttimestamp = None
        for out in self._output:
            out.start()

    def stop(self) -> None:
        if not self._running:
            raise RuntimeError("Encoder already stopped")
        self._running = False
        self._codec = None
        for out in self._output:
            out.stop()

    def _timestamp(self, request: FakeRequest) -> int:
        ts = int(request.get_metadata()["SensorTimestamp"] / 1000)  # ns to us
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
            return 0
        return ts - self.firsttimestamp

    def encode(self, stream: str, request: FakeRequest) -> None:
        if not self._running or self.silent:
            return
        assert self.format == "YUV420" and self.stride == self.width
        vf = av.VideoFrame.from_ndarray(request._image(stream), format="yuv420p")
        vf.pts, vf.time_base = self._timestamp(request), US
        for p in self._codec.encode(vf):
            for out in self._output:
                out.outputframe(bytes(p), bool(p.is_keyframe), int(p.pts))
        self.frames_encoded += 1


class FakePicamera2:
    """create_video_configuration (main + lores), configure, start, capture_request, stop,
    start_encoder / stop_encoder (encoders see every frame, before the app gets it)."""

    instances: list[FakePicamera2] = []
    cameras = 1
    #: the sensor clock starts long before the process: frames and packets carry its time
    SENSOR_EPOCH_NS = 4_321_000_000_000

    def __init__(self, camera_num: int = 0) -> None:
        if camera_num >= self.cameras:
            raise IndexError("list index out of range")
        self.camera_num = camera_num
        self.camera_config: dict[str, Any] = {}
        self.transform = FakeTransform()
        self.started = False
        self.stopped = False
        self.closed = False
        self.outstanding = 0
        self.created: dict[str, Any] = {}
        self.encoders: set[FakeH264Encoder] = set()
        self.timeout_once = False
        self.frames = 0
        #: sensor time (ns) of each frame number
        self.sensor_ns: dict[int, int] = {}
        FakePicamera2.instances.append(self)

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [{"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/...", "Num": 0}]

    def create_video_configuration(self, main: dict[str, Any], lores: dict[str, Any], **kw: Any):
        self.created = {"main": dict(main), "lores": dict(lores), **kw}
        return {"main": dict(main), "lores": dict(lores), **kw}

    def configure(self, config: dict[str, Any]) -> None:
        main, lores = dict(config["main"]), dict(config["lores"])
        main["stride"] = main["size"][0]
        lores["stride"] = (lores["size"][0] + 63) // 64 * 64  # libcamera pads rows
        self.camera_config = {"main": main, "lores": lores}
        self.transform = config["transform"]

    def start(self) -> None:
        self.started = True

    def start_encoder(
        self,
        encoder: Any = None,
        output: Any = None,
        pts: Any = None,
        quality: Any = None,
        name: str | None = None,
    ) -> None:
        if output is not None:
            encoder.output = output
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        name = name or "main"
        stream = self.camera_config[name]
        encoder.name = name
        encoder.width, encoder.height = stream["size"]
        encoder.format = stream["format"]
        encoder.stride = stream["stride"]
        if encoder.framerate is None:
            encoder.framerate = 30.0
        encoder.start(quality=quality)
        self.encoders.add(encoder)

    def stop_encoder(self, encoders: Any = None) -> None:
        for encoder in list(self.encoders if encoders is None else [encoders]):
            encoder.stop()
            self.encoders.discard(encoder)

    def capture_request(self, wait: float | None = None) -> FakeRequest:
        assert self.started
        assert wait is not None, "a wait without timeout could hang the camera thread"
        time.sleep(1 / 30)
        if self.timeout_once:  # the sensor delivered nothing within ``wait``
            self.timeout_once = False
            raise TimeoutError
        self.frames += 1
        ns = self.SENSOR_EPOCH_NS + time.monotonic_ns()
        self.sensor_ns[self.frames] = ns
        request = FakeRequest(self, self.frames, ns)
        for encoder in list(self.encoders):
            encoder.encode(encoder.name, request)
        self.outstanding += 1
        return request

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


FAKE_CONTROLS = SimpleNamespace(
    AeExposureModeEnum=SimpleNamespace(Normal="ae-normal", Short="ae-short", Long="ae-long"),
    AwbModeEnum=SimpleNamespace(
        Auto="awb-auto",
        Incandescent="awb-inc",
        Tungsten="awb-tun",
        Fluorescent="awb-flu",
        Indoor="awb-ind",
        Daylight="awb-day",
        Cloudy="awb-cloud",
    ),
)


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    """picamera2 on a board without a hardware H.264 encoder (what a Pi 5 looks like)."""
    FakePicamera2.instances = []
    FakePicamera2.cameras = 1
    backend = Backend(
        Picamera2=FakePicamera2,
        Transform=FakeTransform,
        controls=FAKE_CONTROLS,
        no_encoder="this board (PiSP: Pi 5) has no hardware H.264 encoder",
    )
    monkeypatch.setattr(csi, "load_backend", lambda: backend)
    return FakePicamera2


@pytest.fixture
def fake_picamera2_hw(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    """picamera2 on a board with the hardware encoder (what a Pi 4 looks like)."""
    FakePicamera2.instances = []
    FakePicamera2.cameras = 1
    FakeH264Encoder.instances = []
    FakeH264Encoder.fail_start = None
    backend = Backend(
        Picamera2=FakePicamera2,
        Transform=FakeTransform,
        controls=FAKE_CONTROLS,
        H264Encoder=FakeH264Encoder,
        Output=FakeOutput,
    )
    monkeypatch.setattr(csi, "load_backend", lambda: backend)
    return FakePicamera2


def test_accepts_csi_urls() -> None:
    assert CsiInput.accepts("csi://0")
    assert CsiInput.accepts("csi://1")
    assert not CsiInput.accepts("csi://front")
    assert not CsiInput.accepts("/dev/video0")


async def test_main_and_lores_configured_together_and_lores_luma_used(
    fake_picamera2, camera_input
) -> None:
    h = await camera_input(
        CsiInput,
        "csi://0",
        "csi",
        options={"width": 1536, "height": 864, "fps": 30, "exposure": "short", "awb": "daylight"},
    )
    await h.wait_frames(5, timeout=10)
    cam = fake_picamera2.instances[0]
    assert cam.created["main"] == {"size": (1536, 864), "format": "YUV420"}
    assert cam.created["lores"] == {"size": (320, 180), "format": "YUV420"}
    assert cam.created["controls"] == {
        "FrameRate": 30.0,
        "AeExposureMode": "ae-short",
        "AwbMode": "awb-day",
    }
    frame = h.frames[-1][1]
    assert (frame.width, frame.height) == (1536, 864)
    # the lores Y plane, padding (stride 320 -> 320, here 320 is 64-aligned) stripped
    assert frame.luma.shape == (180, 320)
    assert frame.luma[10, 10] > 200  # bright block top-left
    assert frame.luma[170, 300] < 100
    assert frame._image is None
    img = frame.image  # lazily converted from the main YUV420 copy
    assert img.shape == (864, 1536, 3)
    assert img[5, 5].min() > 200
    assert img[-5, 700, 2] > 150  # red bar at the bottom
    assert cam.outstanding == 0  # every request went back to libcamera


async def test_a_camera_that_sets_no_size_streams_the_boards(fake_picamera2, camera_input) -> None:
    """A ribbon camera configured with nothing but its source streams the size the board's
    profile names (a Pi Zero 2 W 640x480, a Pi 4 1280x720), not 1920x1080 on every board:
    on a Zero that is 6.75x the pixels to copy out of the camera per frame."""
    zero, _ = detect_profile(override="pi-zero-2w")
    pi4, _ = detect_profile(override="pi-4")
    assert csi.Config.profile_defaults(zero) == {"width": 640, "height": 480}
    assert csi.Config.profile_defaults(pi4) == {"width": 1280, "height": 720}
    h = await camera_input(CsiInput, "csi://0", "csi", section={"width": 640, "height": 480})
    await h.wait_frames(2, timeout=10)
    cam = fake_picamera2.instances[0]
    assert cam.created["main"] == {"size": (640, 480), "format": "YUV420"}
    assert cam.created["lores"] == {"size": (320, 240), "format": "YUV420"}
    assert (h.frames[-1][1].width, h.frames[-1][1].height) == (640, 480)


def test_a_camera_size_is_set_whole_or_not_at_all() -> None:
    """Half a size would pair the owner's width with the board's height: refused, by name."""
    with pytest.raises(ValidationError, match="set width and height together"):
        csi.CsiCamera.model_validate({"width": 1536})


async def test_rotation_180_flips_both_axes_in_the_isp(fake_picamera2, camera_input) -> None:
    h = await camera_input(
        CsiInput, "csi://0", "csi", options={"width": 640, "height": 480, "rotation": 180}
    )
    await h.wait_frames(2, timeout=10)
    cam = fake_picamera2.instances[0]
    t = cam.created["transform"]
    assert (t.hflip, t.vflip) == (1, 1)
    luma = h.frames[-1][1].luma
    assert luma.shape == (240, 320)
    assert luma[-5, -5] > 200  # the top-left block is now bottom-right
    assert luma[5, 5] < 100


async def test_hflip_with_rotation_cancels_out(fake_picamera2, camera_input) -> None:
    h = await camera_input(
        CsiInput,
        "csi://0",
        "csi",
        options={"width": 640, "height": 480, "rotation": 180, "hflip": True},
    )
    await h.wait_frames(1, timeout=10)
    t = fake_picamera2.instances[0].created["transform"]
    assert (t.hflip, t.vflip) == (0, 1)


async def test_second_connector_and_missing_camera(fake_picamera2, camera_input) -> None:
    fake_picamera2.cameras = 2
    h = await camera_input(CsiInput, "csi://1", "csi", options={"width": 640, "height": 480})
    await h.wait_frames(1, timeout=10)
    assert fake_picamera2.instances[0].camera_num == 1

    fake_picamera2.cameras = 1
    gone = await camera_input(CsiInput, "csi://1", "csi")
    await gone.wait_state(("reconnecting",), timeout=5)
    assert "no camera on csi://1" in (gone.module.health().last_error or "")


async def test_stop_releases_the_camera(fake_picamera2, camera_input) -> None:
    h = await camera_input(CsiInput, "csi://0", "csi", options={"width": 640, "height": 480})
    await h.wait_frames(1, timeout=10)
    await h.module.stop()
    cam = fake_picamera2.instances[0]
    assert cam.stopped
    assert cam.closed


async def test_without_picamera2_the_module_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, camera_input
) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails like on a PC
    monkeypatch.setitem(sys.modules, "libcamera", None)
    h = await camera_input(CsiInput, "csi://0", "csi", start=False)
    with pytest.raises(ModuleConfigError, match=r"apt install python3-picamera2") as err:
        await h.module.start()
    assert "--system-site-packages" in str(err.value)
    assert "constraints/picamera2.txt" in str(err.value)  # numpy 1 for apt's picamera2


def test_i420_with_padded_rows_converts_like_unpadded() -> None:
    img = scene(100, 60)
    plain = i420_to_bgr(to_i420(img, 100), 100, 60, 100)
    padded = i420_to_bgr(to_i420(img, 128), 100, 60, 128)
    assert np.array_equal(plain, padded)


# -- clips from the hardware encoder --------------------------------------------------------
PREROLL_S = 1.0
POSTROLL_S = 0.5


async def start_recorder(h: Any, tmp_path: Path) -> tuple[ClipRecorder, Log[MediaArtifact]]:
    """The clip recorder on the camera's bus, as the app wires it."""
    ClipRecorder.name = "clip"
    app = build_app_model({"clip": ClipRecorder}).model_validate(
        {
            "cameras": {"cam": {"source": "x.mp4"}},
            "clip": {"preroll_s": PREROLL_S, "postroll_s": POSTROLL_S},
            "storage": {"root": str(tmp_path / "media")},
        }
    )
    rec = ClipRecorder(ModuleContext(bus=h.bus, executor=h.executor, app=app, instance="clip"))
    await rec.configure(app)
    await rec.start()
    clips: Log[MediaArtifact] = Log()

    async def on(msg: Message[MediaArtifact]) -> None:
        clips.append(msg.payload)

    h.bus.subscribe(topics.ARTIFACT.at(artifact="clip"), on, policy="block", module="test")
    return rec, clips


async def record_event(h: Any, clips: Log[MediaArtifact]) -> tuple[MediaArtifact, Any, Any]:
    """An event of about half a second once the pre-roll is there; (clip, first, last frame)."""
    await h.wait_frames(60, timeout=60)
    first = h.frames[-1][1]
    started = EventNotice(
        event_id="ev1",
        camera_id="cam",
        kind="object",
        phase="started",
        labels=("person",),
        top_score=0.9,
        started_at=first.wall_ts,
        updated_at=first.wall_ts,
        started_mono=first.mono_ts,
    )
    await h.bus.publish("event.object.started", started)
    await h.wait_frames(len(h.frames) + 15, timeout=60)
    last = h.frames[-1][1]
    end = first.wall_ts + (last.mono_ts - first.mono_ts)
    ended = started.model_copy(update={"phase": "ended", "updated_at": end, "ended_at": end})
    await h.bus.publish("event.object.ended", ended)
    (clip,) = await clips.wait_for(1, timeout=60)
    return clip, first, last


def decode_numbers(path: str) -> tuple[tuple[int, int], list[int]]:
    with av.open(path) as c:
        s = c.streams.video[0]
        numbers = [read_number(f.to_ndarray(format="bgr24")) for f in c.decode(s)]
        return (s.codec_context.width, s.codec_context.height), numbers


async def test_hardware_encoder_clip_is_remuxed_with_preroll_and_nothing_encoded(
    fake_picamera2_hw, camera_input, tmp_path, monkeypatch
) -> None:
    conversions: list[int] = []
    real = csi.i420_to_bgr
    monkeypatch.setattr(csi, "i420_to_bgr", lambda *a: conversions.append(1) or real(*a))
    h = await camera_input(
        CsiInput,
        "csi://0",
        "csi",
        options={"width": 640, "height": 360, "fps": 30, "keyframe_s": 0.5},
        start=False,
    )
    rec, clips = await start_recorder(h, tmp_path)
    try:
        await h.module.start()
        clip, first, last = await record_event(h, clips)
        cam = fake_picamera2_hw.instances[0]
        (encoder,) = FakeH264Encoder.instances
        assert (encoder.repeat, encoder.iperiod, encoder.bitrate) == (True, 15, 2_500_000)
        assert cam.created["buffer_count"] == 6  # the encoder holds buffers while it works
        # the clip is the encoder's stream at main's resolution, every picture of it, in order
        size, numbers = decode_numbers(clip.path)
        assert size == (640, 360) == (clip.width, clip.height)
        assert numbers == list(range(numbers[0], numbers[-1] + 1))
        # sensor clock mapped onto the frames' clock: the pre-roll is there (from the keyframe
        # at or before it; less a frame's delivery jitter), so is the post-roll
        ns = cam.sensor_ns
        preroll = (ns[read_number(first.luma)] - ns[numbers[0]]) / 1e9
        assert PREROLL_S - 0.2 <= preroll <= PREROLL_S + 1.5
        postroll = (ns[numbers[-1]] - ns[read_number(last.luma)]) / 1e9
        assert postroll >= POSTROLL_S - 0.2
        # the clip recorder encoded nothing and nothing was converted per frame
        assert rec.frames_encoded == 0
        assert rec.metrics()["clips_remuxed"] == 1
        assert rec.preroll_bytes("cam") == 0
        assert conversions == []
        m = h.module.metrics()
        assert m["clip_source"] == "hw_encoder"
        assert int(m["encoded_packets"]) >= len(numbers)
        assert first.source_packets is not None
    finally:
        await rec.stop()
    await h.module.stop()
    assert fake_picamera2_hw.instances[0].encoders == set()  # stopped with the camera


async def test_without_a_hardware_encoder_the_recorder_encodes_raw_frames(
    fake_picamera2, camera_input, tmp_path
) -> None:
    h = await camera_input(
        CsiInput, "csi://0", "csi", options={"width": 640, "height": 360}, start=False
    )
    rec, clips = await start_recorder(h, tmp_path)
    try:
        await h.module.start()
        clip, first, _ = await record_event(h, clips)
        assert first.source_packets is None
        size, numbers = decode_numbers(clip.path)
        assert size == (640, 360)
        assert numbers[0] <= read_number(first.luma)  # the pre-roll ring of raw frames
        assert rec.frames_encoded > 0  # libx264 in the clip recorder, during the event
        assert rec.metrics()["clips_remuxed"] == 0
        m = h.module.metrics()
        assert m["clip_source"] == "raw"
        assert "Pi 5" in str(m["clip_source_reason"])
    finally:
        await rec.stop()


async def test_an_encoder_that_fails_to_start_leaves_raw_frames(
    fake_picamera2_hw, camera_input
) -> None:
    FakeH264Encoder.fail_start = OSError(16, "Device or resource busy")
    h = await camera_input(CsiInput, "csi://0", "csi", options={"width": 640, "height": 360})
    await h.wait_frames(3, timeout=10)
    assert all(f.source_packets is None for _, f in h.frames)
    m = h.module.metrics()
    assert m["clip_source"] == "raw"
    assert "failed to start" in str(m["clip_source_reason"])
    assert "busy" in str(m["clip_source_reason"])


async def test_hw_encoder_off_and_oversized_main_use_raw_frames(
    fake_picamera2_hw, camera_input
) -> None:
    off = await camera_input(
        CsiInput, "csi://0", "csi", options={"width": 640, "height": 360, "hw_encoder": "off"}
    )
    await off.wait_frames(2, timeout=10)
    assert FakeH264Encoder.instances == []
    assert off.frames[-1][1].source_packets is None
    assert off.module.metrics()["clip_source_reason"] == "csi.hw_encoder is off"
    await off.module.stop()

    big = await camera_input(CsiInput, "csi://0", "csi", options={"width": 2304, "height": 1296})
    await big.wait_frames(1, timeout=20)
    assert FakeH264Encoder.instances == []
    assert "larger than the hardware encoder" in str(big.module.metrics()["clip_source_reason"])


async def test_an_encoder_gone_silent_falls_back_to_raw_frames(
    fake_picamera2_hw, camera_input, monkeypatch
) -> None:
    monkeypatch.setattr(CsiInput, "encoder_silent_s", 0.3)
    h = await camera_input(CsiInput, "csi://0", "csi", options={"width": 640, "height": 360})
    await h.wait_frames(3, timeout=10)
    assert h.frames[-1][1].source_packets is not None
    (encoder,) = FakeH264Encoder.instances
    encoder.silent = True
    await until(lambda: h.module.clip_source == "raw", 10, "fallback to raw frames")
    await h.wait_frames(len(h.frames) + 2, timeout=10)
    assert h.frames[-1][1].source_packets is None
    assert fake_picamera2_hw.instances[0].encoders == set()
    assert "no encoded packet" in str(h.module.metrics()["clip_source_reason"])


async def test_a_reopened_camera_starts_a_fresh_encoder_into_the_same_ring(
    fake_picamera2_hw, camera_input, monkeypatch
) -> None:
    monkeypatch.setattr(CsiInput, "backoff_base", 0.05)
    h = await camera_input(CsiInput, "csi://0", "csi", options={"width": 640, "height": 360})
    await h.wait_frames(3, timeout=10)
    ring = h.frames[-1][1].source_packets
    assert ring is not None and ring.ready
    generation = ring.generation
    fake_picamera2_hw.instances[0].timeout_once = True
    await until(lambda: len(fake_picamera2_hw.instances) == 2, 10, "camera reopened")
    await h.wait_frames(len(h.frames) + 3, timeout=10)
    assert fake_picamera2_hw.instances[0].encoders == set()  # the old one stopped
    old, new = FakeH264Encoder.instances
    assert not old._running and new._running
    assert h.frames[-1][1].source_packets is ring  # the clip recorder keeps its ring
    assert ring.generation == generation + 1 and ring.ready
    _, _, packets = ring.after(0)
    assert packets[0].key  # the new generation starts at the new encoder's keyframe
    assert h.module.metrics()["clip_source"] == "hw_encoder"


def picamera2_modules(monkeypatch: pytest.MonkeyPatch, platform: str | None) -> None:
    """picamera2's and libcamera's module layout, holding the fakes; ``platform``: what
    picamera2.platform.get_platform() says (VC4: Pi 4 and earlier, PISP: Pi 5), None: a
    picamera2 from before the Pi 5 (no picamera2.platform)."""
    import enum
    import types

    def module(name: str, **attrs: Any) -> types.ModuleType:
        m = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(m, k, v)
        monkeypatch.setitem(sys.modules, name, m)
        return m

    module("libcamera", Transform=FakeTransform, controls=FAKE_CONTROLS)
    module("picamera2", Picamera2=FakePicamera2)
    module("picamera2.encoders")
    module("picamera2.encoders.h264_encoder", H264Encoder=FakeH264Encoder)
    module("picamera2.outputs", Output=FakeOutput)
    if platform is None:
        monkeypatch.setitem(sys.modules, "picamera2.platform", None)  # import fails
    else:
        kind = enum.Enum("Platform", ["VC4", "PISP"])
        module("picamera2.platform", Platform=kind, get_platform=lambda: kind[platform])


@pytest.mark.parametrize("platform", ["VC4", None])
def test_a_videocore_board_with_the_codec_device_gets_the_v4l2_encoder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, platform: str | None
) -> None:
    device = tmp_path / "video11"
    device.touch()
    monkeypatch.setattr(csi, "ENCODER_DEVICE", str(device))
    picamera2_modules(monkeypatch, platform)
    backend = csi.load_backend()
    assert backend.H264Encoder is FakeH264Encoder  # picamera2.encoders.h264_encoder's, by name
    assert backend.Output is FakeOutput

    device.unlink()
    backend = csi.load_backend()
    assert backend.H264Encoder is None
    assert "video11 missing" in backend.no_encoder


def test_a_pi_5_gets_no_encoder_even_with_a_video11(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    device = tmp_path / "video11"
    device.touch()
    monkeypatch.setattr(csi, "ENCODER_DEVICE", str(device))
    picamera2_modules(monkeypatch, "PISP")
    backend = csi.load_backend()
    assert backend.H264Encoder is None  # picamera2's H264Encoder is libx264 on a Pi 5
    assert "Pi 5" in backend.no_encoder
    assert backend.Picamera2 is FakePicamera2
