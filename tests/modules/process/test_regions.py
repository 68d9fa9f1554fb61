"""Where the detector looks: region planning and merging the regions' detections."""

from __future__ import annotations

from spyoncino.modules.process._decoders import RawDetection as D
from spyoncino.modules.process._regions import (
    group_regions,
    merge_detections,
    motion_region,
    plan_regions,
    scale_of,
)
from spyoncino.modules.process.detector import Config
from spyoncino.schemas.frames import Box

W, H = 1280, 720
MODEL = (300, 300)


def box(x: int, y: int, w: int = 30, h: int = 70) -> Box:
    return Box(x1=x, y1=y, x2=x + w, y2=y + h)


def inside(b: Box, r: tuple[int, int, int, int]) -> bool:
    return r[0] <= b.x1 and r[1] <= b.y1 and b.x2 <= r[2] and b.y2 <= r[3]


def test_far_apart_motion_gets_a_crop_each_near_motion_shares_one() -> None:
    left, right, beside = box(100, 300), box(1100, 300), box(150, 320)
    regions = group_regions([left, right, beside], W, H, MODEL)
    assert len(regions) == 2
    assert all(scale_of(r, MODEL) <= 1.5 for r in regions)
    assert any(inside(left, r) and inside(beside, r) for r in regions)
    assert any(inside(right, r) for r in regions)


def test_plan_adds_crops_only_when_the_main_region_is_shrunk() -> None:
    left, right = box(100, 300), box(1100, 300)
    # one person: the main region is already at native resolution, one inference
    assert plan_regions([left], W, H, MODEL, max_regions=3) == [motion_region([left], W, H, MODEL)]
    # motion at both ends: the main region is most of the frame; each end gets its own crop
    plan = plan_regions([left, right], W, H, MODEL, max_regions=3)
    assert plan[0] == (0, 0, W, H)
    assert len(plan) == 3
    assert inside(left, plan[1]) or inside(left, plan[2])
    assert inside(right, plan[1]) or inside(right, plan[2])
    # the default: one region whatever happens
    assert plan_regions([left, right], W, H, MODEL) == [(0, 0, W, H)]


def test_motion_the_main_region_explained_needs_no_crop() -> None:
    left, right = box(100, 300), box(1100, 300)
    seen_left = Box(x1=98, y1=295, x2=133, y2=372)  # the detector found the left person
    plan = plan_regions([left, right], W, H, MODEL, max_regions=3, explained=[seen_left])
    assert len(plan) == 2
    assert inside(right, plan[1])
    assert not inside(left, plan[1])


def test_more_groups_than_crops_take_turns() -> None:
    people = [box(50, 50), box(1150, 50), box(50, 600), box(1150, 600)]
    seen: set[tuple[int, int, int, int]] = set()
    for turn in range(4):
        plan = plan_regions(people, W, H, MODEL, max_regions=2, turn=turn)
        assert len(plan) == 2
        seen.add(plan[1])
    assert len(seen) == 4  # every corner had its crop within four inferences


def test_small_motion_may_be_enlarged() -> None:
    far = box(600, 100, 12, 30)
    r = motion_region([far], W, H, MODEL, zoom=2.0)
    assert (r[2] - r[0], r[3] - r[1]) == (150, 150)
    assert inside(far, r)
    assert motion_region([far], W, H, MODEL)[2:] != r[2:]  # default: model size, not enlarged


def test_merge_keeps_one_box_per_object() -> None:
    whole = D("person", 0.9, 100, 100, 140, 200)
    again = D("person", 0.7, 102, 101, 141, 199)  # the same person from the other crop
    cut = D("person", 0.6, 100, 100, 140, 150)  # cut in half by a crop's edge
    other = D("person", 0.8, 300, 100, 340, 200)
    dog = D("dog", 0.6, 100, 150, 140, 200)  # another label under the person's legs
    kept = merge_detections([again, cut, whole, other, dog], iou=0.45)
    assert kept == [whole, other, dog]


def test_two_people_at_one_edge_share_a_crop_rather_than_the_whole_frame() -> None:
    """Two people stepping in at the right edge of a 768x576 view, one far up the path and one
    near: with the default settings they share a crop that shrinks them 1.8x, not the whole
    frame squeezed 2.6x into the model, where someone half in view is too small to find."""
    cfg = Config()
    far, close = Box(x1=708, y1=220, x2=752, y2=332), Box(x1=676, y1=434, x2=718, y2=576)
    region = plan_regions(
        [far, close],
        768,
        576,
        MODEL,
        margin=cfg.crop_margin,
        full_share=cfg.full_frame_share,
        zoom=cfg.zoom_for("ssd"),  # the people-only SSDLite: enlarged up to 2x
    )[0]
    assert region != (0, 0, 768, 576)
    assert inside(far, region) and inside(close, region)
    assert scale_of(region, MODEL) < 0.75 * scale_of((0, 0, 768, 576), MODEL)
