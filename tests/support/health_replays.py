"""Replays for the camera-health tests and benchmark, made from the packaged sample clip.

Each replay is an H.264 ``.mp4`` (so a frozen picture goes through a real encoder, key frames
and all) written once into the checkout's ignored ``.cache/health_replays/`` and reused. The
base footage is the sample clip played forwards then backwards (people keep walking, no cut),
at ``FPS`` frames a second and ``SIZE``.

Faults (each must raise one alert and one recovery):

* ``black``    20 s normal, 40 s covered lens (near black with sensor noise), 30 s normal;
* ``frozen``   20 s normal, 75 s one frame repeated, 25 s normal;
* ``shifted``  30 s normal, then the view shifted sideways by a third of the frame.

Nuisances (must raise nothing): ``light_switch`` (the room light goes off and on: half the
brightness for 80 s), ``day_night`` (the camera switches to infrared night mode for 80 s:
grey, flatter, darker, noisier), ``dusk`` (a slow fade to a quarter of the light and back),
``night`` (20 s to an eighth of the light with the sensor's noise tripled, then 90 s of it),
``clouds`` (brightness wandering by a third and large soft shadows drifting over the scene).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "spyoncino" / "data" / "sample.mp4"
CACHE = REPO / ".cache" / "health_replays"
FPS = 5
SIZE = (384, 288)
VERSION = 1

NUISANCES = ("light_switch", "day_night", "dusk", "night", "clouds")

Img = np.ndarray


def _base() -> list[Img]:
    frames: list[Img] = []
    with av.open(str(SAMPLE)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % (10 // FPS) == 0:
                img = f.to_ndarray(format="bgr24")
                frames.append(cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA))
    return frames + frames[::-1]


def _footage(base: list[Img], seconds: float, start: int = 0) -> Iterator[Img]:
    n = round(seconds * FPS)
    for i in range(n):
        yield base[(start + i) % len(base)]


def _noisy(img: Img, rng: np.random.Generator, sigma: float = 2.0) -> Img:
    return np.clip(img + rng.normal(0.0, sigma, img.shape), 0, 255).astype(np.uint8)


def _scaled(img: Img, gain: float, offset: float = 0.0) -> Img:
    return np.clip(img.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def _black(base: list[Img], rng: np.random.Generator) -> Iterator[Img]:
    yield from _footage(base, 20)
    covered = np.full((SIZE[1], SIZE[0], 3), (6, 7, 9), np.uint8)
    for _ in range(40 * FPS):
        yield _noisy(covered, rng, 2.5)
    yield from _footage(base, 30, start=60 * FPS)


def _frozen(base: list[Img], rng: np.random.Generator) -> Iterator[Img]:
    yield from _footage(base, 20)
    still = base[20 * FPS % len(base)]
    for _ in range(75 * FPS):
        yield still
    yield from _footage(base, 25, start=95 * FPS)


def _shifted(base: list[Img], rng: np.random.Generator) -> Iterator[Img]:
    yield from _footage(base, 30)
    for img in _footage(base, 110, start=30 * FPS):
        yield np.roll(img, SIZE[0] // 3, axis=1)


def _light_switch(base: list[Img], rng: np.random.Generator) -> Iterator[Img]:
    yield from _footage(base, 20)
    for img in _footage(base, 80, start=20 * FPS):
        yield _noisy(_scaled(img, 0.5), rng, 2.0)
    yield from _footage(base, 20, start=100 * FPS)


def _day_night(base: list[Img], rng: np.random.Generator) -> Iterator[Img]:
    yield from _footage(base, 20)
    for img in _footage(base, 80, start=20 * FPS):
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
        ir = (np.power(grey, 0.7) * 150 + 20).astype(np.uint8)  # flatter, darker, brighter shadows
        yield _noisy(cv2.cvtColor(ir, cv2.COLOR_GRAY2BGR), rng, 4.0)
    yield from _footage(base, 20, start=100 * FPS)


def _dusk(base: list[Img], rng: np.random.Generator) -> Iterator[Img]:
    n = 120 * FPS
    for i, img in enumerate(_footage(base, 120)):
        gain = 1.0 - 0.75 * np.sin(np.pi * i / n)
        yield _noisy(_scaled(img, gain), rng, 2.0)


def _night(base: list[Img], rng: np.random.Generator) -> Iterator[Img]:
    for i, img in enumerate(_footage(base, 110)):
        t = i / FPS
        gain = 1.0 - 0.88 * min(1.0, t / 20.0)  # 20 s to an eighth of the light, then night
        yield _noisy(_scaled(img, gain), rng, 2.0 + 4.0 * min(1.0, t / 20.0))  # sensor gain


def _clouds(base: list[Img], rng: np.random.Generator) -> Iterator[Img]:
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i, img in enumerate(_footage(base, 120)):
        t = i / FPS
        gain = 1.0 + 0.33 * np.sin(2 * np.pi * t / 40.0)
        cx, cy = (t * 6.0) % (w + 200) - 100, h * 0.4
        shade = 0.35 * np.exp(-(((xx - cx) / 110.0) ** 2 + ((yy - cy) / 80.0) ** 2))
        lit = img.astype(np.float32) * (gain * (1.0 - shade))[..., None]
        yield _noisy(np.clip(lit, 0, 255).astype(np.uint8), rng, 2.0)


MAKERS: dict[str, Callable[[list[Img], np.random.Generator], Iterator[Img]]] = {
    "black": _black,
    "frozen": _frozen,
    "shifted": _shifted,
    "light_switch": _light_switch,
    "day_night": _day_night,
    "dusk": _dusk,
    "night": _night,
    "clouds": _clouds,
}


def replay(name: str) -> Path:
    """The replay's file, made on first use."""
    out = CACHE / f"{name}-v{VERSION}-{FPS}fps.mp4"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    # one temporary file per process: parallel test workers may make the same replay at once
    tmp = out.with_suffix(f".{os.getpid()}.tmp.mp4")
    rng = np.random.default_rng(sum(map(ord, name)))
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height = SIZE
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23", "g": str(10 * FPS)}
        for img in MAKERS[name](_base(), rng):
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    tmp.replace(out)
    return out


def lumas(path: Path, width: int = 320) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds into the replay, the small luma plane an input would publish) per frame."""
    from spyoncino.helpers.camera import shrink_luma

    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            y = f.to_ndarray(format="gray")
            yield i / FPS, shrink_luma(y, width)
