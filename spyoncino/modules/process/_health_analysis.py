"""The picture tests of the camera-health module: pure numpy/OpenCV, no bus, so the bench and
the tests run them on their own. See ``camera_health`` for what each condition means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from spyoncino.schemas.health import HealthCondition, HealthPhase

if TYPE_CHECKING:
    from spyoncino.modules.process.camera_health import Config

Grey = npt.NDArray[np.uint8]

#: the structure thumbnail: 8 x 6 cells of 8 x 8 pixels
THUMB_W, THUMB_H, CELL = 64, 48, 8
#: the thumbnail's spread once normalised (a typical daylight scene's)
NORM_SPREAD = 40.0
#: a cell whose grey levels spread less than this (on the thumbnail) has no structure to vote
TEXTURE_STD = 3.0
#: a textured cell correlating less than this with its reference has changed
CELL_NCC = 0.5
#: good this long before a condition not yet raised starts counting from zero again
GRACE_S = 2.5
#: samples that must match a new reference before it can judge a view changed
CONFIRM_SAMPLES = 10
#: grey-level step that counts as a changed pixel in the frozen test
FROZEN_STEP = 2


@dataclass(frozen=True, slots=True)
class Sample:
    """What one analysed frame showed."""

    black: bool
    frozen: bool | None  # None: nothing to compare with yet
    scene_share: float | None  # share of textured cells unlike the reference; None: no vote
    mean: float
    spread: float
    p99: float
    changed: float


def _cells(thumb: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    """(each cell's pixels, zero-mean and unit-norm, one row per cell; each cell's spread).

    The spread is measured after scaling the whole thumbnail to a spread of NORM_SPREAD, so a
    picture that got darker or flatter everywhere (dusk, a light switched off) keeps its
    textured cells textured: only a cell that lost its structure *relative to the rest* has
    gone flat."""
    thumb = (thumb - thumb.mean()) * (NORM_SPREAD / max(float(thumb.std()), 1.0))
    rows, cols = THUMB_H // CELL, THUMB_W // CELL
    c = thumb.reshape(rows, CELL, cols, CELL).transpose(0, 2, 1, 3).reshape(rows * cols, -1)
    c = c - c.mean(axis=1, keepdims=True)
    std = c.std(axis=1)
    norm = np.linalg.norm(c, axis=1, keepdims=True)
    return (c / np.maximum(norm, 1e-6)).astype(np.float32), std


class Analyser:
    """The picture tests of one camera. Pure numpy/OpenCV, no bus: benchmarked on its own."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.prev: Grey | None = None
        self.ref: tuple[npt.NDArray[np.float32], npt.NDArray[Any]] | None = None
        self.ref_at: float = 0.0
        #: samples that matched the reference since it was taken; until CONFIRM_SAMPLES did,
        #: a picture unlike it replaces it (it was taken while a truck stood in front, say)
        self.ref_matches = 0
        self.samples = 0

    def reset(self) -> None:
        """After an outage: the next picture is compared with nothing, not a stale one."""
        self.prev = None

    def thumb(self, luma: Grey) -> npt.NDArray[np.float32]:
        small = cv2.resize(luma, (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA)
        return np.asarray(small, np.float32)

    def analyse(self, luma: Grey, t: float) -> Sample:
        self.samples += 1
        cfg = self.cfg
        thumb = self.thumb(luma)
        mean = float(thumb.mean())
        spread = float(thumb.std())
        p99 = float(np.percentile(thumb, 99))
        black = spread < cfg.black_std or p99 < cfg.black_level
        frozen: bool | None = None
        changed = 1.0
        prev = self.prev
        if prev is not None and prev.shape == luma.shape:
            diff = cv2.absdiff(luma, prev)
            _, moved = cv2.threshold(diff, FROZEN_STEP, 255, cv2.THRESH_BINARY)
            changed = cv2.countNonZero(moved) / moved.size
            frozen = changed < cfg.frozen_changed
        self.prev = luma
        share: float | None = None
        if not black:
            cells, std = _cells(thumb)
            if self.ref is None:
                self.ref, self.ref_at, self.ref_matches = (cells, std), t, 0
            else:
                share = self._unlike(cells, std)
                if share is not None and self.ref_matches < CONFIRM_SAMPLES:
                    if share >= cfg.scene_changed:
                        self.ref, self.ref_at, self.ref_matches = (cells, std), t, 0
                        share = None  # an unconfirmed reference judges nothing
                    else:
                        self.ref_matches += 1
        return Sample(black, frozen, share, mean, spread, p99, changed)

    def _unlike(self, cells: npt.NDArray[np.float32], std: npt.NDArray[Any]) -> float | None:
        assert self.ref is not None
        ref_cells, ref_std = self.ref
        voters = ref_std >= TEXTURE_STD
        n = int(voters.sum())
        if n < 4:
            return None  # a reference without structure (fog, night without light) cannot judge
        ncc = (cells * ref_cells).sum(axis=1)
        # a textured cell gone flat (turned to a wall) has changed as well
        unlike = voters & ((ncc < CELL_NCC) | (std < TEXTURE_STD / 2))
        return float(unlike.sum()) / n

    def renew_reference(self, luma: Grey, t: float) -> None:
        cells, std = _cells(self.thumb(luma))
        # taken from a view that matched, or that lasted scene_accept_s: confirmed already
        self.ref, self.ref_at, self.ref_matches = (cells, std), t, CONFIRM_SAMPLES


@dataclass
class Condition:
    """One condition of one camera: raised after ``after`` s bad, cleared after ``recover`` s
    good. ``update`` returns the phase to announce, if any."""

    name: HealthCondition
    active: bool = False
    bad_since: float | None = None
    bad_since_wall: float = 0.0
    good_since: float | None = None
    raised_at: float = 0.0
    notice_id: str = ""

    def update(
        self, bad: bool, t: float, wall: float, after: float, recover: float
    ) -> HealthPhase | None:
        if bad:
            self.good_since = None
            if self.bad_since is None:
                self.bad_since, self.bad_since_wall = t, wall
            if not self.active and t - self.bad_since >= after:
                self.active, self.raised_at = True, t
                return "alert"
            return None
        if not self.active:
            # a lone good sample (a key frame refreshing a frozen picture) does not restart
            # the count: only GRACE_S of good ones do
            if self.good_since is None:
                self.good_since = t
            if t - self.good_since >= GRACE_S:
                self.bad_since, self.good_since = None, None
            return None
        if self.good_since is None:
            self.good_since = t
        if t - self.good_since >= recover:
            return self.clear()
        return None

    def clear(self) -> HealthPhase | None:
        was = self.active
        self.active, self.bad_since, self.good_since = False, None, None
        return "recovered" if was else None
