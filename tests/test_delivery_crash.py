"""A collector process SIGKILLed under load with a healthy broker: what it had reported written
(acknowledged, or on disk in the spool) is delivered after the restart, and the crash window is
what ``KafkaSink.unwritten_records`` said: with ``kafka.wal`` at most the records not yet handed
to the spool thread, without it everything held only in memory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kafka_fixtures import (
    ROOT,
    KafkaBroker,
    create_topic,
    make_records,
    read_topic,
    unique_topic,
    unused_port,
    wait_until,
)

from collector.config import KafkaConfig, RecordsConfig
from collector.io.exporter_end import (
    END_MARKER,
    ExporterEnd,
    ExporterState,
    decode_end,
    pending_ends,
)
from collector.io.kafka import KafkaSink
from collector.io.kafka.sink import MAX_PARKING_RECORDS, SPILL_SLICE_RECORDS
from collector.io.sink import SinkStatus
from collector.io.spool import Spool
from collector.metrics import Totals, WorkerSnapshot
from collector.records import decode
from tests.service_harness import Collector, tcp

LOADED_COLLECTOR = textwrap.dedent(
    """
    import asyncio, sys
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from collector.config import KafkaConfig, RecordsConfig
    from collector.io.kafka import KafkaSink
    from kafka_fixtures import make_records

    async def main():
        config = KafkaConfig(spool_dir=sys.argv[2], wal=sys.argv[5] == "wal", linger_ms=5)
        sink = KafkaSink([sys.argv[3]], sys.argv[4], config, RecordsConfig())
        await sink.start()
        emitted = 0
        while True:
            sink.submit(make_records(200, "crash/w0/1", start=emitted + 1))
            emitted += 200
            await asyncio.sleep(0.002)
            if emitted % 2000 == 0:
                safe = emitted - sink.unwritten_records
                print("SAFE", safe, emitted, sink.status().delivered, flush=True)

    asyncio.run(main())
    """
)


async def start_loaded_collector(
    spool_dir: Path, bootstrap: str, topic: str, mode: str
) -> asyncio.subprocess.Process:
    """A collector process flooding its sink (``mode``: "wal" or "memory") and reporting progress."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOADED_COLLECTOR,
        str(ROOT),
        str(spool_dir),
        bootstrap,
        topic,
        mode,
        stdout=subprocess.PIPE,
    )


@pytest.mark.kafka
@pytest.mark.parametrize("mode", ["wal", "memory"])
async def test_a_killed_collector_loses_only_its_stated_crash_window(
    kafka_broker: KafkaBroker, tmp_path: Path, mode: str
) -> None:
    topic = unique_topic(f"kill-{mode}")
    spool_dir = tmp_path / "spool"
    child = await start_loaded_collector(spool_dir, kafka_broker.bootstrap, topic, mode)
    assert child.stdout is not None
    safe = emitted = delivered = 0
    try:
        while delivered < 20_000:  # under load, with deliveries flowing
            line = await asyncio.wait_for(child.stdout.readline(), 120)
            assert line.startswith(b"SAFE "), line
            safe, emitted, delivered = map(int, line.split()[1:])
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    window = emitted - safe
    print(f"{mode}: emitted {emitted}, delivered {delivered}, crash window {window} records")
    if mode == "wal":
        assert window <= SPILL_SLICE_RECORDS + MAX_PARKING_RECORDS + 200  # bounded, small
    else:
        assert window <= KafkaConfig().queue_records + 200  # what memory may hold

    after = KafkaSink(
        [kafka_broker.bootstrap], topic, KafkaConfig(spool_dir=str(spool_dir)), RecordsConfig()
    )
    await after.start()
    await wait_until(
        lambda: after.status().spool_bytes == 0 and after.status().queue_records == 0,
        120,
        "the dead collector's spool delivered",
    )
    await after.close()
    messages = await read_topic(kafka_broker.bootstrap, topic, safe)
    seen = {int(dict(m.headers)["sequence"]) for m in messages}
    missing = set(range(1, safe + 1)) - seen
    assert not missing, (
        f"{len(missing)} records reported written were lost, first {sorted(missing)[:5]}"
    )


@pytest.mark.kafka
async def test_the_restarted_worker_tells_consumers_where_the_dead_exporter_ended(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """After a SIGKILL under load, the sink that claims the dead worker's spool slot publishes an
    end marker (kafka.end_markers) with the dead exporter's last sequence, and ``collector tail``
    reports the records that never reached the topic as that exporter's lost tail: every emitted
    sequence is either read back or reported lost, exactly."""
    topic = unique_topic("kill-marker")
    spool_dir = tmp_path / "spool"
    child = await start_loaded_collector(spool_dir, kafka_broker.bootstrap, topic, "memory")
    assert child.stdout is not None
    emitted = delivered = 0
    try:
        while delivered < 10_000:
            line = await asyncio.wait_for(child.stdout.readline(), 120)
            _, emitted, delivered = map(int, line.split()[1:])
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()

    config = KafkaConfig(spool_dir=str(spool_dir), end_markers=True)
    after = KafkaSink([kafka_broker.bootstrap], topic, config, RecordsConfig())
    await after.start()
    end = after.spool.previous_end
    assert end is not None
    assert end.exporter == "crash/w0/1"
    assert end.last_sequence >= emitted  # the state file is written before submit returns
    await wait_until(lambda: after.spool.previous_end is None, 60, "the end marker published")
    await wait_until(
        lambda: after.status().spool_bytes == 0 and after.status().queue_records == 0,
        120,
        "the dead collector's spool delivered",
    )
    await after.close()

    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "collector",
            "tail",
            f"kafka://{kafka_broker.bootstrap}/{topic}",
            "--from-beginning",
            "--format",
            "json",
            "--timeout-s",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "1 end markers" in done.stderr
    row = next(line for line in done.stderr.splitlines() if line.strip().startswith("crash/w0/1"))
    records, first, last, lost = map(int, row.split()[1:5])
    read = {int(json.loads(line)["sequence"]) for line in done.stdout.splitlines()}
    assert (first, last) == (1, max(read))
    assert lost == end.last_sequence - len(read)  # every emitted record: read back or lost
    assert records >= len(read)
    if end.last_sequence > last:  # the dead worker's lost tail, named as such
        tail = f"{last + 1}-{end.last_sequence}" if end.last_sequence > last + 1 else f"{last + 1}"
        assert tail in row.split("missing:")[1]


def test_the_supervisor_counts_only_what_the_dead_worker_held_in_memory_alone() -> None:
    """A worker's last snapshot says how many of its queued records were only in memory (the
    rest were on disk, replayed by the next worker): that many are counted lost when it dies;
    a sink that cannot tell falls back to everything it had queued."""
    totals = Totals()
    kafka = SinkStatus(queue_records=900, unwritten_records=120)
    totals.add(WorkerSnapshot(index=0, pid=101, started=1.0, sink=kafka))
    assert totals.lost_queued == 120
    other = SinkStatus(queue_records=40)  # unwritten_records unknown (-1)
    totals.add(WorkerSnapshot(index=1, pid=102, started=1.0, sink=other))
    assert totals.lost_queued == 160
    clean = SinkStatus(queue_records=5, unwritten_records=5)
    totals.add(WorkerSnapshot(index=2, pid=103, started=1.0, sink=clean, stopping=True))
    assert totals.lost_queued == 160  # a worker that was stopping flushed: nothing lost


@pytest.mark.kafka
async def test_an_end_marker_not_yet_published_survives_the_next_worker_too(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Worker A dies; worker B claims its slot while no broker answers, so A's end marker cannot
    be published, and B stops (cleanly) before one answers; worker C, on the same slot with the
    broker back, must still publish A's end marker: an end marker reaches the topic, however many
    workers pass over the slot before a broker answers."""
    topic = unique_topic("marker-kept")
    await create_topic(kafka_broker.bootstrap, topic, 3)
    slot = tmp_path / "spool" / topic / "w0"
    slot.mkdir(parents=True)
    dead, _ = ExporterState.open(slot)
    dead.note("dead/w0/1", 4242)
    dead.close(clean=False)  # A was killed: its state file says it did not end

    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), end_markers=True, linger_ms=5)
    unreachable = f"127.0.0.1:{unused_port()}"
    second = KafkaSink([unreachable], topic, config, RecordsConfig())
    await second.start()  # degraded: no broker, records go to the spool
    assert second.spool.path == slot
    assert second.spool.previous_end == ExporterEnd("dead/w0/1", 4242)
    second.submit(make_records(300, "second/w0/1"))
    await second.flush(1)
    await second.close()  # clean: B's own exporter ended

    third = KafkaSink([kafka_broker.bootstrap], topic, config, RecordsConfig())
    await third.start()
    try:
        assert third.spool.path == slot
        await wait_until(
            lambda: third.spool.previous_end is None and third.spool.is_empty(),
            60,
            "the spooled records delivered and the end marker published",
        )
    finally:
        await third.close()
    messages = await read_topic(kafka_broker.bootstrap, topic, 301)
    markers = [
        decode_end(m.value)
        for m in messages
        if dict(m.headers).get("content-type") == END_MARKER.encode()
    ]
    assert markers == [ExporterEnd("dead/w0/1", 4242)]
    records = [m for m in messages if dict(m.headers).get("content-type") != END_MARKER.encode()]
    assert sorted(int(dict(m.headers)["sequence"]) for m in records) == list(range(1, 301))
    assert pending_ends(slot) == []  # published: the next worker does not publish it again
    again, previous = ExporterState.open(slot)
    again.close(clean=True)
    assert previous is None


# -- a stop fits its budget ---------------------------------------------------------------------


def test_a_stop_while_the_broker_hangs_fits_the_stop_timeout(
    own_kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """SIGTERM while the broker is frozen (SIGSTOP: connections open, nothing answered): the
    worker's flush and close together end within ``stop_timeout_s`` (the supervisor never SIGKILLs
    it mid-write), the service exits 0, and every flow's packets are in the spool."""
    broker = own_kafka_broker
    pid = int((Path(dict(broker.env)["KAFKA_DATA_DIR"]) / "kafka.pid").read_text())
    topic = unique_topic("stop-budget")
    spool_dir = tmp_path / "spool"
    env = {
        "COLLECTOR_KAFKA_SPOOL_DIR": str(spool_dir),
        "COLLECTOR_KAFKA_FLUSH_TIMEOUT_S": "2",
        "COLLECTOR_STOP_TIMEOUT_S": "4",
        "COLLECTOR_KAFKA_LINGER_MS": "5",
    }
    with Collector(tmp_path, sink=f"kafka://{broker.bootstrap}/{topic}", env=env) as c:
        sent = c.send(
            [tcp(21, "10.5.0.1", f"10.6.{i % 200}.1", 1024 + i % 500, 443) for i in range(400)]
        )
        c.wait_received(sent)
        os.kill(pid, signal.SIGSTOP)  # flows end at the stop: their records meet a frozen broker
        try:
            code = c.stop()
        finally:
            os.kill(pid, signal.SIGCONT)
        logs = c.logs()
    assert "did not stop; killing" not in logs, logs[-3000:]
    assert code == 0, logs[-3000:]
    packets = 0
    for lock in spool_dir.rglob("LOCK"):
        spool = Spool(lock.parent, max_bytes=1 << 30, segment_bytes=1 << 24)
        spool.open()
        while (chunk := spool.read(10_000)) is not None:
            packets += sum(decode(v).packets for v in chunk.values)
        spool.close()
    assert packets == sent  # every record of the stop: spooled, nothing lost to a kill
