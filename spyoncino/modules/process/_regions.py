"""Where the detector looks: the frame regions around the motion, and merging their results.

A detection model sees a fixed input (300x300 for the bundled SSD). Motion is inferred in one
region around all of it, at least the model's size, in the model's aspect ratio
(:func:`motion_region`). When motion is spread over the frame that region is most of the
frame, shrunk 2-3x: a person 60 px tall becomes about 25 px and one far away (40 px) about
15 px, below what a small SSD finds. :func:`plan_regions` then adds crops for the motion the
shrunk region has not explained:

* motion boxes touching an object the detector found in the main region at the previous
  inference are explained; the others are grouped greedily (the pair whose merged region is
  smallest first) while a group's region needs at most ``max_scale`` times shrinking;
* small groups may be enlarged up to ``zoom`` times (a far-away person gains pixels);
* at most ``max_regions - 1`` extra crops per frame, taken in turn when there are more groups.

So a single person costs one inference, as does a crowd the main region already sees; extra
inferences go to motion nothing has explained yet (someone walking in far away, at the edge).
People cut by a region's edge show up once per region; :func:`merge_detections` keeps the
best box of each object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from spyoncino.schemas.frames import Box

Region = tuple[int, int, int, int]


class Boxed(Protocol):
    """A detection in frame pixels (``RawDetection`` is one)."""

    @property
    def label(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def x1(self) -> float: ...
    @property
    def y1(self) -> float: ...
    @property
    def x2(self) -> float: ...
    @property
    def y2(self) -> float: ...


D = TypeVar("D", bound=Boxed)


def motion_region(
    boxes: Sequence[Box],
    frame_w: int,
    frame_h: int,
    model_hw: tuple[int, int],
    *,
    margin: float = 0.25,
    full_share: float = 0.6,
    zoom: float = 1.0,
) -> Region:
    """The frame region to infer: motion boxes merged, expanded, >= model size, in the frame.

    The region takes the model's aspect ratio so that stretching models are not distorted and
    letterboxing ones waste no input. A region covering most of the frame becomes the frame.
    """
    full = (0, 0, frame_w, frame_h)
    if not boxes:
        return full
    x1 = min(b.x1 for b in boxes)
    y1 = min(b.y1 for b in boxes)
    x2 = max(b.x2 for b in boxes)
    y2 = max(b.y2 for b in boxes)
    bw, bh = max(1, x2 - x1), max(1, y2 - y1)
    w = bw * (1 + 2 * margin)
    h = bh * (1 + 2 * margin)
    mh, mw = model_hw
    w, h = max(w, mw / zoom), max(h, mh / zoom)
    aspect = mw / mh
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    w, h = min(w, frame_w), min(h, frame_h)
    if w * h >= full_share * frame_w * frame_h:
        return full
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = round(min(max(cx - w / 2, 0), frame_w - w))
    top = round(min(max(cy - h / 2, 0), frame_h - h))
    return (left, top, min(frame_w, left + round(w)), min(frame_h, top + round(h)))


def box_of(d: Boxed) -> Box:
    """A detection's box in whole pixels, at least one pixel wide and high."""
    return Box(
        x1=round(d.x1),
        y1=round(d.y1),
        x2=max(round(d.x2), round(d.x1) + 1),
        y2=max(round(d.y2), round(d.y1) + 1),
    )


def _area(r: Region) -> int:
    return (r[2] - r[0]) * (r[3] - r[1])


def scale_of(region: Region, model_hw: tuple[int, int]) -> float:
    """How many times the model input shrinks this region (1.0: native resolution)."""
    mh, mw = model_hw
    return max((region[2] - region[0]) / mw, (region[3] - region[1]) / mh, 1.0)


def near(box: Box, other: Box, grow: float = 0.25) -> bool:
    """``other`` overlaps ``box`` grown by ``grow`` of its size on each side."""
    dx, dy = box.width * grow, box.height * grow
    return not (
        other.x2 <= box.x1 - dx
        or other.x1 >= box.x2 + dx
        or other.y2 <= box.y1 - dy
        or other.y1 >= box.y2 + dy
    )


def within(box: Box, other: Box, grow: float = 0.25) -> bool:
    """``box`` lies inside ``other`` grown by ``grow`` of its size on each side."""
    dx, dy = other.width * grow, other.height * grow
    return (
        box.x1 >= other.x1 - dx
        and box.y1 >= other.y1 - dy
        and box.x2 <= other.x2 + dx
        and box.y2 <= other.y2 + dy
    )


def group_regions(
    boxes: Sequence[Box],
    frame_w: int,
    frame_h: int,
    model_hw: tuple[int, int],
    *,
    margin: float = 0.25,
    max_scale: float = 1.5,
    zoom: float = 1.0,
) -> list[Region]:
    """One region per group of nearby boxes, merging while a region needs <= ``max_scale``."""

    def region(group: Sequence[Box]) -> Region:
        return motion_region(
            group, frame_w, frame_h, model_hw, margin=margin, full_share=1.01, zoom=zoom
        )

    groups = [[b] for b in boxes]
    regions = [region(g) for g in groups]
    while len(groups) > 1:
        best: tuple[int, int, int, Region] | None = None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                r = region(groups[i] + groups[j])
                if best is None or _area(r) < best[0]:
                    best = (_area(r), i, j, r)
        assert best is not None
        _, i, j, merged = best
        if scale_of(merged, model_hw) > max_scale:
            break
        groups[i] = groups[i] + groups[j]
        regions[i] = merged
        del groups[j], regions[j]
    return sorted(regions)


def plan_regions(
    boxes: Sequence[Box],
    frame_w: int,
    frame_h: int,
    model_hw: tuple[int, int],
    *,
    margin: float = 0.25,
    full_share: float = 0.6,
    max_regions: int = 1,
    max_scale: float = 1.5,
    zoom: float = 1.0,
    explained: Sequence[Box] = (),
    turn: int = 0,
) -> list[Region]:
    """The regions to infer for these motion boxes: the main one first (see the module
    docstring). ``explained``: what the main region found last time; ``turn`` rotates the
    extra crops when there are more groups than ``max_regions - 1``."""
    main = motion_region(
        boxes, frame_w, frame_h, model_hw, margin=margin, full_share=full_share, zoom=zoom
    )
    if max_regions <= 1 or not boxes or scale_of(main, model_hw) <= max_scale:
        return [main]
    new = [b for b in boxes if not any(near(e, b) for e in explained)]
    if not new:
        return [main]
    extra = group_regions(
        new, frame_w, frame_h, model_hw, margin=margin, max_scale=max_scale, zoom=zoom
    )
    room = max_regions - 1
    if len(extra) > room:
        start = turn % len(extra)
        extra = (extra[start:] + extra[:start])[:room]
    return [main, *extra]


def _overlap(a: Boxed, b: Boxed) -> tuple[float, float]:
    """(IoU, intersection over the smaller box) of two objects with x1, y1, x2, y2."""
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    area_a = max(0.0, a.x2 - a.x1) * max(0.0, a.y2 - a.y1)
    area_b = max(0.0, b.x2 - b.x1) * max(0.0, b.y2 - b.y1)
    union = area_a + area_b - inter
    return (inter / union if union > 0 else 0.0, inter / max(1e-9, min(area_a, area_b)))


def merge_detections(dets: Sequence[D], iou: float, contained: float = 0.8) -> list[D]:
    """One box per object from overlapping regions: the best score wins over a same-label box
    that overlaps it by ``iou`` or lies mostly (``contained``) inside it (a person cut in two
    by a region's edge)."""
    kept: list[D] = []
    for d in sorted(dets, key=lambda x: -x.score):
        same = (_overlap(d, k) for k in kept if k.label == d.label)
        if not any(o_iou > iou or o_in > contained for o_iou, o_in in same):
            kept.append(d)
    return kept
