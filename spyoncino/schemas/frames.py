"""Frames: the hot path. Slotted frozen dataclasses carrying numpy arrays, never validated."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

Image = npt.NDArray[np.uint8]
#: ``(region, size, rgb, interpolation, dst) -> Image``: the colour pixels of ``region``
#: (x1, y1, x2, y2, even) resized to ``size`` (width, height, even), RGB or BGR, written
#: into ``dst`` when it is given
Resizer = Callable[[tuple[int, int, int, int], tuple[int, int], bool, int, Any], Image]

# striped locks: a lock per frame would cost an allocation on the hot path
_DECODE_LOCKS = tuple(threading.Lock() for _ in range(16))


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One camera frame.

    ``luma`` is a small greyscale plane (a few hundred pixels wide) that motion detection
    reads on every frame. The full-size BGR ``image`` is produced lazily through ``decode``
    where the input can avoid the colour conversion (RTSP, CSI), so frames nobody looks at
    in colour never pay for it.
    """

    camera_id: str
    seq: int
    mono_ts: float
    wall_ts: float
    width: int
    height: int
    luma: Image
    _image: Image | None = None
    _decode: Callable[[], Image] | None = field(default=None, repr=False)
    #: the camera's compressed packets of the last seconds (``helpers.packets.PacketRing``)
    #: when the source is H.264, else None: the clip recorder remuxes them instead of encoding
    source_packets: Any = field(default=None, repr=False)
    #: crops of the colour image at another size straight from the decoder's planes
    _resize: Resizer | None = field(default=None, repr=False)

    @property
    def image(self) -> Image:
        img = self._image
        if img is None:
            if self._decode is None:
                raise ValueError(f"frame {self.camera_id}#{self.seq} has no colour image")
            # The detector, snapshot and GIF writers may ask from several worker threads at
            # once: decode exactly once (and never run one decoder on two threads).
            with _DECODE_LOCKS[id(self) % len(_DECODE_LOCKS)]:
                img = self._image
                if img is None:
                    img = self._decode()
                    object.__setattr__(self, "_image", img)
        return img

    @property
    def resizer(self) -> Resizer | None:
        """A crop of the colour image at the size a consumer wants (the detector's input)
        converted from the decoder's YUV planes at that size: the 416x416 model input of a
        768x576 frame then takes 0.55-0.61 ms of CPU instead of 1.2-1.8 ms for converting the
        frame and resizing it, and nothing full-size is allocated.
        None where the input cannot, where privacy masks apply, and once ``image`` exists."""
        return self._resize if self._image is None else None

    @property
    def colour_size(self) -> tuple[int, int]:
        """(height, width) of the colour pixels a crop is cut from: the frame's own size while
        crops come from the decoder's planes (``resizer``), else its image's (an MJPEG
        camera's picture may differ from the size its driver reported)."""
        if self.resizer is not None:
            return self.height, self.width
        h, w = self.image.shape[:2]
        return h, w

    @property
    def has_image(self) -> bool:
        return self._image is not None or self._decode is not None

    @property
    def luma_scale(self) -> float:
        """Full-frame pixels per luma pixel."""
        return float(self.width) / int(self.luma.shape[1])


class Box(BaseModel):
    """An axis-aligned box in full-frame pixels, ``x2``/``y2`` exclusive."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    x1: int = Field(ge=0)
    y1: int = Field(ge=0)
    x2: int = Field(ge=0)
    y2: int = Field(ge=0)

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    def iou(self, other: Box) -> float:
        ix = max(0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x1, self.y1, self.x2, self.y2)
