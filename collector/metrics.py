"""Worker snapshots and their aggregation into Prometheus metrics.

Workers keep plain integer counters and send a snapshot to the supervisor a few times a second; the
supervisor sums them (keeping what exited workers had counted) and renders /metrics. No metric call
ever happens per packet.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from collector.io.sinks import SinkStatus
from collector.records import END_REASONS
from collector.wire.drops import DROP_COUNT, Drop


class WorkerSnapshot(msgspec.Struct, kw_only=True):
    """Cumulative counters of one worker incarnation, plus its current gauges."""

    index: int
    pid: int
    started: float
    datagrams: int = 0
    rx_bytes: int = 0
    drops: list[int] = msgspec.field(default_factory=lambda: [0] * DROP_COUNT)
    records: dict[str, int] = msgspec.field(default_factory=dict)
    flows_active: int = 0
    evictions: int = 0
    kernel_drops: int = 0
    recv_errors: int = 0
    enrich_refreshes: int = 0
    enrich_failures: int = 0
    loop_lag_s: float = 0.0
    sink: SinkStatus = msgspec.field(default_factory=SinkStatus)
    stopping: bool = False


COUNTER_FIELDS = (
    "datagrams",
    "rx_bytes",
    "evictions",
    "kernel_drops",
    "recv_errors",
    "enrich_refreshes",
    "enrich_failures",
)
SINK_COUNTERS = ("delivered", "retried", "failed", "dropped", "failures")


class Totals:
    """Counters summed over exited worker incarnations."""

    def __init__(self) -> None:
        self.values: dict[str, int] = dict.fromkeys(COUNTER_FIELDS + SINK_COUNTERS, 0)
        self.drops = [0] * DROP_COUNT
        self.records: dict[str, int] = {}

    def add(self, snap: WorkerSnapshot) -> None:
        """Fold an exited worker's last snapshot in."""
        for name in COUNTER_FIELDS:
            self.values[name] += getattr(snap, name)
        for name in SINK_COUNTERS:
            self.values[name] += getattr(snap.sink, name)
        for i, n in enumerate(snap.drops):
            self.drops[i] += n
        for reason, n in snap.records.items():
            self.records[reason] = self.records.get(reason, 0) + n


class WorkerView(msgspec.Struct, kw_only=True):
    """What the supervisor knows of one worker slot."""

    index: int
    alive: bool = False
    responsive: bool = False
    restarts: int = 0
    last_seen: float = 0.0
    snapshot: WorkerSnapshot | None = None


class Aggregate(Collector):
    """Renders the supervisor's view of all workers as Prometheus metric families."""

    def __init__(self) -> None:
        self.retired = Totals()
        self.workers: dict[int, WorkerView] = {}
        self.draining = False
        self.healthy = False
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.latency = Histogram(
            "collector_sink_delivery_latency_seconds",
            "Time from a batch handed to the sink to its acknowledgement.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The /metrics body."""
        return generate_latest(self.registry)

    def total(self, name: str) -> int:
        """A counter summed over live and exited workers."""
        value = self.retired.values[name]
        for view in self.workers.values():
            snap = view.snapshot
            if snap is not None:
                value += getattr(snap.sink, name) if name in SINK_COUNTERS else getattr(snap, name)
        return value

    def drops(self) -> list[int]:
        """Drops per reason over live and exited workers."""
        drops = list(self.retired.drops)
        for view in self.workers.values():
            if view.snapshot is not None:
                for i, n in enumerate(view.snapshot.drops):
                    drops[i] += n
        return drops

    def records(self) -> dict[str, int]:
        """Records emitted per end reason over live and exited workers."""
        out = dict.fromkeys(END_REASONS, 0)
        for reason, n in self.retired.records.items():
            out[reason] = out.get(reason, 0) + n
        for view in self.workers.values():
            if view.snapshot is not None:
                for reason, n in view.snapshot.records.items():
                    out[reason] = out.get(reason, 0) + n
        return out

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield counter(
            "collector_datagrams_received", "UDP datagrams received.", self.total("datagrams")
        )
        yield counter(
            "collector_received_bytes", "UDP payload bytes received.", self.total("rx_bytes")
        )
        drops = self.drops()
        dropped = CounterMetricFamily(
            "collector_packets_dropped",
            "Packets not counted into flows, by reason.",
            labels=["reason"],
        )
        for reason in Drop:
            dropped.add_metric([reason.label], drops[reason])
        yield dropped
        datagrams = self.total("datagrams")
        filtered = CounterMetricFamily(
            "collector_filter_packets",
            "Packets kept or rejected by mirror filters.",
            labels=["action"],
        )
        filtered.add_metric(["accept"], datagrams - sum(drops))
        filtered.add_metric(["reject"], drops[Drop.FILTER_REJECT])
        yield filtered
        yield counter(
            "collector_flow_evictions",
            "Flows emitted early because the flow table was full.",
            self.total("evictions"),
        )
        yield counter(
            "collector_kernel_drops",
            "Datagrams the kernel dropped on the worker sockets (receive buffer full).",
            self.total("kernel_drops"),
        )
        yield counter(
            "collector_receive_errors", "Socket receive errors.", self.total("recv_errors")
        )
        yield counter(
            "collector_enrich_refreshes",
            "Successful EC2 API refreshes of the session view.",
            self.total("enrich_refreshes"),
        )
        yield counter(
            "collector_enrich_failures",
            "Failed EC2 API refreshes (the last good view stayed in use).",
            self.total("enrich_failures"),
        )
        emitted = CounterMetricFamily(
            "collector_records_emitted",
            "Flow records emitted, by end reason.",
            labels=["end_reason"],
        )
        for end_reason, n in sorted(self.records().items()):
            emitted.add_metric([end_reason], n)
        yield emitted
        yield counter(
            "collector_records_delivered",
            "Records the sink acknowledged.",
            self.total("delivered"),
        )
        yield counter("collector_sink_failures", "Failed sink operations.", self.total("failures"))
        yield counter(
            "collector_sink_records_retried", "Records sent again.", self.total("retried")
        )
        yield counter(
            "collector_sink_records_failed",
            "Records a sink could not deliver on a try.",
            self.total("failed"),
        )
        yield counter(
            "collector_sink_records_dropped",
            "Records lost because the spool was full.",
            self.total("dropped"),
        )
        yield counter(
            "collector_worker_restarts",
            "Worker processes restarted by the supervisor.",
            sum(v.restarts for v in self.workers.values()),
        )
        active = 0
        queue = 0
        spool = 0
        up = GaugeMetricFamily(
            "collector_worker_up", "1 when the worker is alive and responsive.", labels=["worker"]
        )
        lag = GaugeMetricFamily(
            "collector_event_loop_lag_seconds", "Event-loop lag of the worker.", labels=["worker"]
        )
        for index, view in sorted(self.workers.items()):
            up.add_metric([str(index)], 1 if view.alive and view.responsive else 0)
            snap = view.snapshot
            lag.add_metric([str(index)], snap.loop_lag_s if snap else 0.0)
            if snap is not None and view.alive:
                active += snap.flows_active
                queue += snap.sink.queue_records
                spool += snap.sink.spool_bytes
        yield up
        yield lag
        yield GaugeMetricFamily("collector_flows_active", "Flows in the flow tables.", value=active)
        yield GaugeMetricFamily(
            "collector_sink_queue_records", "Records in memory awaiting delivery.", value=queue
        )
        yield GaugeMetricFamily("collector_spool_bytes", "Bytes in the disk spool.", value=spool)
        yield GaugeMetricFamily(
            "collector_draining", "1 while draining after SIGTERM.", value=int(self.draining)
        )
        yield GaugeMetricFamily(
            "collector_healthy", "1 when /healthz answers 200.", value=int(self.healthy)
        )
