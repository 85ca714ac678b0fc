"""Worker snapshots and their aggregation into Prometheus metrics.

Workers keep plain integer counters and send a snapshot to the supervisor a few times a second; the
supervisor sums them (keeping what exited workers had counted) and renders /metrics. No metric call
ever happens per packet.

Every exported counter only rises: a restarted worker's counts start from zero, so what an exited
incarnation had counted is kept (``Totals``); the kernel's 32-bit per-socket drop count is unwrapped
(``KernelDrops``); a worker slot's CPU time carries over its restarts (``ProcessCounters``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TypeVar

import msgspec
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from collector import __version__
from collector.build import compiled
from collector.io.sink import SinkStatus
from collector.proc import ProcessCounters, ProcessReader, ProcessSample, read_process
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
    """The kernel's drop count of the worker's socket as read (32 bits: it wraps)."""
    recv_errors: int = 0
    recv_path: str = ""
    """The receive path that runs: ``mmsg``, ``reader`` (also when mmsg is unavailable), ``protocol``."""
    enrich_refreshes: int = 0
    enrich_failures: int = 0
    loop_lag_s: float = 0.0
    spool_limit_bytes: int = 0
    """Largest spool this worker's sink may hold (0: the sink has no spool)."""
    sink: SinkStatus = msgspec.field(default_factory=SinkStatus)
    geneve_datagrams: int = 0
    """Of ``datagrams``: those received on the GENEVE listener (a Gateway Load Balancer's)."""
    geneve_drops: list[int] = msgspec.field(default_factory=lambda: [0] * DROP_COUNT)
    """Of ``drops``: those of GENEVE datagrams."""
    session_datagrams: dict[int, int] = msgspec.field(default_factory=dict)
    session_names: dict[int, str] = msgspec.field(default_factory=dict)
    """VNI -> the session's name, for the named ones of ``session_datagrams``."""
    """Per VNI (-1: anonymous VNIs past the worker's label bound): packets of the session's
    flows, counted as their records are made."""
    endpoint_records: dict[str, int] = msgspec.field(default_factory=dict)
    """Records per GWLB endpoint id ("": VXLAN datagrams, "other": past the label bound)."""
    stopping: bool = False
    """Set on the last snapshot of a worker that flushed everything before it exited."""


COUNTER_FIELDS = (
    "datagrams",
    "geneve_datagrams",
    "rx_bytes",
    "evictions",
    "recv_errors",
    "enrich_refreshes",
    "enrich_failures",
)
SINK_COUNTERS = (
    "delivered",
    "sent_unacknowledged",
    "retried",
    "failed",
    "dropped",
    "dead_lettered",
    "quarantined_segments",
    "failures",
    "task_restarts",
    "topic_recreations",
)

KERNEL_DROPS_WRAP = 1 << 32  # /proc/net/udp prints sk_drops, an atomic_t, as %u


class KernelDrops:
    """The kernel's per-socket drop count unwrapped into a count that only rises.

    Each worker incarnation has its own socket, whose count starts at 0 and wraps at 2**32. The
    difference between two readings modulo 2**32 is what was dropped in between, as long as fewer
    than 2**32 datagrams were dropped between two readings (at a scrape every few seconds, more than
    a billion drops per second).
    """

    def __init__(self) -> None:
        # (pid, started) of an incarnation -> (last raw reading, unwrapped count)
        self._seen: dict[tuple[int, float], tuple[int, int]] = {}

    def observe(self, snap: WorkerSnapshot) -> int:
        """The unwrapped count of this snapshot's incarnation."""
        key = (snap.pid, snap.started)
        last_raw, count = self._seen.get(key, (0, 0))
        count += (snap.kernel_drops - last_raw) % KERNEL_DROPS_WRAP
        self._seen[key] = (snap.kernel_drops, count)
        return count

    def retire(self, snap: WorkerSnapshot) -> int:
        """The final unwrapped count of an exited incarnation; it is not tracked any longer."""
        count = self.observe(snap)
        del self._seen[(snap.pid, snap.started)]
        return count


class Totals:
    """Counters summed over exited worker incarnations."""

    def __init__(self, kernel_drops: KernelDrops | None = None) -> None:
        self.kernel = kernel_drops if kernel_drops is not None else KernelDrops()
        self.values: dict[str, int] = dict.fromkeys(
            (*COUNTER_FIELDS, "kernel_drops", *SINK_COUNTERS), 0
        )
        self.drops = [0] * DROP_COUNT
        self.geneve_drops = [0] * DROP_COUNT
        self.records: dict[str, int] = {}
        self.session_datagrams: dict[int, int] = {}
        self.session_names: dict[int, str] = {}
        self.endpoint_records: dict[str, int] = {}
        self.dead_lettered_by_error: dict[str, int] = {}
        # what a worker held when it exited without flushing (crash, kill): lost for good
        self.lost_flows = 0
        self.lost_queued = 0
        self.lost_datagrams = 0  # queued on a dead worker's socket, counted by the supervisor

    def add(self, snap: WorkerSnapshot) -> None:
        """Fold an exited worker's last snapshot in."""
        for name in COUNTER_FIELDS:
            self.values[name] += getattr(snap, name)
        self.values["kernel_drops"] += self.kernel.retire(snap)
        for name in SINK_COUNTERS:
            self.values[name] += getattr(snap.sink, name)
        for i, n in enumerate(snap.drops):
            self.drops[i] += n
        for reason, n in snap.records.items():
            self.records[reason] = self.records.get(reason, 0) + n
        for error, n in snap.sink.dead_lettered_by_error.items():
            self.dead_lettered_by_error[error] = self.dead_lettered_by_error.get(error, 0) + n
        for i, n in enumerate(snap.geneve_drops):
            self.geneve_drops[i] += n
        fold_labels(self.session_datagrams, snap.session_datagrams, OTHER_VNI)
        self.session_names.update(
            (vni, name) for vni, name in snap.session_names.items() if vni in self.session_datagrams
        )
        fold_labels(self.endpoint_records, snap.endpoint_records, OTHER_ENDPOINT)
        if not snap.stopping:
            self.lost_flows += snap.flows_active
            held = snap.sink.unwritten_records  # only in memory: on disk is not lost
            self.lost_queued += held if held >= 0 else snap.sink.queue_records


# Bounds on the label values the supervisor exports, over every worker incarnation (each worker
# bounds its own): VNIs and, on the GENEVE port, endpoint ids are chosen by whoever sends.
MAX_SESSION_SERIES = 4096
MAX_ENDPOINT_SERIES = 4096
OTHER_VNI = -1  # pipeline.OTHER_VNI: the VNIs past a bound
OTHER_ENDPOINT = "other"  # pipeline.OTHER_ENDPOINT
NO_ENDPOINT = ""  # pipeline.NO_ENDPOINT: records of VXLAN datagrams


_Label = TypeVar("_Label", int, str)


def fold_labels(total: dict[_Label, int], counts: dict[_Label, int], other: _Label) -> None:
    """Add ``counts`` into ``total``; a label past the bound is counted under ``other``."""
    bound = MAX_SESSION_SERIES if other == OTHER_VNI else MAX_ENDPOINT_SERIES
    for label, n in counts.items():
        key = label if label in total or len(total) < bound else other
        total[key] = total.get(key, 0) + n


class WorkerView(msgspec.Struct, kw_only=True):
    """What the supervisor knows of one worker slot."""

    index: int
    alive: bool = False
    responsive: bool = False
    restarts: int = 0
    last_seen: float = 0.0
    snapshot: WorkerSnapshot | None = None


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class Aggregate(Collector):
    """Renders the supervisor's view of all workers as Prometheus metric families."""

    def __init__(self, read_process: ProcessReader = read_process) -> None:
        self.kernel_drops = KernelDrops()
        self.retired = Totals(self.kernel_drops)
        self.workers: dict[int, WorkerView] = {}
        self.session_names: dict[int, str] = {}
        """VNI -> configured session name (the supervisor sets it at start and on reload)."""
        self.draining = False
        self.healthy = False
        self.filter_versions: dict[str, tuple[str, str]] = {}
        """Mirror filter name -> (TrafficMirrorFilterId or "", version of the rules in use)."""
        self.filter_refreshes = 0
        self.filter_refresh_failures = 0
        self.read_process = read_process
        self.process_counters = ProcessCounters()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.latency = Histogram(
            "collector_sink_delivery_latency_seconds",
            "Time from a batch handed to the sink to its acknowledgement (every sink: Kafka, file,"
            " stdout).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The /metrics body."""
        return generate_latest(self.registry)

    def _live(self) -> Iterator[WorkerSnapshot]:
        for view in self.workers.values():
            if view.snapshot is not None:
                yield view.snapshot

    def total(self, name: str) -> int:
        """A counter summed over live and exited workers."""
        value = self.retired.values[name]
        for snap in self._live():
            if name == "kernel_drops":
                value += self.kernel_drops.observe(snap)
            elif name in SINK_COUNTERS:
                value += getattr(snap.sink, name)
            else:
                value += getattr(snap, name)
        return value

    def drops(self) -> list[int]:
        """Drops per reason over live and exited workers."""
        drops = list(self.retired.drops)
        for snap in self._live():
            for i, n in enumerate(snap.drops):
                drops[i] += n
        return drops

    def geneve_drops(self) -> list[int]:
        """Drops of GENEVE datagrams per reason over live and exited workers."""
        drops = list(self.retired.geneve_drops)
        for snap in self._live():
            for i, n in enumerate(snap.geneve_drops):
                drops[i] += n
        return drops

    def session_datagrams(self) -> dict[int, int]:
        """Datagrams per VNI over live and exited workers (bounded, see fold_labels)."""
        out = dict(self.retired.session_datagrams)
        for snap in self._live():
            fold_labels(out, snap.session_datagrams, OTHER_VNI)
        return out

    def endpoint_records(self) -> dict[str, int]:
        """Records per GWLB endpoint id over live and exited workers (bounded)."""
        out = dict(self.retired.endpoint_records)
        for snap in self._live():
            fold_labels(out, snap.endpoint_records, OTHER_ENDPOINT)
        return out

    def dead_lettered_by_error(self) -> dict[str, int]:
        """Records dead-lettered per broker error over live and exited workers."""
        out = dict(self.retired.dead_lettered_by_error)
        for snap in self._live():
            for error, n in snap.sink.dead_lettered_by_error.items():
                out[error] = out.get(error, 0) + n
        return out

    def records(self) -> dict[str, int]:
        """Records emitted per end reason over live and exited workers."""
        out = dict.fromkeys(END_REASONS, 0)
        for reason, n in self.retired.records.items():
            out[reason] = out.get(reason, 0) + n
        for snap in self._live():
            for reason, n in snap.records.items():
                out[reason] = out.get(reason, 0) + n
        return out

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        build = GaugeMetricFamily(
            "collector_build_info",
            "The build that runs: compiled is true when every hot module runs compiled (Cython),"
            " false for the pure-Python build (no C compiler at install, or COLLECTOR_PURE_PYTHON=1).",
            labels=["version", "compiled"],
        )
        build.add_metric([__version__, "true" if compiled() else "false"], 1)
        yield build
        yield from self._ingest_families()
        yield from self._sink_families()
        yield from self._worker_families()
        yield from self._filter_families()
        yield from self._process_families()

    def _filter_families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        info = GaugeMetricFamily(
            "collector_filter_version_info",
            "The rule set each mirror filter uses now: version is a hash of its rules (the same"
            " rules give the same version on every collector); filter_id the AWS filter it"
            " follows, empty for inline rules.",
            labels=["filter", "filter_id", "version"],
        )
        for name, (filter_id, version) in sorted(self.filter_versions.items()):
            info.add_metric([name, filter_id, version], 1)
        yield info
        yield _counter(
            "collector_filter_refreshes",
            "Reads of the followed mirror filters from the EC2 API (aws.follow_filters).",
            self.filter_refreshes,
        )
        yield _counter(
            "collector_filter_refresh_failures",
            "Failed reads of the followed mirror filters (the rules in use stayed).",
            self.filter_refresh_failures,
        )

    def _ingest_families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield _counter(
            "collector_datagrams_received", "UDP datagrams received.", self.total("datagrams")
        )
        yield _counter(
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
        yield _counter(
            "collector_flow_evictions",
            "Flows emitted early because the flow table was full.",
            self.total("evictions"),
        )
        yield _counter(
            "collector_kernel_drops",
            "Datagrams the kernel dropped on the worker sockets (receive buffer full); keeps"
            " rising across the kernel's 32-bit wrap and worker restarts.",
            self.total("kernel_drops"),
        )
        yield _counter(
            "collector_receive_errors", "Socket receive errors.", self.total("recv_errors")
        )
        yield _counter(
            "collector_enrich_refreshes",
            "Successful EC2 API refreshes of the session view.",
            self.total("enrich_refreshes"),
        )
        yield _counter(
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
        yield from self._encapsulation_families(datagrams, drops)

    def _encapsulation_families(
        self, datagrams: int, drops: list[int]
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Per encapsulation (VXLAN from an NLB or ENI target, GENEVE from a Gateway Load
        Balancer), per session and per GWLB endpoint."""
        geneve = self.total("geneve_datagrams")
        received = CounterMetricFamily(
            "collector_encapsulation_datagrams_received",
            "UDP datagrams received, by encapsulation: vxlan (listen), geneve (geneve_listen).",
            labels=["encapsulation"],
        )
        received.add_metric(["vxlan"], datagrams - geneve)
        received.add_metric(["geneve"], geneve)
        yield received
        geneve_drops = self.geneve_drops()
        dropped = CounterMetricFamily(
            "collector_encapsulation_packets_dropped",
            "Packets not counted into flows, by encapsulation and reason (the geneve_* reasons"
            " are the GENEVE layer's).",
            labels=["encapsulation", "reason"],
        )
        for reason in Drop:
            if not reason.is_geneve:
                dropped.add_metric(["vxlan", reason.label], drops[reason] - geneve_drops[reason])
            dropped.add_metric(["geneve", reason.label], geneve_drops[reason])
        yield dropped
        per_session = CounterMetricFamily(
            "collector_session_datagrams",
            "Mirrored packets per session, counted as the records of its flows are made (a flow"
            " ends on the active/inactive timeouts, TCP FIN/RST or eviction): a session whose"
            " count stops rising has gone silent. session is empty for VNIs accepted without a"
            ' session; vni "other" holds such VNIs past the label bound.',
            labels=["session", "vni"],
        )
        # the names the workers saw (sessions learned from the EC2 API too), the configured
        # ones over them
        names = dict(self.retired.session_names)
        for snap in self._live():
            names.update(snap.session_names)
        names.update(self.session_names)
        counts = self.session_datagrams()
        for vni in self.session_names:  # a configured session's series starts at 0
            counts.setdefault(vni, 0)
        for vni, n in sorted(counts.items()):
            if vni == OTHER_VNI:
                per_session.add_metric(["", "other"], n)
            else:
                per_session.add_metric([names.get(vni, ""), str(vni)], n)
        yield per_session
        per_endpoint = CounterMetricFamily(
            "collector_endpoint_records",
            "Flow records of GENEVE traffic per Gateway Load Balancer endpoint (vpce-...): which"
            ' source VPC or account it came through; "other" past the label bound.',
            labels=["gwlb_endpoint_id"],
        )
        for endpoint, n in sorted(self.endpoint_records().items()):
            if endpoint != NO_ENDPOINT:
                per_endpoint.add_metric([endpoint], n)
        yield per_endpoint

    def _sink_families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield _counter(
            "collector_records_delivered",
            "Records the sink acknowledged (Kafka: the broker; file, stdout: written).",
            self.total("delivered"),
        )
        yield _counter(
            "collector_sink_topic_recreations",
            "Times the Kafka topic was created again after it was deleted while the collector ran"
            " (kafka.create_topic on; what was delivered before the deletion is gone with it).",
            self.total("topic_recreations"),
        )
        yield _counter(
            "collector_records_sent_unacknowledged",
            "Records written to the broker with kafka.acks = 0: the broker acknowledges nothing, so"
            " they are sent but never counted delivered (0 with any other acks).",
            self.total("sent_unacknowledged"),
        )
        yield _counter(
            "collector_sink_failures",
            "Failed sink operations (a batch the broker did not take, a failed write); what became"
            " of their records is counted as retried, failed or dropped.",
            self.total("failures"),
        )
        yield _counter(
            "collector_sink_task_restarts",
            "Tasks of the sink found dead and replaced (its pump, watch, a partition's sender, the"
            " connect loop, the Kafka client's sender); no record is lost with them.",
            self.total("task_restarts"),
        )
        yield _counter(
            "collector_sink_records_retried",
            "Records sent again after a retriable failure (not lost).",
            self.total("retried"),
        )
        yield _counter(
            "collector_sink_records_failed",
            "Records lost: a sink gave up on them for good, never retried (the broker rejected"
            " them for their content: too large for any batch, corrupt; or the file/stdout sink"
            " could not write them).",
            self.total("failed"),
        )
        yield _counter(
            "collector_sink_records_dropped",
            "Records lost before reaching the broker: the spool was full (kafka.spool_max_bytes),"
            " no spool was open, or writing the spool failed (the dead-letter spool alike).",
            self.total("dropped"),
        )
        yield _counter(
            "collector_sink_records_dead_lettered",
            "Records the broker refused for good (authorization, policy, timestamp), kept in the"
            " dead-letter spool directory: not in the topic, not lost (a full or unwritable"
            " dead-letter spool drops them: counted as dropped).",
            self.total("dead_lettered"),
        )
        by_error = CounterMetricFamily(
            "collector_sink_records_dead_lettered_by_error",
            "Of the dead-lettered records: per broker error (an error the sink does not know is"
            " retried 5 times first).",
            labels=["error"],
        )
        for error, n in sorted(self.dead_lettered_by_error().items()):
            by_error.add_metric([error], n)
        yield by_error
        yield _counter(
            "collector_spool_quarantined_segments",
            "Damaged spool segments moved to quarantine/: their good records were replayed, the"
            " torn or corrupt rest was not (kept on disk for inspection).",
            self.total("quarantined_segments"),
        )
        lost = CounterMetricFamily(
            "collector_worker_exit_lost",
            "Lost when a worker exited without flushing (crash, kill), from its last snapshot:"
            " kind=flows, flows in its flow table (never emitted); kind=records, records its sink"
            " held only in memory, neither acknowledged nor on disk (a sink that cannot tell counts"
            " everything it held unacknowledged); kind=datagrams, datagrams still queued on its"
            " socket, never read (counted exactly by the supervisor as it closes the socket).",
            labels=["kind"],
        )
        lost.add_metric(["flows"], self.retired.lost_flows)
        lost.add_metric(["records"], self.retired.lost_queued)
        lost.add_metric(["datagrams"], self.retired.lost_datagrams)
        yield lost

    def _worker_families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield _counter(
            "collector_worker_restarts",
            "Worker processes restarted by the supervisor.",
            sum(v.restarts for v in self.workers.values()),
        )
        active = queue = spool = spool_limit = 0
        up = GaugeMetricFamily(
            "collector_worker_up", "1 when the worker is alive and responsive.", labels=["worker"]
        )
        lag = GaugeMetricFamily(
            "collector_event_loop_lag_seconds", "Event-loop lag of the worker.", labels=["worker"]
        )
        worker_spool = GaugeMetricFamily(
            "collector_worker_spool_bytes", "Bytes in the worker's disk spool.", labels=["worker"]
        )
        worker_limit = GaugeMetricFamily(
            "collector_worker_spool_limit_bytes",
            "Largest spool the worker's sink may hold (kafka.spool_max_bytes; beyond it records"
            " are dropped); 0 when the sink has no spool.",
            labels=["worker"],
        )
        for index, view in sorted(self.workers.items()):
            worker = str(index)
            up.add_metric([worker], 1 if view.alive and view.responsive else 0)
            snap = view.snapshot
            lag.add_metric([worker], snap.loop_lag_s if snap else 0.0)
            if snap is not None and view.alive:
                active += snap.flows_active
                queue += snap.sink.queue_records
                spool += snap.sink.spool_bytes
                spool_limit += snap.spool_limit_bytes
                worker_spool.add_metric([worker], snap.sink.spool_bytes)
                worker_limit.add_metric([worker], snap.spool_limit_bytes)
        yield up
        yield lag
        yield worker_spool
        yield worker_limit
        yield GaugeMetricFamily("collector_flows_active", "Flows in the flow tables.", value=active)
        yield GaugeMetricFamily(
            "collector_sink_queue_records", "Records in memory awaiting delivery.", value=queue
        )
        yield GaugeMetricFamily("collector_spool_bytes", "Bytes in the disk spools.", value=spool)
        yield GaugeMetricFamily(
            "collector_spool_limit_bytes",
            "Sum of the live workers' spool limits (collector_worker_spool_limit_bytes).",
            value=spool_limit,
        )
        yield GaugeMetricFamily(
            "collector_draining", "1 while draining after SIGTERM.", value=int(self.draining)
        )
        yield GaugeMetricFamily(
            "collector_healthy", "1 when /healthz answers 200.", value=int(self.healthy)
        )

    def _process_families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["process", "worker"]
        cpu = CounterMetricFamily(
            "collector_process_cpu_seconds",
            "User and system CPU time of the supervisor and of each worker slot (a slot's count"
            " carries over its restarts).",
            labels=labels,
        )
        rss = GaugeMetricFamily(
            "collector_process_resident_memory_bytes", "Resident memory.", labels=labels
        )
        fds = GaugeMetricFamily(
            "collector_process_open_fds", "Open file descriptors.", labels=labels
        )
        start = GaugeMetricFamily(
            "collector_process_start_time_seconds",
            "When the process started, in seconds since the Unix epoch.",
            labels=labels,
        )
        processes: list[tuple[list[str], ProcessSample | None, float | None]] = []
        supervisor = self.read_process(os.getpid())
        processes.append(
            (["supervisor", ""], supervisor, supervisor.cpu_seconds if supervisor else None)
        )
        for index, view in sorted(self.workers.items()):
            snap = view.snapshot
            pid = snap.pid if snap is not None and view.alive else None
            sample = self.read_process(pid) if pid is not None else None
            processes.append(
                (["worker", str(index)], sample, self.process_counters.cpu(index, pid, sample))
            )
        for label_values, sample, cpu_seconds in processes:
            if cpu_seconds is not None:
                cpu.add_metric(label_values, cpu_seconds)
            if sample is not None:
                rss.add_metric(label_values, sample.resident_bytes)
                fds.add_metric(label_values, sample.open_fds)
                start.add_metric(label_values, sample.start_time_s)
        yield cpu
        yield rss
        yield fds
        yield start
