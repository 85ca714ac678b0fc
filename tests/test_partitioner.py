"""The partition of a keyed record is Kafka's own: ``toPositive(murmur2(key)) % partitions``.

Checked against the Java client of the very Kafka distribution the tests run (its
kafka-console-producer, ``org.apache.kafka.tools.ConsoleProducer``, default partitioner) on the
real local broker: a few thousand keys, flow ids and others, produced by Java to one topic and by
the collector's Kafka sink to another of the same partition count, land on the same partitions.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from kafka_fixtures import (
    ROOT,
    KafkaBroker,
    create_topic,
    make_records,
    read_topic,
    unique_topic,
    wait_until,
)

from collector.config import KafkaConfig, RecordsConfig
from collector.io.kafka import KafkaSink
from collector.io.kafka.partitioner import (
    kafka_hash,
    murmur2,
    murmur2_octets,
    partition_for,
    partitions_for,
)
from collector.records import decode

PARTITIONS = 7  # not a power of two: a modulo bug shows
FLOW_IDS = 2500
OTHER_KEYS = 500
JAVA_TIMEOUT_S = 180

# Kafka's own test vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java,
# testMurmur2): the Java int result of Utils.murmur2
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_matches_kafkas_own_vectors() -> None:
    for key, java_int in KAFKA_VECTORS.items():
        assert murmur2(key) == java_int & 0xFFFFFFFF, key
        assert murmur2_octets(key) == java_int & 0xFFFFFFFF, key
        assert kafka_hash(key) == java_int & 0x7FFFFFFF, key


def test_murmur2_matches_aiokafkas_reference_for_every_length_and_the_flow_id_table() -> None:
    """Every tail length, the unrolled 16-byte path, and the hex-word table of flow ids (any
    16-byte key that is not 16 lowercase hex digits must not take the table)."""
    rng = random.Random(21)
    keys = [rng.randbytes(n) for n in range(41) for _ in range(50)]
    keys += [rng.randbytes(8).hex().encode() for _ in range(2000)]  # flow ids
    keys += [rng.randbytes(8).hex().upper().encode() for _ in range(200)]
    keys += [b" " + rng.randbytes(8).hex()[1:].encode() for _ in range(50)]  # int() would parse
    keys += [b"_" + rng.randbytes(8).hex()[1:].encode() for _ in range(50)]
    keys += [b"+" + rng.randbytes(8).hex()[1:].encode() for _ in range(50)]
    expected = [(aiokafka_murmur2(k) & 0x7FFFFFFF) % PARTITIONS for k in keys]
    # the compiled build's octet-by-octet hash, in either build (partitions_for uses it compiled)
    assert [(murmur2_octets(k) & 0x7FFFFFFF) % PARTITIONS for k in keys] == expected
    assert [kafka_hash(k) % PARTITIONS for k in keys] == expected
    assert [partition_for(k, range(PARTITIONS)) for k in keys] == expected
    assert partitions_for(keys, list(range(PARTITIONS))) == expected
    assert partitions_for(keys, [10, 11, 12, 13, 14, 15, 16]) == [10 + p for p in expected]


def java_produce(broker: KafkaBroker, topic: str, keys: list[bytes], tmp_path: Path) -> None:
    """Produce ``key -> key`` with the distribution's console producer (default partitioner)."""
    lines = tmp_path / "keys.txt"
    lines.write_bytes(b"".join(k + b"\t" + k + b"\n" for k in keys))
    libs = os.environ.get("KAFKA_LIBS_DIR", str(ROOT / ".cache" / "kafka" / "libs"))
    with lines.open("rb") as stdin:
        done = subprocess.run(
            [
                os.environ.get("JAVA", "java"),
                "-Xmx256m",
                "-XX:TieredStopAtLevel=1",
                "-cp",
                f"{libs}/*",
                "org.apache.kafka.tools.ConsoleProducer",
                "--bootstrap-server",
                broker.bootstrap,
                "--topic",
                topic,
                "--reader-property",
                "parse.key=true",
                "--reader-property",
                "key.separator=\t",
                "--producer-property",
                "max.block.ms=30000",
            ],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=JAVA_TIMEOUT_S,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ERROR" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]


def other_keys(rng: random.Random) -> list[bytes]:
    """Keys that are not flow ids: printable, no tab or newline (the console producer's framing),
    every length from 1 to 40, so every tail of the hash is compared."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/"
    keys = {
        "".join(rng.choice(alphabet) for _ in range(1 + i % 40)).encode() for i in range(OTHER_KEYS)
    }
    return sorted(keys)


@pytest.mark.kafka
async def test_partitions_agree_with_the_java_client(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    rng = random.Random(4789)
    records = make_records(FLOW_IDS, "partitioner/w0/1")
    flow_ids = [r.flow_id.encode() for r in records]
    assert len(set(flow_ids)) == FLOW_IDS
    keys = flow_ids + other_keys(rng)
    java_topic = unique_topic("partitioner-java")
    ours_topic = unique_topic("partitioner-ours")
    await create_topic(kafka_broker.bootstrap, java_topic, PARTITIONS)
    await create_topic(kafka_broker.bootstrap, ours_topic, PARTITIONS)

    await asyncio.to_thread(java_produce, kafka_broker, java_topic, keys, tmp_path)
    java = await read_topic(kafka_broker.bootstrap, java_topic, len(keys))
    java_partition = {m.key: m.partition for m in java}
    assert len(java_partition) == len(keys), "the console producer did not deliver every key"
    assert len(set(java_partition.values())) == PARTITIONS  # the keys spread over all of them

    # the pure function, for every key
    ours = partitions_for(keys, list(range(PARTITIONS)))
    differ = [k for k, p in zip(keys, ours, strict=True) if java_partition[k] != p]
    assert not differ, f"{len(differ)} of {len(keys)} keys differ from Java, first {differ[:5]}"

    # and the sink itself: the same flow ids through KafkaSink land where Java put them
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5, create_topic=False)
    sink = KafkaSink([kafka_broker.bootstrap], ours_topic, config, RecordsConfig())
    await sink.start()
    try:
        sink.submit(records)
        await sink.flush(60)
        await wait_until(
            lambda: sink.delivery.delivered == FLOW_IDS, 60, "the sink's acknowledgements"
        )
    finally:
        await sink.close()
    published = await read_topic(kafka_broker.bootstrap, ours_topic, FLOW_IDS)
    sink_partition = {decode(m.value).flow_id.encode(): m.partition for m in published}
    assert len(sink_partition) == FLOW_IDS
    differ = [k for k in flow_ids if sink_partition[k] != java_partition[k]]
    assert not differ, (
        f"the sink put {len(differ)} of {FLOW_IDS} flows on another partition than Java,"
        f" first {differ[:5]}"
    )


@pytest.mark.parametrize("count", [1, 2, 3, 6, 7, 64, 100])
def test_every_partition_count_uses_every_partition(count: int) -> None:
    rng = random.Random(count)
    keys = [rng.randbytes(8).hex().encode() for _ in range(200 * count)]
    assert set(partitions_for(keys, list(range(count)))) == set(range(count))
