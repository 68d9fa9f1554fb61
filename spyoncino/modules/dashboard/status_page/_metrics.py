"""Prometheus metrics, served on ``/metrics`` by the status page's own aiohttp app.

Two kinds of numbers:

* counted here, from the bus (motion events, detections by label, inference latency, events,
  notifications, bytes written): prometheus-client Counter/Histogram objects;
* reported by others (camera fps and frame counters from ``status.health``, queue depth and lag
  from ``status.bus``, disk and temperature from the system probe): a custom collector that
  turns the latest reports into metric families at scrape time, so nothing is duplicated.

The registry is this module's own, never the process-global one, so two instances (tests)
never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from spyoncino.helpers.camera import DROP_REASONS
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.detections import DetectionEvent
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact
from spyoncino.schemas.status import BusStatus, HealthReport, ModuleHealth

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_HEALTH_STATES = ("starting", "ok", "degraded", "failed", "quarantined", "stopped")


@dataclass
class Reports:
    """The latest reports the collector reads at scrape time."""

    health: HealthReport | None = None
    bus: BusStatus | None = None
    armed: bool | None = None
    disk_free: int | None = None
    disk_total: int | None = None
    cpu_temp_c: float | None = None
    throttled: int | None = None


def camera_of(m: ModuleHealth) -> str | None:
    cam = m.metrics.get("camera")
    return cam if isinstance(cam, str) and "camera_state" in m.metrics else None


def _num(m: ModuleHealth, key: str) -> float | None:
    v = m.metrics.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class _ReportCollector(Collector):
    def __init__(self, reports: Callable[[], Reports], version: str) -> None:
        self._reports = reports
        self._version = version

    def collect(self) -> Iterator[Metric]:
        r = self._reports()
        info = GaugeMetricFamily(
            "spyoncino_build_info", "Version of spyoncino.", labels=["version"]
        )
        info.add_metric([self._version], 1.0)
        yield info
        if r.armed is not None:
            yield GaugeMetricFamily(
                "spyoncino_armed", "1 when alerts are armed.", value=float(r.armed)
            )
        yield from self._cameras(r.health)
        yield from self._modules(r.health)
        yield from self._camera_health(r.health)
        yield from self._bus(r.bus)
        if r.disk_free is not None:
            yield GaugeMetricFamily(
                "spyoncino_storage_free_bytes",
                "Free bytes on the storage filesystem.",
                value=r.disk_free,
            )
        if r.disk_total is not None:
            yield GaugeMetricFamily(
                "spyoncino_storage_size_bytes",
                "Size of the storage filesystem.",
                value=r.disk_total,
            )
        if r.cpu_temp_c is not None:
            yield GaugeMetricFamily(
                "spyoncino_cpu_temperature_celsius", "CPU temperature.", value=r.cpu_temp_c
            )
        if r.throttled is not None:
            yield GaugeMetricFamily(
                "spyoncino_cpu_throttled_flags",
                "vcgencmd get_throttled bit field.",
                value=r.throttled,
            )

    def _cameras(self, health: HealthReport | None) -> Iterator[Metric]:
        fps = GaugeMetricFamily(
            "spyoncino_camera_fps", "Frames per second published.", labels=["camera"]
        )
        up = GaugeMetricFamily(
            "spyoncino_camera_up", "1 while the camera streams.", labels=["camera"]
        )
        frames = CounterMetricFamily(
            "spyoncino_camera_frames", "Frames published by the camera input.", labels=["camera"]
        )
        decoded = CounterMetricFamily(
            "spyoncino_camera_frames_decoded",
            "Frames the camera input read and decoded (published + dropped by the input).",
            labels=["camera"],
        )
        dropped = CounterMetricFamily(
            "spyoncino_camera_frames_dropped",
            "Frames lost, by reason: fps_cap (over max_fps), queue_full (the event loop was "
            "behind the camera thread), decode_error (damaged packet or JPEG), motion_busy "
            "(motion detection fell behind and skipped it).",
            labels=["camera", "reason"],
        )
        reconnects = CounterMetricFamily(
            "spyoncino_camera_reconnects", "Reconnections of the camera input.", labels=["camera"]
        )
        hangs = CounterMetricFamily(
            "spyoncino_camera_threads_abandoned",
            "Calls into the camera that hung and whose thread was abandoned.",
            labels=["camera"],
        )
        age = GaugeMetricFamily(
            "spyoncino_camera_last_frame_age_seconds",
            "Seconds since the last frame.",
            labels=["camera"],
        )
        for m in health.modules if health else ():
            cam = camera_of(m)
            if cam is None:
                continue
            state = m.metrics.get("camera_state")
            up.add_metric([cam], 1.0 if state == "streaming" else 0.0)
            for family, key in (
                (fps, "fps"),
                (frames, "frames"),
                (reconnects, "reconnects"),
                (hangs, "threads_abandoned"),
            ):
                v = _num(m, key)
                if v is not None:
                    family.add_metric([cam], v)
            v = _num(m, "frames_decoded")
            if v is not None:
                decoded.add_metric([cam], v)
            for reason in DROP_REASONS:
                v = _num(m, f"dropped_{reason}")
                if v is None and reason == "fps_cap":
                    v = _num(m, "frames_capped")  # an input from before the reasons
                if v is not None:
                    dropped.add_metric([cam, reason], v)
            v = _num(m, "last_frame_age_s")
            if v is not None and v >= 0:
                age.add_metric([cam], v)
        # the motion stage counts, per camera, the frames it skipped to keep up
        for m in health.modules if health else ():
            if camera_of(m) is not None:
                continue
            for key in m.metrics:
                if key.startswith("cam.") and key.endswith(".skipped"):
                    v = _num(m, key)
                    if v is not None:
                        dropped.add_metric([key[4:-8], "motion_busy"], v)
        yield from (fps, up, frames, decoded, dropped, reconnects, hangs, age)

    def _modules(self, health: HealthReport | None) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "spyoncino_module_state",
            "1 for the state each module is in.",
            labels=["module", "state"],
        )
        restarts = CounterMetricFamily(
            "spyoncino_module_restarts", "Restarts of each module.", labels=["module"]
        )
        outbox = GaugeMetricFamily(
            "spyoncino_outbox_depth", "Notifications waiting to be sent.", labels=["module"]
        )
        for m in health.modules if health else ():
            for s in _HEALTH_STATES:
                state.add_metric([m.module, s], 1.0 if m.state == s else 0.0)
            restarts.add_metric([m.module], float(m.restarts))
            for key in ("outbox_pending", "outbox_depth"):  # helpers/outbox reports the first
                v = _num(m, key)
                if v is not None:
                    outbox.add_metric([m.module], v)
                    break
        yield from (state, restarts, outbox)
        yield from self._offbox(health)

    def _offbox(self, health: HealthReport | None) -> Iterator[Metric]:
        """Off-box copies (the s3 module reports ``offbox_*``): backlog, bytes, failures."""
        gauges = {
            "offbox_backlog": ("spyoncino_offbox_backlog", "Copies waiting to leave the box."),
            "offbox_backlog_bytes": ("spyoncino_offbox_backlog_bytes", "Bytes of those copies."),
            "offbox_oldest_age_s": (
                "spyoncino_offbox_oldest_age_seconds",
                "Age of the oldest copy waiting.",
            ),
            "offbox_ready": ("spyoncino_offbox_ready", "1 while the storage endpoint works."),
        }
        counters = {
            "offbox_uploaded_bytes": ("spyoncino_offbox_uploaded_bytes", "Bytes copied off."),
            "offbox_uploaded_objects": ("spyoncino_offbox_uploaded_objects", "Objects copied."),
            "offbox_upload_failures": ("spyoncino_offbox_upload_failures", "Failed uploads."),
            "offbox_lost_before_upload": (
                "spyoncino_offbox_lost_before_upload",
                "Copies whose file was gone before it left the box.",
            ),
        }
        families: list[tuple[str, GaugeMetricFamily | CounterMetricFamily]] = [
            (k, GaugeMetricFamily(n, h, labels=["module"])) for k, (n, h) in gauges.items()
        ]
        families += [
            (k, CounterMetricFamily(n, h, labels=["module"])) for k, (n, h) in counters.items()
        ]
        for m in health.modules if health else ():
            for key, family in families:
                v = _num(m, key)
                if v is not None:
                    family.add_metric([m.module], v)
        yield from (f for _, f in families)

    def _camera_health(self, health: HealthReport | None) -> Iterator[Metric]:
        """The camera-health module reports ``camera_health.<camera>.<condition>`` as 0/1."""
        gauge = GaugeMetricFamily(
            "spyoncino_camera_health",
            "1 while a camera-health condition (stream_lost, black, frozen, scene_change) "
            "is raised.",
            labels=["camera", "condition"],
        )
        for m in health.modules if health else ():
            for key in m.metrics:
                parts = key.split(".")
                if len(parts) == 3 and parts[0] == "camera_health":
                    v = _num(m, key)
                    if v is not None:
                        gauge.add_metric([parts[1], parts[2]], v)
        yield gauge

    def _bus(self, bus: BusStatus | None) -> Iterator[Metric]:
        labels = ["subscriber", "pattern"]
        depth = GaugeMetricFamily("spyoncino_bus_queue_depth", "Messages waiting.", labels=labels)
        lag = GaugeMetricFamily(
            "spyoncino_bus_lag_seconds", "Delay of the last delivered message.", labels=labels
        )
        lag_max = GaugeMetricFamily(
            "spyoncino_bus_lag_max_seconds", "Largest delivery delay seen.", labels=labels
        )
        dropped = CounterMetricFamily(
            "spyoncino_bus_dropped_messages",
            "Messages dropped by latest-wins queues.",
            labels=labels,
        )
        errors = CounterMetricFamily(
            "spyoncino_bus_handler_errors", "Handler exceptions.", labels=labels
        )
        published = CounterMetricFamily(
            "spyoncino_bus_published_messages", "Messages published per topic.", labels=["topic"]
        )
        for s in bus.subscriptions if bus else ():
            key = [s.module, s.pattern]
            depth.add_metric(key, s.depth)
            lag.add_metric(key, s.lag_ms / 1000.0)
            lag_max.add_metric(key, s.lag_ms_max / 1000.0)
            dropped.add_metric(key, s.dropped)
            errors.add_metric(key, s.errors)
        for t in bus.topics if bus else ():
            published.add_metric([t.topic], t.published)
        if bus:
            yield GaugeMetricFamily(
                "spyoncino_bus_uptime_seconds", "Seconds since the bus started.", value=bus.uptime_s
            )
        yield from (depth, lag, lag_max, dropped, errors, published)


class Metrics:
    """Counters fed from bus messages plus the report collector, in one private registry."""

    def __init__(self, reports: Callable[[], Reports], version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.motion = Counter(
            "spyoncino_motion_events", "Frames in which motion was found.", ["camera"], registry=reg
        )
        self.detections = Counter(
            "spyoncino_detections", "Objects detected, by label.", ["camera", "label"], registry=reg
        )
        self.inference = Histogram(
            "spyoncino_inference_latency_seconds",
            "Object detector inference time per frame.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.events = Counter(
            "spyoncino_events", "Events started.", ["camera", "kind"], registry=reg
        )
        self.artifacts = Counter(
            "spyoncino_media_artifacts", "Media files written.", ["kind"], registry=reg
        )
        self.written = Counter(
            "spyoncino_storage_written_bytes", "Bytes of media written.", ["kind"], registry=reg
        )
        self.notifications = Counter(
            "spyoncino_notifications",
            "Notification outcomes by channel and status (queued, sent, failed).",
            ["channel", "status"],
            registry=reg,
        )
        reg.register(_ReportCollector(reports, version))

    def on_motion(self, camera: str) -> None:
        self.motion.labels(camera).inc()

    def on_detections(self, d: DetectionEvent) -> None:
        self.inference.labels(d.backend).observe(d.inference_ms / 1000.0)
        for det in d.detections:
            self.detections.labels(d.camera_id, det.label).inc()

    def on_event(self, e: EventNotice) -> None:
        if e.phase == "started":
            self.events.labels(e.camera_id, e.kind).inc()

    def on_artifact(self, a: MediaArtifact) -> None:
        self.artifacts.labels(a.kind).inc()
        self.written.labels(a.kind).inc(a.size_bytes)

    def on_notification(self, n: AlertNotification) -> None:
        self.notifications.labels(n.channel, n.status).inc()

    def render(self) -> bytes:
        """Blocking (small): the exposition text."""
        return generate_latest(self.registry)
