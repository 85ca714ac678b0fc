"""``collector tail``: sequence bookkeeping, decoding, and the command against the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from flow_samples import make_record
from hypothesis import given
from hypothesis import strategies as st
from kafka_fixtures import KafkaBroker, create_topic, make_records, unique_topic

from collector.config import KafkaConfig, RecordsConfig
from collector.encoders import CONTENT_TYPES
from collector.encoders.flowlog import FlowLogFormat
from collector.io.kafka import KafkaSink
from collector.records import FlowRecord, encode
from collector.tail import SequenceTracker, TailStats, decode_value, table_header, table_row

ROOT = Path(__file__).resolve().parent.parent
GUARD_S = 180.0  # only keeps a broken tail from hanging the suite; nothing asserts on time
A = "collector-a/w0/1764090000"
B = "collector-b/w3/1764090000"


# -- without a broker ----------------------------------------------------------------------------


def test_sequence_tracker_counts_gaps_and_duplicates() -> None:
    tracker = SequenceTracker()
    for sequence in (5, 1, 2, 9, 2, 3, 7, 10, 9, 6):
        tracker.add(sequence)
    assert (tracker.first, tracker.last) == (1, 10)
    assert tracker.records == 10
    assert tracker.duplicates == 2
    assert tracker.lost == 2  # 4 and 8
    assert tracker.gaps() == [(4, 4), (8, 8)]
    assert len(tracker.starts) == 3  # memory follows the gaps, not the records


def test_the_lost_tail_of_an_end_marker_is_always_shown_among_the_gaps() -> None:
    """Records of a killed worker can miss here and there (its partitions were delivered unevenly)
    as well as at the end: the summary row names the tail up to the end marker's last sequence
    whatever comes before it, and says how many ranges it leaves out."""
    stats = TailStats()
    for sequence in (1, 3, 5, 7, 9, 11, 12):
        stats.track("w/0/1", sequence)
    stats.mark_end("w/0/1", 20)
    tracker = stats.exporters["w/0/1"]
    assert tracker.gap_count == 6
    assert tracker.gaps() == [(2, 2), (4, 4), (13, 20)]
    assert tracker.gaps(limit=10) == [(2, 2), (4, 4), (6, 6), (8, 8), (10, 10), (13, 20)]
    assert tracker.gaps(limit=1) == [(13, 20)]
    assert "missing: 2, 4, 13-20 (3 more ranges)" in stats.summary()
    assert tracker.lost == 5 + 8


@given(st.lists(st.integers(1, 200), max_size=300), st.randoms(use_true_random=False))
def test_sequence_tracker_matches_a_set(sequences: list[int], rng: random.Random) -> None:
    rng.shuffle(sequences)
    tracker = SequenceTracker()
    seen: set[int] = set()
    for sequence in sequences:
        assert tracker.add(sequence) == (sequence not in seen)
        seen.add(sequence)
    assert tracker.duplicates == len(sequences) - len(seen)
    if seen:
        assert tracker.lost == max(seen) - min(seen) + 1 - len(seen)
        missing = sorted(set(range(min(seen), max(seen) + 1)) - seen)
        flat = [s for a, b in tracker.gaps(limit=10**6) for s in range(a, b + 1)]
        assert flat == missing


def test_decode_by_content_type() -> None:
    record = make_record()
    assert decode_value(encode(record), CONTENT_TYPES["json"]) == record
    assert decode_value(encode(record, "msgpack"), CONTENT_TYPES["msgpack"]) == record
    assert decode_value(encode(record), None) == record
    assert decode_value(encode(record, "msgpack"), None) == record
    line = FlowLogFormat.parse(None).encode(record)
    assert decode_value(line, CONTENT_TYPES["vpc-flow-log"]) == line.decode()
    with pytest.raises(msgspec.DecodeError):
        decode_value(b"{not json", CONTENT_TYPES["json"])


def test_table_columns_line_up() -> None:
    header = table_header()
    rows = [
        table_row(make_record()),
        table_row(make_record(sequence=123456, protocol=17, src_port=53, dst_port=40000)),
        table_row(
            make_record(protocol=1, src_port=0, dst_port=0, icmp_type=8, icmp_code=0, tcp_flags=0)
        ),
    ]
    for title in ("exporter", "vni/session", "dir", "proto", "src:port -> dst:port", "flags"):
        column = header.index(title)
        for row in rows:
            assert row[column - 1] == " " and row[column] != " ", (title, row)
    assert "SYN" not in rows[0] and "ACK|PSH" in rows[0]
    assert "udp" in rows[1] and "172.31.16.139:53 -> 172.31.16.21:40000" in rows[1]
    assert "icmp" in rows[2] and "type 8/0" in rows[2]
    assert "172.31.16.139 -> 172.31.16.21 " in rows[2]  # no ports for ICMP


# -- against the broker --------------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, str]]) -> None:
    await create_topic(bootstrap, topic, partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for index, (value, content_type) in enumerate(messages):
            await producer.send_and_wait(
                topic,
                value,
                key=str(index).encode(),
                headers=[("content-type", content_type.encode())],
            )
    finally:
        await producer.stop()


def lossy_stream() -> tuple[list[FlowRecord], list[tuple[bytes, str]]]:
    """Exporter A lost sequence 4 and sent 7 twice (JSON); exporter B is complete (msgpack);
    one message is a flow-log line."""
    a = [r for r in make_records(10, A) if r.sequence != 4]
    b = make_records(5, B, start=1)
    records = [*a, a[5], *b]  # a[5] is sequence 7
    messages = [(encode(r), CONTENT_TYPES["json"]) for r in [*a, a[5]]]
    messages += [(encode(r, "msgpack"), CONTENT_TYPES["msgpack"]) for r in b]
    line = FlowLogFormat.parse(None).encode(b[0])
    messages.append((line, CONTENT_TYPES["vpc-flow-log"]))
    return records, messages


def tail_command(bootstrap: str, topic: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "collector", "tail", f"kafka://{bootstrap}/{topic}", *args]


def run_tail(bootstrap: str, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`collector tail` to its end, its output captured (GUARD_S only stops a hung one)."""
    return subprocess.run(
        tail_command(bootstrap, topic, *args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=GUARD_S,
        check=False,
    )


@pytest.mark.kafka
def test_tail_prints_json_and_reports_loss_and_duplicates(kafka_broker: KafkaBroker) -> None:
    topic = unique_topic("tail-json")
    records, messages = lossy_stream()
    asyncio.run(produce(kafka_broker.bootstrap, topic, messages))
    done = run_tail(
        kafka_broker.bootstrap,
        topic,
        "--from-beginning",
        "--format",
        "json",
        "--max-records",
        str(len(messages)),
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(messages)
    flow_log_lines = [line for line in lines if not line.startswith("{")]
    assert flow_log_lines == [messages[-1][0].decode()]
    printed = [msgspec.json.decode(line, type=FlowRecord) for line in lines if line.startswith("{")]
    key = lambda r: (r.exporter, r.sequence)  # noqa: E731
    assert sorted(printed, key=key) == sorted(records, key=key)
    summary = done.stderr
    assert f"{len(messages)} messages, 2 exporters, 1 flow-log lines" in summary
    row_a = next(line for line in summary.splitlines() if line.strip().startswith(A))
    assert row_a.split()[1:6] == ["10", "1", "10", "1", "1"]  # records first last lost dups
    assert "missing: 4" in row_a
    row_b = next(line for line in summary.splitlines() if line.strip().startswith(B))
    assert row_b.split()[1:6] == ["5", "1", "5", "0", "0"]
    assert "total lost 1, duplicates 1" in summary


@pytest.mark.kafka
def test_tail_flow_log_format_with_config_and_idle_timeout(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    topic = unique_topic("tail-flowlog")
    records = make_records(4, A)
    asyncio.run(
        produce(
            kafka_broker.bootstrap, topic, [(encode(r), CONTENT_TYPES["json"]) for r in records]
        )
    )
    fmt = "${version} ${interface-id} ${srcaddr} ${dstaddr} ${tcp-flags} ${flow-direction}"
    config = tmp_path / "collector.toml"
    config.write_text(f'[records]\nvpc_flow_log_format = "{fmt}"\n')
    done = run_tail(
        kafka_broker.bootstrap,
        topic,
        "--from-beginning",
        "--format",
        "vpc-flow-log",
        "--config",
        str(config),
        "--timeout-s",
        "3",
    )
    assert done.returncode == 0, done.stderr
    expected = FlowLogFormat.parse(fmt)
    assert sorted(done.stdout.splitlines()) == sorted(expected.encode(r).decode() for r in records)
    assert "lost 0, duplicates 0" in done.stderr


@pytest.mark.kafka
def test_tail_with_sasl_scram_from_the_config(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    topic = unique_topic("tail-sasl")
    records = make_records(3, B)
    asyncio.run(
        produce(
            kafka_broker.bootstrap, topic, [(encode(r), CONTENT_TYPES["json"]) for r in records]
        )
    )
    config = tmp_path / "collector.toml"
    config.write_text(
        "[kafka]\n"
        'security_protocol = "SASL_PLAINTEXT"\n'
        'sasl_mechanism = "SCRAM-SHA-256"\n'
        f'sasl_username = "{kafka_broker.sasl_user}"\n'
        f'sasl_password = "{kafka_broker.sasl_password}"\n'
    )
    done = run_tail(
        kafka_broker.sasl_bootstrap,
        topic,
        "--from-beginning",
        "--format",
        "json",
        "--max-records",
        "3",
        "--config",
        str(config),
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3


def read_lines(proc: subprocess.Popen[bytes], count: int) -> list[str]:
    """``count`` lines of the child's stdout (a guard deadline keeps a hang from blocking CI)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + GUARD_S
    while data.count(b"\n") < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    return data.decode().splitlines()


@pytest.mark.kafka
def test_tail_exits_cleanly_on_sigint_with_the_loss_summary(kafka_broker: KafkaBroker) -> None:
    topic = unique_topic("tail-sigint")
    _, messages = lossy_stream()
    asyncio.run(produce(kafka_broker.bootstrap, topic, messages))
    proc = subprocess.Popen(
        tail_command(kafka_broker.bootstrap, topic, "--from-beginning"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        lines = read_lines(proc, 1 + len(messages))  # the table header, then every message
        assert len(lines) == 1 + len(messages), lines
        assert lines[0].startswith("time")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=GUARD_S)
        stderr = err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    assert "total lost 1, duplicates 1" in stderr
    assert json.dumps(A)[1:-1] in stderr


@pytest.mark.kafka
def test_flow_log_lines_from_the_sink_carry_exporter_and_sequence_headers(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    """A vpc-flow-log value has neither exporter nor sequence: the sink's headers do, and tail
    reports the gap (sequence 5 never emitted) and the repeat (sequence 9 submitted twice) from
    them alone."""
    topic = unique_topic("tail-headers")
    exporter = "headers/w0/1"
    records = [r for r in make_records(12, exporter) if r.sequence != 5]
    records.append(records[7])  # sequence 9 again

    async def publish() -> None:
        config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5)
        sink = KafkaSink(
            [kafka_broker.bootstrap], topic, config, RecordsConfig(format="vpc-flow-log")
        )
        await sink.start()
        sink.submit(records)
        await sink.flush(30)
        await sink.close()
        assert sink.status().delivered == len(records)

    asyncio.run(publish())
    done = run_tail(
        kafka_broker.bootstrap,
        topic,
        "--from-beginning",
        "--max-records",
        str(len(records)),
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 + len(records)  # table header, lines as they are
    summary = done.stderr
    assert "flow-log lines (no sequence)" not in summary
    row = next(line for line in summary.splitlines() if line.strip().startswith(exporter))
    assert row.split()[1:6] == [str(len(records)), "1", "12", "1", "1"]
    assert "missing: 5" in row
