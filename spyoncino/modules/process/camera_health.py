"""Camera health: tell the owner when a camera stops being a camera.

Four conditions per camera, each raised once when it has lasted its threshold and cleared once
when it is over (``health.<camera>.alert`` / ``health.<camera>.recovered``, which every channel
sends):

* ``stream_lost``  no frame for ``lost_after_s`` (default 30 s) while the input is not
  ``ended`` (a file that finished is not lost). Measured on the module's clock, since no frame
  arrives to carry one;
* ``black``        the picture is black or uniform (lens covered, infrared failed, pointed at
  a wall): almost no spread of grey levels, or nothing brighter than deep shadow;
* ``frozen``       consecutive samples are identical or nearly (fewer than ``frozen_changed``
  of the pixels differ by more than 2 grey levels) while frames keep coming;
* ``scene_change`` the camera was moved or turned: over most of the picture the structure
  differs from a slowly kept reference. The motion stage re-learns its background at once
  when most of the frame changes (that is how it ignores a light switch), so it would absorb
  a camera move in one frame; this reference is the module's own.

Cheap by construction: at most ``sample_fps`` frames a second (default 1) are analysed, on
the small luma plane the input already made (no colour decode), in the worker pool. Between
samples of a live camera the handler rests, so the frames in between only swap the one in
its latest-wins slot (about 1 µs each); a replay's frames are each looked at (a clock read
and a comparison) so that its timing stays the video's. The structure test works on a 64x48
thumbnail cut into 8x8-pixel cells and compares each cell with its reference by normalised
correlation, which does not care about brightness or contrast (a light switch, the day/night
switch, a cloud): only where things *are* counts. Cells without texture (sky, a wall) do not
vote. Frame conditions are timed on the frames' own clock (``mono_ts``), so a replay at any
speed gives the same result as live.

A moved camera that stays moved becomes the new reference after ``scene_accept_s`` (the
owner turned it on purpose, or must be told only once): the condition clears with the reason
"new view accepted".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, CameraOptions, ModuleConfig
from spyoncino.modules.process._health_analysis import Analyser, Condition, Sample
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Frame
from spyoncino.schemas.health import (
    CONDITIONS,
    CameraHealthNotice,
    HealthCondition,
    HealthPhase,
)
from spyoncino.schemas.status import HealthReport

__all__ = ["Analyser", "CameraHealth", "Condition", "Config", "HealthCamera", "Sample"]


class Config(ModuleConfig):
    type: Literal["health"] = "health"
    sample_fps: float = Field(
        default=1.0, gt=0.0, le=5.0, description="Frames analysed per second and camera."
    )
    lost_after_s: float = Field(
        default=30.0, ge=1.0, le=86400.0, description="No frame this long: stream lost."
    )
    black_after_s: float = Field(
        default=30.0, ge=1.0, le=86400.0, description="Black or uniform this long: alert."
    )
    frozen_after_s: float = Field(
        default=60.0,
        ge=1.0,
        le=86400.0,
        description="Identical frames this long: alert (longer than the camera's key-frame "
        "interval, which refreshes a still picture).",
    )
    scene_after_s: float = Field(
        default=60.0, ge=1.0, le=86400.0, description="View unlike its reference this long."
    )
    scene_accept_s: float = Field(
        default=600.0,
        ge=1.0,
        le=604800.0,
        description="A changed view that stays this long becomes the reference (the alert "
        "clears as 'new view accepted').",
    )
    recover_after_s: float = Field(
        default=5.0, ge=0.0, le=3600.0, description="Good this long before 'recovered'."
    )
    black_std: float = Field(
        default=4.0, ge=0.0, le=64.0, description="Grey-level spread under which it is uniform."
    )
    black_level: int = Field(
        default=20,
        ge=0,
        le=255,
        description="Brightest grey (99th percentile) under which the picture is black.",
    )
    frozen_changed: float = Field(
        default=0.002,
        ge=0.0,
        le=0.5,
        description="Share of pixels changed between samples under which they are identical.",
    )
    scene_changed: float = Field(
        default=0.6,
        gt=0.0,
        le=1.0,
        description="Share of textured cells unlike the reference that means a moved camera.",
    )
    reference_refresh_s: float = Field(
        default=300.0,
        ge=1.0,
        le=86400.0,
        description="While the view matches, the reference is renewed this often (follows "
        "slow changes: a parked car, the season).",
    )
    conditions: tuple[HealthCondition, ...] = Field(
        default=CONDITIONS, description="Conditions that raise alerts."
    )


class HealthCamera(CameraOptions):
    enabled: bool = Field(default=True, description="Watch this camera's health.")
    lost_after_s: float | None = Field(
        default=None, ge=1.0, le=86400.0, description="Overrides health.lost_after_s."
    )
    black_after_s: float | None = Field(
        default=None, ge=1.0, le=86400.0, description="Overrides health.black_after_s."
    )
    frozen_after_s: float | None = Field(
        default=None, ge=1.0, le=86400.0, description="Overrides health.frozen_after_s."
    )
    scene_after_s: float | None = Field(
        default=None, ge=1.0, le=86400.0, description="Overrides health.scene_after_s."
    )
    scene_accept_s: float | None = Field(
        default=None, ge=1.0, le=604800.0, description="Overrides health.scene_accept_s."
    )
    conditions: tuple[HealthCondition, ...] | None = Field(
        default=None, description="Overrides health.conditions (e.g. no 'frozen' on a PTZ)."
    )


@dataclass(frozen=True, slots=True)
class Limits:
    """One camera's thresholds: the camera's overrides over the module's."""

    lost_after_s: float
    black_after_s: float
    frozen_after_s: float
    scene_after_s: float
    scene_accept_s: float
    recover_after_s: float
    conditions: frozenset[str]

    @classmethod
    def of(cls, cfg: Config, cam: HealthCamera) -> Limits:
        def pick(name: str) -> float:
            own = getattr(cam, name)
            return float(own if own is not None else getattr(cfg, name))

        return cls(
            lost_after_s=pick("lost_after_s"),
            black_after_s=pick("black_after_s"),
            frozen_after_s=pick("frozen_after_s"),
            scene_after_s=pick("scene_after_s"),
            scene_accept_s=pick("scene_accept_s"),
            recover_after_s=cfg.recover_after_s,
            conditions=frozenset(cam.conditions if cam.conditions is not None else cfg.conditions),
        )

    def after(self, condition: str) -> float:
        return {
            "stream_lost": self.lost_after_s,
            "black": self.black_after_s,
            "frozen": self.frozen_after_s,
            "scene_change": self.scene_after_s,
        }[condition]


@dataclass
class Watch:
    """Everything the module keeps about one camera."""

    camera_id: str
    name: str
    limits: Limits
    analyser: Analyser
    started: float
    last_frame: float | None = None
    #: the last frame's own timestamp
    last_mono: float | None = None
    next_sample: float = float("-inf")
    input_state: str | None = None
    #: the last analysed frame arrived just now (a live camera, not a replay)
    fresh: bool = False
    conditions: dict[str, Condition] = field(
        default_factory=lambda: {c: Condition(c) for c in CONDITIONS}
    )


#: wake this long before the next sample is due, so the frame due is the one examined
REST_MARGIN_S = 0.05

_WHAT = {
    "stream_lost": "no picture (stream lost)",
    "black": "the picture is black or uniform (lens covered, or night vision failed?)",
    "frozen": "the picture is frozen (identical frames)",
    "scene_change": "the view changed (camera moved or turned?)",
}
_OVER = {
    "stream_lost": "the picture is back",
    "black": "the picture is normal again",
    "frozen": "the picture moves again",
    "scene_change": "the view is back to normal",
}


def _span(seconds: float) -> str:
    s = round(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


class CameraHealth(BaseModule):
    category: ClassVar[Any] = "process"
    Config: ClassVar[type[ModuleConfig]] = Config
    Camera: ClassVar[type[CameraOptions] | None] = HealthCamera

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        #: monotonic clock for the stream-lost timer (tests inject a fast one)
        self.clock: Callable[[], float] = ctx.extras.get("clock", time.monotonic)
        self.tick_s: float = float(ctx.extras.get("health_tick_s", 1.0))
        #: rounds of the stream watch done (a test that moves the clock waits for these)
        self.stream_rounds = 0
        self.watches: dict[str, Watch] = {}
        self.alerts = 0
        self.recoveries = 0
        self.busy_s = 0.0
        self._cams: dict[str, tuple[str, Limits]] = {}

    async def configure(self, app: AppConfig) -> None:
        cfg = app.section(self.name or "health", Config)
        names = app.camera_names()
        cams: dict[str, tuple[str, Limits]] = {}
        for cid, cam in app.cameras.items():
            opts = cam.options(self.name or "health", HealthCamera)
            if cam.enabled and opts.enabled:
                cams[cid] = (names[cid], Limits.of(cfg, opts))
        self.cfg, self._cams = cfg, cams
        for cid, w in list(self.watches.items()):
            if cid not in cams:
                del self.watches[cid]
                continue
            w.name, w.limits = cams[cid]
            w.analyser.cfg = cfg

    async def start(self) -> None:
        now = self.clock()
        for cid, (name, limits) in self._cams.items():
            self.watches[cid] = Watch(cid, name, limits, Analyser(self.cfg), started=now)
            # latest-wins, one slot per camera: a frame costs a clock read, never a queue
            self.subscribe(topics.FRAME.at(camera=cid), self._on_frame, policy="latest", maxsize=1)
        self.subscribe(topics.HEALTH.name, self._on_health, policy="latest")
        self.spawn(self._watch_streams(), "streams")
        self._update_state()

    # -- frames ---------------------------------------------------------------------------------
    async def _on_frame(self, msg: Message[Frame]) -> None:
        frame = msg.payload
        w = self.watches.get(frame.camera_id)
        if w is None:
            return
        now = self.clock()
        w.last_frame = now
        lost = w.conditions["stream_lost"]
        if lost.active or lost.bad_since is not None:
            await self._stream_update(w, now)
        t = frame.mono_ts
        if w.last_mono is not None and t - w.last_mono > max(5.0, 3.0 / self.cfg.sample_fps):
            w.analyser.reset()  # a reconnect: compare with what comes now
            w.next_sample = float("-inf")
        w.last_mono = t
        # A live camera (its frames stamped on arrival, this one and the one before) lets the
        # handler rest until the next sample is due: frames published meanwhile only replace
        # the one in this subscription's latest-wins slot, so they cost the bus a slot swap
        # instead of waking this handler. A replay (frames on the video's clock, ahead of or
        # behind the wall) is never made to wait, nor is a stream that is (perhaps) lost:
        # then every frame counts towards "back".
        fresh = 0.0 <= time.monotonic() - t < 0.5
        rest = fresh and w.fresh and lost.bad_since is None and not lost.active
        w.fresh = fresh
        if t < w.next_sample - 2.0 / self.cfg.sample_fps:
            w.next_sample = float("-inf")  # the source's clock restarted (a file looped)
        if t >= w.next_sample:
            w.next_sample = t + 1.0 / self.cfg.sample_fps
            t0 = time.perf_counter()
            sample = await self.ctx.executor.run(w.analyser.analyse, frame.luma, t)
            self.busy_s += time.perf_counter() - t0
            await self._judge(w, sample, frame, t)
        if rest:
            await asyncio.sleep(max(0.0, w.next_sample - t - REST_MARGIN_S))

    async def _judge(self, w: Watch, s: Sample, frame: Frame, t: float) -> None:
        lim = w.limits
        wall = frame.wall_ts
        measures = {
            "mean": round(s.mean, 1),
            "spread": round(s.spread, 2),
            "p99": round(s.p99, 1),
            "changed": round(s.changed, 5),
        }
        # a black picture is frozen and unlike its reference as well: say the cause only
        verdicts: dict[HealthCondition, bool | None] = {
            "black": s.black,
            "frozen": None if s.frozen is None else (s.frozen and not s.black),
            "scene_change": None
            if s.black
            else (None if s.scene_share is None else s.scene_share >= self.cfg.scene_changed),
        }
        if s.scene_share is not None:
            measures["scene_share"] = round(s.scene_share, 3)
        for name, bad in verdicts.items():
            cond = w.conditions[name]
            if name not in lim.conditions:
                bad = False
            if bad is None:
                continue
            phase = cond.update(bad, t, wall, lim.after(name), lim.recover_after_s)
            reason = _OVER[name]
            if name == "scene_change":
                phase, reason = self._scene_reference(w, cond, phase, reason, frame, t)
            if phase is not None:
                await self._announce(w, cond, phase, t, wall, measures, reason)

    def _scene_reference(
        self,
        w: Watch,
        cond: Condition,
        phase: HealthPhase | None,
        reason: str,
        frame: Frame,
        t: float,
    ) -> tuple[HealthPhase | None, str]:
        a = w.analyser
        if cond.active and phase is None and t - cond.raised_at >= w.limits.scene_accept_s:
            # moved for good: the new view is the reference from now on
            a.renew_reference(frame.luma, t)
            return cond.clear(), "the new view is accepted as the reference"
        if (
            not cond.active
            and cond.bad_since is None
            and t - a.ref_at >= (self.cfg.reference_refresh_s)
        ):
            a.renew_reference(frame.luma, t)
        return phase, reason

    # -- stream state ---------------------------------------------------------------------------
    async def _on_health(self, msg: Message[HealthReport]) -> None:
        for m in msg.payload.modules:
            cid = m.metrics.get("camera")
            state = m.metrics.get("camera_state")
            if isinstance(cid, str) and isinstance(state, str) and cid in self.watches:
                self.watches[cid].input_state = state

    async def _watch_streams(self) -> None:
        while True:
            now = self.clock()
            for w in list(self.watches.values()):
                await self._stream_update(w, now)
            self.stream_rounds += 1
            await asyncio.sleep(self.tick_s)

    async def _stream_update(self, w: Watch, now: float) -> None:
        cond = w.conditions["stream_lost"]
        last = w.last_frame if w.last_frame is not None else w.started
        silent = now - last
        # a finite source that ended is done, not lost; a frame within two sample intervals
        # (at least 2 s: the handler rests up to one interval between a live camera's
        # samples) is a stream; the input's own stall timeout decides when to reconnect
        bad = (
            w.input_state != "ended"
            and "stream_lost" in w.limits.conditions
            and silent >= min(max(2.0, 2.0 / self.cfg.sample_fps), w.limits.lost_after_s)
        )
        wall = time.time()
        if bad and cond.bad_since is None:
            # it began with the last frame, not when this tick noticed
            cond.bad_since, cond.bad_since_wall = last, wall - silent
        phase = cond.update(bad, now, wall, w.limits.lost_after_s, w.limits.recover_after_s)
        if phase is not None:
            state = w.input_state or "no frame yet"
            await self._announce(w, cond, phase, now, wall, {}, _OVER["stream_lost"], state)

    # -- notices --------------------------------------------------------------------------------
    async def _announce(
        self,
        w: Watch,
        cond: Condition,
        phase: HealthPhase,
        t: float,
        wall: float,
        measures: dict[str, float],
        reason: str,
        state: str | None = None,
    ) -> None:
        name = cond.name
        if phase == "alert":
            cond.notice_id = f"health-{w.camera_id}-{name}-{int(cond.bad_since_wall)}"
            lasted = t - (cond.bad_since if cond.bad_since is not None else t)
            message = f"{w.name}: {_WHAT[name]} for {_span(lasted)}."
            if name == "stream_lost" and state:
                message = f"{w.name}: {_WHAT[name]} for {_span(lasted)} (camera {state})."
            self.alerts += 1
            self.log.warning(
                "camera_health_alert", camera=w.camera_id, condition=name, lasted_s=round(lasted)
            )
        else:
            lasted = max(0.0, t - cond.raised_at) + w.limits.after(name)
            message = f"{w.name}: {reason} (after {_span(lasted)})."
            self.recoveries += 1
            self.log.info(
                "camera_health_recovered", camera=w.camera_id, condition=name, reason=reason
            )
        notice = CameraHealthNotice(
            notice_id=cond.notice_id or f"health-{w.camera_id}-{name}-{int(wall)}",
            camera_id=w.camera_id,
            camera_name=w.name,
            condition=name,
            phase=phase,
            since=cond.bad_since_wall or wall,
            at=wall,
            duration_s=round(max(0.0, lasted), 1),
            message=message[:300],
            reason=reason if phase == "recovered" else "",
            measures=measures,
        )
        self._update_state()
        await self.bus.publish(topics.CAMERA_HEALTH.at(camera=w.camera_id, phase=phase), notice)

    # -- health ---------------------------------------------------------------------------------
    def problems(self) -> list[tuple[str, str]]:
        """(camera, condition) of every condition raised now."""
        return [
            (cid, name)
            for cid, w in self.watches.items()
            for name, c in w.conditions.items()
            if c.active
        ]

    def _update_state(self) -> None:
        active = self.problems()
        if active:
            self.set_state(
                "degraded",
                "; ".join(f"{self.watches[c].name}: {n.replace('_', ' ')}" for c, n in active),
            )
        else:
            self.set_state("ok", f"watching {len(self.watches)} camera(s)")

    def metrics(self) -> dict[str, float | int | str]:
        samples = sum(w.analyser.samples for w in self.watches.values())
        out: dict[str, float | int | str] = {
            "alerts": self.alerts,
            "recoveries": self.recoveries,
            "samples": samples,
            "ms_per_sample": round(1000 * self.busy_s / samples, 3) if samples else 0.0,
        }
        for cid, w in self.watches.items():
            for name, c in w.conditions.items():
                # camera_health.<camera>.<condition>: the status page's Prometheus gauge
                out[f"camera_health.{cid}.{name}"] = int(c.active)
        return out
