"""The Kafka sink against a real Apache Kafka broker (the spool alone: test_spool.py; the delivery
core without a broker: test_kafka_delivery.py).

No mocks: the broker is the one deploy/kafka/kafkactl runs (session fixture), outages are real
broker stops, crashes are real SIGKILLs. Waits poll with deadlines; no assertion is about time.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kafka_fixtures import (
    ROOT,
    KafkaBroker,
    describe_topic,
    make_records,
    read_topic,
    unique_topic,
    unused_port,
    wait_until,
)

from collector.config import KafkaConfig, RecordsConfig, build_config
from collector.errors import ConfigError, SinkError
from collector.io.kafka import KafkaSink
from collector.io.sinks import make_sink
from collector.records import decode

JSON = RecordsConfig()


def kafka_config(tmp_path: Path, **overrides: Any) -> KafkaConfig:
    settings: dict[str, Any] = {
        "spool_dir": str(tmp_path / "spool"),
        "connect_timeout_s": 15.0,
        "linger_ms": 5,
    }
    settings.update(overrides)
    return KafkaConfig(**settings)


def check_complete(messages: list[Any], exporter: str, count: int) -> Counter[int]:
    """Every sequence 1..count arrived; a repeat is only ever a byte-identical copy (same exporter
    and sequence), which consumers drop. Returns how often each sequence arrived."""
    seen: Counter[int] = Counter()
    first: dict[int, bytes] = {}
    for message in messages:
        record = decode(message.value)
        assert record.exporter == exporter
        assert message.key == record.flow_id.encode()
        assert dict(message.headers)["content-type"] == b"application/json"
        seen[record.sequence] += 1
        if first.setdefault(record.sequence, message.value) != message.value:
            raise AssertionError(f"sequence {record.sequence} arrived with different content")
    missing = sorted(set(range(1, count + 1)) - set(seen))
    assert not missing, f"{len(missing)} records lost, first {missing[:10]}"
    assert max(seen) == count
    return seen


# -- settings that cannot work fail at start, quickly and clearly -------------------------------


@pytest.mark.parametrize(
    ("overrides", "key", "text"),
    [
        ({"compression": "snappy"}, "kafka.compression", "unknown compression 'snappy'"),
        ({"acks": "1"}, "kafka.acks", "idempotent producer needs acks"),
        ({"sasl_mechanism": "PLAIN"}, "kafka.security_protocol", "needs SASL_SSL or SASL_PLAIN"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256"},
            "kafka.sasl_username",
            "needs a user",
        ),
        (
            {"security_protocol": "SSL", "tls_ca_file": "/nonexistent/ca.pem"},
            "kafka.tls_ca_file",
            "cannot read /nonexistent/ca.pem",
        ),
        ({"tls_ca_file": "/etc/hostname"}, "kafka.tls_ca_file", "security_protocol is PLAINTEXT"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"},
            "kafka.sasl_mechanism",
            "OAUTHBEARER without a token provider is not supported",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "AWS_MSK_IAM"},
            "kafka.security_protocol",
            "MSK IAM authentication needs SASL_SSL",
        ),
    ],
)
async def test_bad_settings_are_config_errors(
    tmp_path: Path, overrides: dict[str, Any], key: str, text: str
) -> None:
    sink = KafkaSink(["127.0.0.1:1"], "t", kafka_config(tmp_path, **overrides), JSON)
    with pytest.raises(ConfigError, match=text) as caught:
        await asyncio.wait_for(sink.start(), 10)
    assert caught.value.key == key


def test_unknown_compression_in_a_config_file_names_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"kafka": {"compression": "brotli"}})
    assert caught.value.key == "kafka.compression"


async def test_msk_iam_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    config = kafka_config(
        tmp_path, security_protocol="SASL_SSL", sasl_mechanism="AWS_MSK_IAM", aws_region="eu-west-1"
    )
    sink = KafkaSink(["127.0.0.1:1"], "t", config, JSON)
    try:
        import aws_msk_iam_sasl_signer  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install 'vpc-mirror-collector\[msk-iam\]'"):
            await sink.start()
    else:  # the extra is installed: the provider is built and the broker is what fails
        with pytest.raises(SinkError):
            await sink.start()


def test_the_password_never_shows(tmp_path: Path) -> None:
    config = kafka_config(
        tmp_path,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="collector",
        sasl_password="s3cret-value",
    )
    for text in (
        repr(config),
        str(config),
        repr(build_config({"kafka": {"sasl_password": "s3cret-value"}})),
    ):
        assert "s3cret-value" not in text
    sink = KafkaSink(["127.0.0.1:9092"], "t", config, JSON)
    assert "s3cret-value" not in repr(sink)


async def test_unreachable_broker_is_a_clear_error_when_required(tmp_path: Path) -> None:
    port = unused_port()
    config = kafka_config(tmp_path, require_broker_at_start=True, connect_timeout_s=3.0)
    sink = KafkaSink([f"127.0.0.1:{port}"], "t", config, JSON)
    with pytest.raises(SinkError, match=f"cannot reach Kafka.*127.0.0.1:{port}") as caught:
        await asyncio.wait_for(sink.start(), 30)
    assert caught.value.retriable
    # the spool lock was released: a second attempt gets the same answer, not "in use"
    with pytest.raises(SinkError, match="cannot reach Kafka"):
        await asyncio.wait_for(sink.start(), 30)


async def test_unreachable_broker_starts_degraded_and_spools(tmp_path: Path) -> None:
    sink = KafkaSink([f"127.0.0.1:{unused_port()}"], "t", kafka_config(tmp_path), JSON)
    await asyncio.wait_for(sink.start(), 30)
    status = sink.status()
    assert status.state == "degraded"
    assert "cannot reach Kafka" in status.detail
    sink.submit(make_records(1000, "degraded/w0/1"))
    await wait_until(lambda: sink.status().queue_records == 0, 30, "records spooled")
    status = sink.status()
    assert (status.state, status.delivered, status.dropped) == ("degraded", 0, 0)
    assert status.spool_bytes > 1000 * 100
    await sink.flush(1)
    await sink.close()


async def test_full_spool_drops_and_counts(tmp_path: Path) -> None:
    config = kafka_config(tmp_path, spool_max_bytes=64 * 1024, spool_segment_bytes=16 * 1024)
    sink = KafkaSink([f"127.0.0.1:{unused_port()}"], "t", config, JSON)
    await asyncio.wait_for(sink.start(), 30)
    sink.submit(make_records(5000, "full/w0/1"))
    await wait_until(lambda: sink.status().queue_records == 0, 30, "records spooled or dropped")
    status = sink.status()
    assert status.state == "failed"
    assert "spool full" in status.detail
    assert 0 < status.dropped < 5000
    assert status.spool_bytes <= 64 * 1024
    await sink.close()


# -- against the broker ---------------------------------------------------------------------------


@pytest.mark.kafka
async def test_records_arrive_keyed_and_in_sequence(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    topic = unique_topic("e2e")
    config = kafka_config(tmp_path, topic_partitions=4)
    sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
    await sink.start()
    assert sink.status().state == "ok"
    # 300 flows of 100 records each (a long connection is emitted again at every active
    # timeout): with only one record per key, "one key, one partition" could not fail
    records = make_records(30_000, "e2e/w0/1")
    flow_ids = [r.flow_id for r in records[:300]]
    records = [msgspec.structs.replace(r, flow_id=flow_ids[i % 300]) for i, r in enumerate(records)]
    for i in range(0, len(records), 700):
        sink.submit(records[i : i + 700])
        await asyncio.sleep(0)
    await sink.flush(60)
    status = sink.status()
    assert (status.delivered, status.queue_records, status.dropped, status.failed) == (
        30_000,
        0,
        0,
        0,
    )
    assert status.latency_observations
    assert all(0 <= x < 60 for x in status.latency_observations)
    await sink.close()
    description = await describe_topic(kafka_broker.bootstrap, topic)
    assert len(description["partitions"]) == 4
    messages = await read_topic(kafka_broker.bootstrap, topic, 30_000)
    seen = check_complete(messages, "e2e/w0/1", 30_000)
    assert set(seen.values()) == {1}
    # one flow, one partition: the key decides, and a partition keeps each flow's records in order
    partition_of: dict[bytes, int] = {}
    sequences: dict[bytes, list[int]] = {}
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        assert partition_of.setdefault(message.key, message.partition) == message.partition
        sequences.setdefault(message.key, []).append(decode(message.value).sequence)
    assert sorted(sequences) == sorted(f.encode() for f in flow_ids)
    assert {len(s) for s in sequences.values()} == {100}
    assert all(s == sorted(s) for s in sequences.values())
    assert len({m.partition for m in messages}) == 4


@pytest.mark.kafka
async def test_mirrored_packets_end_to_end(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    """VXLAN datagrams built with scapy -> the collector's pipeline -> Kafka -> read back: every
    packet is accounted for in the records on the topic."""
    from pipeline_support import T0, make_pipeline, tcp, udp

    # sessions with addresses, so the two directions of each TCP connection are told apart
    sessions = [
        {"vni": 7001, "name": "web", "addresses": ["172.31.16.21"]},
        {"vni": 7002, "name": "clients", "addresses": ["10.1.0.0/16"]},
    ]
    pipeline = make_pipeline({"sessions": sessions}, exporter="packets/w0/1")
    datagrams = []
    for i in range(200):
        client = f"10.1.{i // 250}.{i % 250 + 1}"
        datagrams.append(tcp(7001, client, "172.31.16.21", 20000 + i, 443, flags="S"))
        datagrams.append(tcp(7001, "172.31.16.21", client, 443, 20000 + i, flags="SA"))
        datagrams.append(tcp(7001, client, "172.31.16.21", 20000 + i, 443, flags="A", payload=100))
        datagrams.append(udp(7002, client, "172.31.0.2", 30000 + i, 53, payload=40))
    for n, data in enumerate(datagrams):
        pipeline.feed(data, len(data), T0 + n * 0.001, "10.0.0.5")
    records = pipeline.flush()
    assert sum(r.packets for r in records) == len(datagrams)

    topic = unique_topic("packets")
    sink = KafkaSink([kafka_broker.bootstrap], topic, kafka_config(tmp_path), JSON)
    await sink.start()
    sink.submit(records)
    await sink.flush(60)
    await sink.close()
    messages = await read_topic(kafka_broker.bootstrap, topic, len(records))
    check_complete(messages, "packets/w0/1", len(records))
    assert sum(decode(m.value).packets for m in messages) == len(datagrams)
    # both directions of one connection share a flow_id, so a key and a partition
    by_key: dict[bytes, set[tuple[str, int]]] = {}
    for message in messages:
        record = decode(message.value)
        by_key.setdefault(message.key, set()).add((record.direction, record.protocol))
        assert message.key == record.flow_id.encode()
    partitions: dict[bytes, set[int]] = {}
    for message in messages:
        partitions.setdefault(message.key, set()).add(message.partition)
    assert {len(p) for p in partitions.values()} == {1}
    connections = [d for d in by_key.values() if (6 in {p for _, p in d})]
    assert len(connections) == 200
    assert all(d == {("ingress", 6), ("egress", 6)} for d in connections)
    assert [d for d in by_key.values() if d not in connections] == [{("egress", 17)}] * 200
    assert sum(len(decode(m.value).src_addr) > 0 for m in messages) == len(records)


@pytest.mark.kafka
async def test_msgpack_values_are_labelled(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    topic = unique_topic("msgpack")
    sink = KafkaSink(
        [kafka_broker.bootstrap],
        topic,
        kafka_config(tmp_path, compression="zstd"),
        RecordsConfig(format="msgpack"),
    )
    await sink.start()
    sink.submit(make_records(500, "msgpack/w0/1"))
    await sink.flush(60)
    await sink.close()
    messages = await read_topic(kafka_broker.bootstrap, topic, 500)
    assert len(messages) == 500
    for message in messages:
        assert dict(message.headers)["content-type"] == b"application/msgpack"
        assert decode(message.value, "msgpack").exporter == "msgpack/w0/1"


@pytest.mark.kafka
async def test_sink_spec_builds_a_working_sink(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    topic = unique_topic("spec")
    config = build_config({"kafka": {"spool_dir": str(tmp_path / "spool")}})
    sink = make_sink(f"kafka://{kafka_broker.bootstrap}/{topic}", config)
    await sink.start()
    sink.submit(make_records(10, "spec/w0/1"))
    await sink.flush(30)
    await sink.close()
    assert sink.status().delivered == 10


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_mechanisms(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
    mechanism: str,
) -> None:
    topic = unique_topic("sasl")
    config = kafka_config(
        tmp_path,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_username=kafka_broker.sasl_user,
        sasl_password=kafka_broker.sasl_password,
    )
    sink = KafkaSink([kafka_broker.sasl_bootstrap], topic, config, JSON)
    await sink.start()
    sink.submit(make_records(100, "sasl/w0/1"))
    await sink.flush(30)
    await sink.close()
    messages = await read_topic(kafka_broker.bootstrap, topic, 100)
    check_complete(messages, "sasl/w0/1", 100)


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_wrong_password_is_a_clear_error(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mechanism: str,
) -> None:
    config = kafka_config(
        tmp_path,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_username=kafka_broker.sasl_user,
        sasl_password="not-the-password",
    )
    sink = KafkaSink([kafka_broker.sasl_bootstrap], unique_topic("sasl"), config, JSON)
    with pytest.raises(SinkError, match=f"rejected SASL {mechanism} authentication") as caught:
        await asyncio.wait_for(sink.start(), 30)
    assert not caught.value.retriable
    assert "not-the-password" not in str(caught.value)
    assert "not-the-password" not in caplog.text


@pytest.mark.kafka
async def test_sasl_against_a_plaintext_listener_fails_fast(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    config = kafka_config(
        tmp_path,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="collector",
        sasl_password="whatever",
        connect_timeout_s=5.0,
    )
    sink = KafkaSink([kafka_broker.bootstrap], unique_topic("sasl"), config, JSON)
    with pytest.raises(SinkError, match="does not expect SASL on this port") as caught:
        await asyncio.wait_for(sink.start(), 30)
    assert not caught.value.retriable


@pytest.mark.kafka
async def test_plaintext_against_a_sasl_listener_says_so(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    config = kafka_config(tmp_path, require_broker_at_start=True, connect_timeout_s=5.0)
    sink = KafkaSink([kafka_broker.sasl_bootstrap], unique_topic("plain"), config, JSON)
    with pytest.raises(SinkError, match="does the listener expect another protocol"):
        await asyncio.wait_for(sink.start(), 30)


@pytest.mark.kafka
async def test_missing_topic_without_creation_is_a_clear_error(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    topic = unique_topic("absent")
    sink = KafkaSink(
        [kafka_broker.bootstrap], topic, kafka_config(tmp_path, create_topic=False), JSON
    )
    with pytest.raises(
        SinkError, match=f"topic '{topic}' does not exist and kafka.create_topic is off"
    ):
        await asyncio.wait_for(sink.start(), 30)


@pytest.mark.kafka
async def test_topic_that_cannot_be_created_is_a_clear_error(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    topic = unique_topic("rf3")
    config = kafka_config(tmp_path, topic_replication_factor=3)
    sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
    with pytest.raises(SinkError, match=r"could not be created.*replication factor 3") as caught:
        await asyncio.wait_for(sink.start(), 30)
    assert not caught.value.retriable


@pytest.mark.kafka
async def test_broker_outage_mid_flood_loses_nothing(
    own_kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    """Stop the broker for 20 s while records keep coming, start it again: every record arrives;
    a repeat is always an identical (exporter, sequence) copy. (A broker of the test's own, so
    stopping it disturbs nobody else.)"""
    broker = own_kafka_broker
    topic = unique_topic("outage")
    exporter = "outage/w0/1"
    sink = KafkaSink([broker.bootstrap], topic, kafka_config(tmp_path), JSON)
    await sink.start()
    submitted = 0
    flooding = True

    async def flood() -> None:
        nonlocal submitted
        while flooding:
            batch = make_records(100, exporter, start=submitted + 1)
            sink.submit(batch)
            submitted += len(batch)
            await asyncio.sleep(0.02)

    flood_task = asyncio.create_task(flood())
    broker_down = False
    try:
        await wait_until(lambda: sink.status().delivered > 5000, 60, "first deliveries")
        await asyncio.to_thread(broker.stop)
        broker_down = True
        back_at = time.monotonic() + 20
        await wait_until(lambda: sink.status().spool_bytes > 0, 60, "records to reach the spool")
        status = sink.status()
        assert status.state == "degraded", status
        while time.monotonic() < back_at:  # keep the broker away for 20 s in all
            await asyncio.sleep(0.5)
            assert sink.status().state == "degraded"
        delivered_during = sink.status().delivered
        await asyncio.to_thread(broker.start)
        broker_down = False
        await wait_until(
            lambda: sink.status().delivered > delivered_during + 1000, 120, "delivery to resume"
        )
    finally:
        flooding = False
        await flood_task
        if broker_down:
            await asyncio.to_thread(broker.start)
    await wait_until(
        lambda: sink.status().state == "ok" and sink.status().queue_records == 0,
        180,
        "the spool to drain",
    )
    status = sink.status()
    assert status.spool_bytes == 0
    assert status.dropped == 0
    assert status.failed == 0
    await sink.flush(30)
    await sink.close()
    messages = await read_topic(broker.bootstrap, topic, submitted, deadline_s=180)
    check_complete(messages, exporter, submitted)


@pytest.mark.kafka
async def test_records_spooled_by_one_sink_are_sent_by_the_next(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    """A sink that never reached the broker spools and shuts down; the next start, this time with
    the broker there, sends the spool before anything new."""
    topic = unique_topic("restart")
    exporter = "restart/w0/1"
    away = KafkaSink([f"127.0.0.1:{unused_port()}"], topic, kafka_config(tmp_path), JSON)
    await away.start()
    away.submit(make_records(3000, exporter))
    await away.flush(5)
    await away.close()
    assert away.status().spool_bytes > 0

    sink = KafkaSink([kafka_broker.bootstrap], topic, kafka_config(tmp_path), JSON)
    await sink.start()
    sink.submit(make_records(1000, exporter, start=3001))
    await wait_until(lambda: sink.status().delivered >= 4000, 120, "spool and new records")
    await sink.flush(30)
    await sink.close()
    assert sink.status().spool_bytes == 0
    messages = await read_topic(kafka_broker.bootstrap, topic, 4000)
    check_complete(messages, exporter, 4000)
    # the spooled records went first: per partition, sequences only grow
    last: dict[int, int] = {}
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        sequence = decode(message.value).sequence
        assert sequence > last.get(message.partition, 0)
        last[message.partition] = sequence


@pytest.mark.kafka
async def test_each_worker_claims_its_own_spool_and_a_restart_replays_all(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    """Two worker processes share kafka.spool_dir: each claims a slot (TOPIC/w0, TOPIC/w1);
    after a restart the two new sinks claim the same slots and deliver both spools."""
    topic = unique_topic("workers")
    away = f"127.0.0.1:{unused_port()}"
    first = [KafkaSink([away], topic, kafka_config(tmp_path), JSON) for _ in range(2)]
    for n, sink in enumerate(first):
        await sink.start()
        sink.submit(make_records(500, f"workers/w{n}/1"))
    for sink in first:
        await sink.flush(5)
        await sink.close()
    slots = sorted(p.name for p in (tmp_path / "spool" / topic).iterdir())
    assert slots == ["w0", "w1"]

    second = [KafkaSink([kafka_broker.bootstrap], topic, kafka_config(tmp_path), JSON)]
    second.append(KafkaSink([kafka_broker.bootstrap], topic, kafka_config(tmp_path), JSON))
    for sink in second:
        await sink.start()
    await wait_until(
        lambda: sum(s.status().delivered for s in second) >= 1000, 120, "both spools delivered"
    )
    for sink in second:
        await sink.close()
    messages = await read_topic(kafka_broker.bootstrap, topic, 1000)
    for n in range(2):
        mine = [m for m in messages if decode(m.value).exporter == f"workers/w{n}/1"]
        check_complete(mine, f"workers/w{n}/1", 500)


CRASHING_COLLECTOR = textwrap.dedent(
    """
    import asyncio, sys
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from collector.config import KafkaConfig, RecordsConfig
    from collector.io.kafka import KafkaSink
    from kafka_fixtures import make_records

    async def main():
        config = KafkaConfig(spool_dir=sys.argv[2], connect_timeout_s=2.0)
        sink = KafkaSink([sys.argv[3]], sys.argv[4], config, RecordsConfig())
        await sink.start()
        sink.submit(make_records(2000, "crash/w0/1"))
        while sink.status().queue_records:
            await asyncio.sleep(0.01)
        print("SPOOLED", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.mark.kafka
async def test_records_spooled_before_a_kill_are_delivered_after(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    """SIGKILL a collector whose records sit in the spool (no flush, no close): the next start
    delivers them."""
    topic = unique_topic("crash")
    spool_dir = tmp_path / "spool"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_COLLECTOR,
        str(ROOT),
        str(spool_dir),
        f"127.0.0.1:{unused_port()}",
        topic,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 120)
    assert line == b"SPOOLED\n"
    child.send_signal(signal.SIGKILL)
    await child.wait()

    sink = KafkaSink([kafka_broker.bootstrap], topic, kafka_config(tmp_path), JSON)
    await sink.start()
    await wait_until(lambda: sink.status().delivered >= 2000, 120, "the dead collector's spool")
    await sink.close()
    messages = await read_topic(kafka_broker.bootstrap, topic, 2000)
    check_complete(messages, "crash/w0/1", 2000)


@pytest.mark.kafka
async def test_a_torn_spool_tail_is_skipped_and_counted(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    topic = unique_topic("torn")
    away = KafkaSink([f"127.0.0.1:{unused_port()}"], topic, kafka_config(tmp_path), JSON)
    await away.start()
    away.submit(make_records(100, "torn/w0/1"))
    await away.flush(5)
    await away.close()
    (segment,) = (tmp_path / "spool" / topic).rglob("*.seg")
    with segment.open("ab") as fh:
        fh.write(b"\x40\x00\x00\x00\x12\x34")  # a crash in the middle of the next entry

    sink = KafkaSink([kafka_broker.bootstrap], topic, kafka_config(tmp_path), JSON)
    await sink.start()
    await wait_until(lambda: sink.status().delivered >= 100, 60, "the intact records")
    await sink.close()
    assert sink.spool.corrupt_segments == 1
    assert sink.spool.skipped_bytes == 6
    messages = await read_topic(kafka_broker.bootstrap, topic, 100)
    check_complete(messages, "torn/w0/1", 100)
