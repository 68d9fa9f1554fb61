"""The compressed H.264 packets a camera sent in the last seconds, kept as bytes.

Where the source already is H.264 (an RTSP camera, an ``.mp4`` replayed as a camera) the clip
recorder does not need pictures at all: it cuts the camera's own packets, from the keyframe
before the pre-roll start, and remuxes them into an MP4 (as Frigate records). The input fills
a ``PacketRing`` on its camera thread as it demuxes (one ``bytes`` copy of each packet, a few
kilobytes, no decode, no colour conversion) and hands a reference to it on every frame
(``Frame.source_packets``); the recorder reads the ring only while an event is open.

Every packet is made decodable on its own from a keyframe: MP4/MKV packets (length-prefixed
NAL units) go through FFmpeg's ``h264_mp4toannexb`` filter, which puts the parameter sets in
front of each IDR picture; RTSP packets are Annex B already, and a keyframe that comes without
its SPS/PPS (cameras that send them only in the SDP) gets the stream's extradata in front.
The MP4 muxer then builds the ``avcC`` box from the first keyframe, as it does for our own
encoder's packets.

Clocks: packets carry the source's timestamps (``pts``/``dts`` in milliseconds). The camera's
frames carry the monotonic clock of the pipeline (``Frame.mono_ts``). The input ``anchor``s
the two on every frame it publishes (offset = frame clock - source time of that frame); the
smallest offset seen wins (the one with the least delivery delay), and a jump of more than a
second (a reconnect, a looped file, a camera that reset its clock) starts over. Readers get
packets converted to the frame clock, so a cut from an event's ``started_mono`` is exact to a
frame or so, and a clip spanning a reconnect stays monotonic.

Memory: everything from the last keyframe at or before ``newest - keep_s`` (``keep_s`` is the
largest any reader asked for with ``retain``), capped at ``budget_bytes``; a 2 Mbit/s stream
with 4 s kept and a 2 s GOP holds about 1.5 MB.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol, TypeVar

#: the offset between source and frame clock may jump by this much before it is re-learnt
REANCHOR_S = 1.0
#: default memory cap of one camera's ring
DEFAULT_BUDGET = 32_000_000


@dataclass(frozen=True, slots=True)
class SourcePacket:
    """One compressed access unit, timestamps in milliseconds of the source clock."""

    seq: int
    pts: int
    dts: int
    key: bool
    data: bytes


def _nal_types(data: bytes, limit: int = 8) -> list[int]:
    """Types of the first ``limit`` Annex B NAL units of ``data`` (cheap: a few finds)."""
    out: list[int] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0 and len(out) < limit and i + 3 < len(data):
        out.append(data[i + 3] & 0x1F)
        i = data.find(b"\x00\x00\x01", i + 3)
    return out


class _Cuttable(Protocol):
    pts: int
    key: bool


P = TypeVar("P", bound=_Cuttable)


def cut_decodable(packets: Sequence[P], start_ms: int, end_ms: int) -> list[P]:
    """Packets (in decode order) from the last keyframe at or before ``start_ms`` up to
    ``end_ms`` (display time, milliseconds).

    With B-frames (a remuxed camera stream) decode order is not display order: the cut ends
    at the first point in decode order where every picture before it is shown before every
    picture after it, at or past ``end_ms``, so no picture is missing in the middle and none
    refers to one left out. The clip recorder cuts clips this way, the animation maker its
    window of a clip.
    """
    first = None
    for i, p in enumerate(packets):
        if p.key and (p.pts <= start_ms or first is None):
            first = i
        if p.pts > start_ms and first is not None:
            break
    if first is None:
        return []
    tail = list(packets[first:])
    later_min = [0] * len(tail)  # smallest pts after each position
    low = 1 << 62
    for i in range(len(tail) - 1, -1, -1):
        later_min[i] = low
        low = min(low, tail[i].pts)
    shown = -(1 << 62)
    for i, p in enumerate(tail):
        shown = max(shown, p.pts)
        if shown < later_min[i] and (shown >= end_ms or later_min[i] > end_ms):
            return tail[: i + 1]
    return tail


class PacketRing:
    """The last seconds of one camera's H.264 packets; appended on the camera thread,
    read on any thread (one lock; reads copy a list of references)."""

    def __init__(self, *, keep_s: float = 0.0, budget_bytes: int = DEFAULT_BUDGET) -> None:
        self._lock = threading.Lock()
        self._ring: deque[SourcePacket] = deque()
        self._bytes = 0
        self._seq = 0
        self.keep_s = keep_s
        self.budget_bytes = budget_bytes
        self.codec = "h264"
        self.width = 0
        self.height = 0
        self.rate = 0.0
        #: changes when the stream is reopened: packets of two generations do not mix
        self.generation = 0
        self._offset_ms: float | None = None
        self._annexb_extradata = b""
        self._bsf: Any = None
        self._time_base = 0.0
        self._shift_ms = 0.0
        self.packets_in = 0
        self.dropped_for_budget = 0

    # -- the camera thread -------------------------------------------------------------------
    def reset(self, stream: Any, *, shift_s: float = 0.0) -> bool:
        """A (re)opened source: forget what was kept; False when it is not H.264.

        ``shift_s`` is added to every timestamp (a looping file input counts on across
        passes, and its frames' ``pts_s`` carry the same shift).
        """
        with self._lock:
            self._ring.clear()
            self._bytes = 0
            self.generation += 1
            self._offset_ms = None
        ctx = stream.codec_context
        if ctx.name != "h264":
            return False
        self.width, self.height = ctx.width, ctx.height
        rate = stream.average_rate or stream.guessed_rate
        self.rate = float(rate) if rate else 0.0
        self._time_base = float(stream.time_base) if stream.time_base else 1 / 90000
        self._shift_ms = shift_s * 1000.0
        extradata = bytes(ctx.extradata or b"")
        self._bsf = None
        self._annexb_extradata = b""
        if extradata[:1] == b"\x01":  # avcC (MP4, MKV): length-prefixed NAL units
            import av

            self._bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", stream)
        else:
            self._annexb_extradata = extradata
        return True

    def append(self, packet: Any) -> None:
        """One demuxed packet (a PyAV ``Packet``); call on the thread that demuxes."""
        if self._bsf is not None:
            if packet.size == 0:
                return  # the demuxer's end-of-stream marker
            import av

            # the filter takes the packet's data over (it would reach the decoder empty):
            # give it a copy (a few kilobytes)
            copy = av.Packet(bytes(packet))
            copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, packet.time_base
            copy.is_keyframe = packet.is_keyframe
            for p in self._bsf.filter(copy):
                self._add(p)
        else:
            self._add(packet)

    def _add(self, p: Any) -> None:
        if p.pts is None or p.size == 0:
            return
        tb = float(p.time_base) if p.time_base else self._time_base
        pts = round(p.pts * tb * 1000 + self._shift_ms)
        dts = round(p.dts * tb * 1000 + self._shift_ms) if p.dts is not None else pts
        key = bool(p.is_keyframe)
        data = bytes(p)
        if key and self._annexb_extradata and 7 not in _nal_types(data):
            data = self._annexb_extradata + data
        with self._lock:
            if not self._ring and not key:
                return  # a stream is only usable from its first keyframe
            self._seq += 1
            self._ring.append(SourcePacket(self._seq, pts, dts, key, data))
            self._bytes += len(data)
            self.packets_in += 1
            self._trim(dts)

    def _trim(self, newest_dts: int) -> None:
        horizon = newest_dts - self.keep_s * 1000
        ring = self._ring
        while True:
            # the second keyframe: everything before it may go if it is old enough
            nxt = next((i for i, q in enumerate(ring) if i > 0 and q.key), None)
            if nxt is None:
                return
            over = self._bytes > self.budget_bytes
            if ring[nxt].dts > horizon and not over:
                return
            if over:
                self.dropped_for_budget += nxt
            for _ in range(nxt):
                self._bytes -= len(ring.popleft().data)

    def anchor(self, pts_s: float, mono_s: float) -> None:
        """The frame of source time ``pts_s`` was published at frame-clock ``mono_s``."""
        off = (mono_s - pts_s) * 1000.0
        with self._lock:
            cur = self._offset_ms
            if cur is None or abs(off - cur) > REANCHOR_S * 1000 or off < cur:
                self._offset_ms = off

    # -- readers -----------------------------------------------------------------------------
    def retain(self, seconds: float) -> None:
        """Keep at least ``seconds`` (plus the GOP they start in) from now on."""
        if seconds > self.keep_s:
            self.keep_s = seconds

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._offset_ms is not None and bool(self._ring)

    def oldest_mono(self) -> float | None:
        """Frame-clock seconds of the oldest packet kept (a keyframe), None: none or unanchored."""
        with self._lock:
            if not self._ring or self._offset_ms is None:
                return None
            return (self._ring[0].pts + self._offset_ms) / 1000.0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def after(self, seq: int) -> tuple[int, float, list[SourcePacket]]:
        """(generation, source -> frame clock offset in ms, packets with a seq above ``seq``)."""
        with self._lock:
            if self._offset_ms is None:  # reopened, no frame published yet: wait for one
                return self.generation, 0.0, []
            off = self._offset_ms
            ring = self._ring
            if not ring or ring[-1].seq <= seq:
                return self.generation, off, []
            if ring[0].seq > seq:
                return self.generation, off, list(ring)
            start = len(ring) - (ring[-1].seq - seq)
            return self.generation, off, list(islice(ring, start, None))
