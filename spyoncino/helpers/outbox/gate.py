"""``AlertGate``: which artifacts become alerts, the same rules for every channel."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from spyoncino.core.clock import SYSTEM_CLOCK, Clock
from spyoncino.schemas.control import ControlState
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact

#: ``muted_until`` key that mutes every camera
ALL_CAMERAS = "*"


@dataclass
class _Tracked:
    event: EventNotice
    seen_mono: float = 0.0
    alerted: bool = False
    suppressed: bool = False
    held: list[MediaArtifact] = field(default_factory=list)
    #: the latest snapshot of an activity that is not (yet) an alert
    snapshot: MediaArtifact | None = None


class AlertGate:
    """Which artifacts become alerts; the same rules for every channel.

    An alert is the snapshot of an event (an activity, of a kind in ``kinds``) of severity
    ``alert``, taken while the box is armed and neither the camera nor ``*`` is muted, within
    the per-camera budget: one per activity. An activity that starts as a ``detection`` is
    not pushed; should it become an alert, the next snapshot (the snapshot writer makes one
    at that moment) is its alert. Follow-ups (GIF, clip) of an alerted event pass too, after
    the snapshot; those of a suppressed event, or one that stays a detection, do not. Feed it
    every ``event.#`` message in order and every ``control.state``.

    An event whose snapshot never comes (the writer failed: disk full, no colour frame) must
    still be heard of: ``overdue`` hands out, once, the events still without a snapshot
    ``wait_s`` after they started, for a text alert.
    """

    def __init__(
        self,
        kinds: Iterable[str] = ("object", "motion"),
        followups: Iterable[str] = ("gif", "clip"),
        *,
        respect_state: bool = True,
        budget: Callable[[str], bool] | None = None,
        keep: int = 512,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        #: what a mute's end is judged on
        self.clock = clock
        self.kinds = frozenset(kinds)
        self.followups = frozenset(followups)
        self.respect_state = respect_state
        self.budget = budget
        self.keep = keep
        self.state = ControlState(armed=True)
        self.suppressed = 0
        self.last_reason: str | None = None
        self._events: OrderedDict[str, _Tracked] = OrderedDict()
        self._waiting: OrderedDict[str, None] = OrderedDict()

    def notice(self, ev: EventNotice) -> None:
        if ev.frame is not None or ev.crops is not None:
            # kept for up to ``keep`` events: the text, not the frames (megabytes each)
            ev = ev.model_copy(update={"frame": None, "crops": None})
        tracked = self._events.get(ev.event_id)
        if tracked is not None:
            became_alert = tracked.event.severity != "alert" and ev.severity == "alert"
            tracked.event = ev
            if became_alert and not (tracked.alerted or tracked.suppressed):
                # it waits for its snapshot from now on, as a new alert would
                tracked.seen_mono = time.monotonic()
                self._waiting.pop(ev.event_id, None)
                self._waiting[ev.event_id] = None
        elif ev.phase == "started" and ev.kind in self.kinds:
            self._events[ev.event_id] = _Tracked(ev, time.monotonic())
            if ev.severity == "alert":
                self._waiting[ev.event_id] = None
            while len(self._events) > self.keep:
                gone, _ = self._events.popitem(last=False)
                self._waiting.pop(gone, None)

    def alerted(self, event_id: str) -> bool:
        """Whether ``event_id`` was alerted (so its updates may edit what was sent)."""
        tracked = self._events.get(event_id)
        return tracked is not None and tracked.alerted

    def take_held(self, event_id: str) -> list[MediaArtifact]:
        """What an overdue alert can still send: the held snapshot (first) and follow-ups."""
        tracked = self._events.get(event_id)
        if tracked is None:
            return []
        snap, tracked.snapshot = tracked.snapshot, None
        held, tracked.held = tracked.held, []
        return [*([snap] if snap is not None else []), *held]

    def _decide(self, tracked: _Tracked) -> bool:
        """Alert (True) or suppress this event now; either way it waits no more."""
        self._waiting.pop(tracked.event.event_id, None)
        camera = tracked.event.camera_id
        why = self.reason(camera)
        if why is None and self.budget is not None and not self.budget(camera):
            why = "camera rate limit"
        if why is not None:
            tracked.suppressed = True
            tracked.held.clear()
            self.suppressed += 1
            self.last_reason = why
            return False
        tracked.alerted = True
        return True

    def overdue(self, wait_s: float, now_mono: float | None = None) -> list[EventNotice]:
        """Events still without a snapshot ``wait_s`` after they started, to alert as text."""
        now = time.monotonic() if now_mono is None else now_mono
        out = []
        for event_id in list(self._waiting):
            tracked = self._events.get(event_id)
            if tracked is None or tracked.alerted or tracked.suppressed:
                self._waiting.pop(event_id, None)
                continue
            if now - tracked.seen_mono < wait_s:
                break  # in start order: the rest are younger
            if self._decide(tracked):
                out.append(tracked.event)
        return out

    def event(self, event_id: str) -> EventNotice | None:
        tracked = self._events.get(event_id)
        return tracked.event if tracked is not None else None

    def reason(self, camera_id: str, now: float | None = None) -> str | None:
        """Why no alert goes out for ``camera_id`` now (None: it does)."""
        if not self.respect_state:
            return None
        t = self.clock.time() if now is None else now
        if not self.state.armed:
            return "disarmed"
        for key in (camera_id, ALL_CAMERAS):
            if self.state.muted_until.get(key, 0.0) > t:
                return "muted"
        return None

    def artifact(self, art: MediaArtifact) -> list[tuple[EventNotice, MediaArtifact]]:
        """What to send now because ``art`` arrived (snapshot first, then held follow-ups)."""
        tracked = self._events.get(art.event_id)
        if tracked is None or tracked.suppressed:
            return []
        if art.kind == "snapshot":
            if tracked.alerted:
                return []
            if tracked.event.severity != "alert":
                tracked.snapshot = art  # a detection: kept in case it becomes an alert
                return []
            tracked.snapshot = None
            if not self._decide(tracked):
                return []
            held, tracked.held = tracked.held, []
            return [(tracked.event, art), *((tracked.event, h) for h in held)]
        if art.kind not in self.followups:
            return []
        if not tracked.alerted:
            tracked.held.append(art)  # the photo goes first
            return []
        return [(tracked.event, art)]
