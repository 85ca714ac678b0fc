"""Aggregation of worker snapshots into /metrics: sums over live and exited workers, counters that
never go backwards (the kernel's 32-bit drop count wrapping, worker restarts), what a crashed worker
held counted as lost, and process metrics checked against ps(1) and a real collector."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.io.sink import SinkStatus
from collector.metrics import (
    KERNEL_DROPS_WRAP,
    Aggregate,
    WorkerSnapshot,
    WorkerView,
)
from collector.proc import ProcessSample, read_process
from collector.wire.drops import DROP_COUNT, Drop
from tests.service_harness import Collector, udp, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(aggregate: Aggregate) -> Samples:
    """The /metrics body parsed by prometheus_client's own exposition parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(aggregate.render().decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def snap(index: int, pid: int, started: float = 1.0, **fields: object) -> WorkerSnapshot:
    return WorkerSnapshot(index=index, pid=pid, started=started, **fields)  # type: ignore[arg-type]


def live(aggregate: Aggregate, snapshot: WorkerSnapshot) -> None:
    """What the supervisor does with a snapshot from a running worker."""
    view = aggregate.workers.setdefault(snapshot.index, WorkerView(index=snapshot.index))
    view.alive = view.responsive = True
    view.snapshot = snapshot


def exit_worker(aggregate: Aggregate, index: int) -> None:
    """What the supervisor does when a worker exits: fold its last snapshot in, count a restart."""
    view = aggregate.workers[index]
    view.alive = view.responsive = False
    assert view.snapshot is not None
    aggregate.retired.add(view.snapshot)
    view.snapshot = None
    view.restarts += 1


def no_processes(pid: int) -> ProcessSample | None:
    return None


# ---- sums ----------------------------------------------------------------------------------------
def test_counters_sum_live_and_exited_workers() -> None:
    aggregate = Aggregate(no_processes)
    drops = [0] * DROP_COUNT
    drops[Drop.VXLAN_FLAGS] = 3
    drops[Drop.FILTER_REJECT] = 5
    live(
        aggregate,
        snap(
            0,
            100,
            datagrams=50,
            rx_bytes=5000,
            drops=drops,
            records={"tcp_fin": 4},
            sink=SinkStatus(
                delivered=4,
                failed=1,
                dropped=2,
                retried=7,
                failures=3,
                dead_lettered=6,
                quarantined_segments=1,
            ),
        ),
    )
    live(
        aggregate,
        snap(
            1,
            101,
            datagrams=20,
            records={"tcp_fin": 1, "shutdown": 2},
            sink=SinkStatus(dead_lettered=3, quarantined_segments=2),
        ),
    )
    exit_worker(aggregate, 1)
    live(aggregate, snap(1, 102, started=2.0, datagrams=6, records={"shutdown": 1}))
    samples = scrape(aggregate)
    assert value(samples, "collector_datagrams_received_total") == 76
    assert value(samples, "collector_received_bytes_total") == 5000
    assert value(samples, "collector_packets_dropped_total", reason="vxlan_flags") == 3
    assert value(samples, "collector_filter_packets_total", action="reject") == 5
    assert value(samples, "collector_filter_packets_total", action="accept") == 76 - 8
    assert value(samples, "collector_records_emitted_total", end_reason="tcp_fin") == 5
    assert value(samples, "collector_records_emitted_total", end_reason="shutdown") == 3
    assert value(samples, "collector_records_emitted_total", end_reason="evicted") == 0
    assert value(samples, "collector_records_delivered_total") == 4
    assert value(samples, "collector_sink_records_failed_total") == 1
    assert value(samples, "collector_sink_records_dropped_total") == 2
    assert value(samples, "collector_sink_records_retried_total") == 7
    assert value(samples, "collector_sink_failures_total") == 3
    assert value(samples, "collector_sink_records_dead_lettered_total") == 9
    assert value(samples, "collector_spool_quarantined_segments_total") == 3
    assert value(samples, "collector_worker_restarts_total") == 1


def test_gauges_cover_live_workers_only_and_spool_limits_per_worker() -> None:
    aggregate = Aggregate(no_processes)
    live(
        aggregate,
        snap(
            0,
            100,
            flows_active=10,
            spool_limit_bytes=1000,
            sink=SinkStatus(queue_records=3, spool_bytes=400),
        ),
    )
    live(aggregate, snap(1, 101, flows_active=7, spool_limit_bytes=1000))
    aggregate.workers[1].alive = False  # exited, its snapshot not folded in yet
    samples = scrape(aggregate)
    assert value(samples, "collector_flows_active") == 10
    assert value(samples, "collector_sink_queue_records") == 3
    assert value(samples, "collector_spool_bytes") == 400
    assert value(samples, "collector_spool_limit_bytes") == 1000
    assert value(samples, "collector_worker_spool_bytes", worker="0") == 400
    assert value(samples, "collector_worker_spool_limit_bytes", worker="0") == 1000
    assert ("collector_worker_spool_bytes", (("worker", "1"),)) not in samples
    assert value(samples, "collector_worker_up", worker="0") == 1
    assert value(samples, "collector_worker_up", worker="1") == 0


# ---- counters that never go backwards ------------------------------------------------------------
def test_kernel_drops_keep_rising_across_the_32_bit_wrap() -> None:
    aggregate = Aggregate(no_processes)
    raw = [100, KERNEL_DROPS_WRAP - 10, 5, 20, KERNEL_DROPS_WRAP - 1, 3]
    exported = []
    for reading in raw:
        live(aggregate, snap(0, 100, kernel_drops=reading))
        exported.append(value(scrape(aggregate), "collector_kernel_drops_total"))
    assert exported == [
        100,
        KERNEL_DROPS_WRAP - 10,
        KERNEL_DROPS_WRAP + 5,
        KERNEL_DROPS_WRAP + 20,
        2 * KERNEL_DROPS_WRAP - 1,
        2 * KERNEL_DROPS_WRAP + 3,
    ]


def test_kernel_drops_and_counters_keep_rising_across_worker_restarts() -> None:
    aggregate = Aggregate(no_processes)
    exported: list[tuple[float, float]] = []

    def record() -> None:
        samples = scrape(aggregate)
        exported.append(
            (
                value(samples, "collector_kernel_drops_total"),
                value(samples, "collector_datagrams_received_total"),
            )
        )

    live(aggregate, snap(0, 100, started=1.0, kernel_drops=KERNEL_DROPS_WRAP - 5, datagrams=90))
    record()
    # the socket wraps after the last scrape; the crashed worker's last snapshot shows it
    live(aggregate, snap(0, 100, started=1.0, kernel_drops=2, datagrams=95))
    exit_worker(aggregate, 0)
    record()
    live(aggregate, snap(0, 200, started=9.0, kernel_drops=0, datagrams=0))  # a new socket
    record()
    live(aggregate, snap(0, 200, started=9.0, kernel_drops=40, datagrams=10))
    record()
    assert exported == [
        (KERNEL_DROPS_WRAP - 5, 90),
        (KERNEL_DROPS_WRAP + 2, 95),
        (KERNEL_DROPS_WRAP + 2, 95),
        (KERNEL_DROPS_WRAP + 42, 105),
    ]


def test_worker_cpu_seconds_carry_over_restarts() -> None:
    cpu = {100: 5.0}

    def reader(pid: int) -> ProcessSample | None:
        if pid not in cpu:
            return None
        return ProcessSample(cpu[pid], 4096, 9, 1000.0 + pid)

    aggregate = Aggregate(reader)
    exported = []

    def record() -> None:
        samples = scrape(aggregate)
        exported.append(value(samples, "collector_process_cpu_seconds_total", **worker0))

    worker0 = {"process": "worker", "worker": "0"}
    live(aggregate, snap(0, 100))
    record()
    cpu[100] = 7.5
    record()
    del cpu[100]  # the process is gone before the supervisor noticed
    record()
    exit_worker(aggregate, 0)
    record()
    cpu[200] = 1.25
    live(aggregate, snap(0, 200, started=9.0))
    record()
    samples = scrape(aggregate)
    assert exported == [5.0, 7.5, 7.5, 7.5, 8.75]
    assert value(samples, "collector_process_start_time_seconds", **worker0) == 1200.0
    assert value(samples, "collector_process_open_fds", **worker0) == 9
    assert value(samples, "collector_process_resident_memory_bytes", **worker0) == 4096


# ---- loss ----------------------------------------------------------------------------------------
def test_what_a_crashed_worker_held_is_counted_lost_and_a_clean_stop_loses_nothing() -> None:
    aggregate = Aggregate(no_processes)
    live(aggregate, snap(0, 100, flows_active=12, sink=SinkStatus(queue_records=30)))
    live(aggregate, snap(1, 101, flows_active=0, stopping=True))
    exit_worker(aggregate, 0)
    exit_worker(aggregate, 1)
    samples = scrape(aggregate)
    assert value(samples, "collector_worker_exit_lost_total", kind="flows") == 12
    assert value(samples, "collector_worker_exit_lost_total", kind="records") == 30


def test_help_texts_call_a_loss_a_loss() -> None:
    helps = {
        f.name: f.documentation
        for f in text_string_to_metric_families(Aggregate(no_processes).render().decode())
    }
    assert "lost" in helps["collector_sink_records_failed"].lower()
    assert "rejected" in helps["collector_sink_records_failed"]
    dropped = helps["collector_sink_records_dropped"]
    for cause in ("spool was full", "no spool was open", "writing the spool failed"):
        assert cause in dropped


# ---- process metrics -----------------------------------------------------------------------------
@pytest.fixture
def busy_child(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """A real process, whose executable's name has a space and a parenthesis (proc(5) warns the
    command name may), that burns some CPU, opens files and then waits."""
    exe = tmp_path / "py) (x"
    shutil.copy(sys.executable, exe)
    script = (
        "import sys, time\n"
        "files = [open(sys.argv[1]) for _ in range(5)]\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    before = time.time()
    with subprocess.Popen(
        [str(exe), "-c", script, str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            yield child, before
        finally:
            child.kill()


def test_read_process_agrees_with_ps(busy_child: tuple[subprocess.Popen[bytes], float]) -> None:
    child, before = busy_child
    sample = read_process(child.pid)
    assert sample is not None
    ps = subprocess.run(
        ["ps", "-o", "cputimes=,rss=,comm=", "-p", str(child.pid)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split(maxsplit=2)
    assert ps[2].strip() == "py) (x"
    assert int(ps[0]) == int(sample.cpu_seconds)  # ps truncates to whole seconds
    assert sample.cpu_seconds >= 0.3
    assert int(ps[1]) * 1024 == sample.resident_bytes
    assert sample.open_fds == len(os.listdir(f"/proc/{child.pid}/fd"))
    assert sample.open_fds >= 5 + 3
    # the kernel counts start time in clock ticks after a boot time given in whole seconds
    assert before - 1 <= sample.start_time_s <= time.time() + 1


def test_read_process_of_a_process_that_is_gone_is_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert read_process(child.pid) is None


def test_live_collector_exports_process_metrics_and_counts_what_a_killed_worker_held(
    tmp_path: Path,
) -> None:
    config = "[flows]\nactive_timeout_s = 600\ninactive_timeout_s = 600\n"
    with Collector(tmp_path, config=config, workers=2) as c:
        flows = 64
        c.send(udp(7, "10.0.0.5", "10.0.1.9", 20000 + i, 53, 10) for i in range(flows))
        c.wait_received(flows)

        def worker_flows() -> dict[int, int] | None:
            _, body = c.health()
            held = {w["index"]: w.get("flows_active", 0) for w in body["workers"]}
            return held if sum(held.values()) == flows else None

        held = wait_for(worker_flows, "every flow in a worker's table")
        victim = max(held, key=held.__getitem__)  # one sender socket: one worker gets them all
        _, body = c.health()
        pids = {w["index"]: w["pid"] for w in body["workers"]}
        metrics = c.metrics()
        supervisor = 'collector_process_start_time_seconds{process="supervisor",worker=""}'
        for index in (0, 1):
            labels = f'{{process="worker",worker="{index}"}}'
            assert metrics[f"collector_process_start_time_seconds{labels}"] >= metrics[supervisor]
            assert metrics[f"collector_process_resident_memory_bytes{labels}"] > 0
            assert metrics[f"collector_process_open_fds{labels}"] >= 3
        cpu_label = f'collector_process_cpu_seconds_total{{process="worker",worker="{victim}"}}'
        cpu_before = metrics[cpu_label]
        assert cpu_before > 0

        os.kill(pids[victim], signal.SIGKILL)
        wait_for(lambda: c.metric("collector_worker_restarts_total") == 1, "a restart")
        c.wait_healthy()
        metrics = c.metrics()
        assert metrics['collector_worker_exit_lost_total{kind="flows"}'] == held[victim]
        assert metrics['collector_worker_exit_lost_total{kind="records"}'] == 0
        assert metrics[cpu_label] >= cpu_before
        assert metrics["collector_datagrams_received_total"] == flows
        _, body = c.health()
        assert {w["index"]: w["pid"] for w in body["workers"]}[victim] != pids[victim]
        assert c.stop() == 0
    assert sum(r["packets"] for r in c.records()) == flows - held[victim]


def test_every_exported_family_is_in_the_readme_metrics_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `collector_"))
    for family in text_string_to_metric_families(Aggregate(no_processes).render().decode()):
        if family.name.endswith("_created"):
            continue  # prometheus_client's creation timestamp of the histogram, not ours
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}" in table, f"{name} is exported but not documented in README.md"
