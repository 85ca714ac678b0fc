"""Per-key order across producer resets, without a broker: whatever takes records back (a reset,
a failure, a split), the retry queue sends them oldest first, so per partition nothing newer
overtakes them. Batches are aiokafka's own BatchBuilder; the records read back with its reader."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from fault_proxy import FaultProxy
from kafka_fixtures import KafkaBroker, make_records, read_topic, unique_topic, wait_until

from collector.config import KafkaConfig, RecordsConfig
from collector.encoders import CONTENT_TYPES, encoder_for
from collector.io.kafka import KafkaSink, State
from collector.io.kafka.delivery import Batch, Delivery
from collector.records import decode

JSON = CONTENT_TYPES["json"]
NOW_MS = 1_764_100_000_000
UNKNOWN_SERVER_ERROR = -1


def delivery(partitions: int = 1) -> Delivery:
    core = Delivery(lambda: BatchBuilder(1 << 20, 0), encoder_for("json", ""), JSON)
    core.partitions = list(range(partitions))
    return core


def sent(batches: list[Batch]) -> dict[int, list[int]]:
    """Sequences per partition in the order the batches would be sent (built bytes)."""
    out: dict[int, list[int]] = {}
    for batch in batches:
        reader = DefaultRecordBatch(bytes(batch.builder._build()))
        out.setdefault(batch.partition, []).extend(decode(r.value).sequence for r in reader)
    return out


def test_batches_taken_back_from_a_replaced_producer_go_out_before_newer_retries() -> None:
    """Cycle 1 builds A (sequences 1-100), cycle 2 builds B (101-200), same partition. B fails
    first (retry queue); then the producer is replaced while A is still in flight: A is taken
    back. The next producer must send A before B."""
    core = delivery()
    records = make_records(200, "order/w0/1")
    core.add(records[:100], 1.0)
    (older,) = core.from_pending(1000, NOW_MS)
    core.add(records[100:], 2.0)
    (newer,) = core.from_pending(1000, NOW_MS)
    core.to_retry(newer)
    core.take_back_unacked()
    assert older.abandoned
    again = core.rebuild_retries(1000, NOW_MS)
    assert sent(again) == {0: list(range(1, 201))}
    assert core.memory_records() == 200  # nothing lost or doubled on the way


def test_failures_reported_out_of_order_are_retried_in_submission_order() -> None:
    """Three batches of one partition in flight; the broker fails the third, then the first
    (callbacks come in any order), the second is taken back by a reset, and a split of the
    first halves it: the retries still go out 1..300 in order, across two rebuilds."""
    core = delivery()
    records = make_records(300, "order/w0/1")
    built = []
    for first in (0, 100, 200):
        core.add(records[first : first + 100], 1.0)
        built.extend(core.from_pending(1000, NOW_MS))
    one, _, three = built
    core.to_retry(three)
    assert core.split_for_retry(one)
    core.take_back_unacked()
    again = core.rebuild_retries(150, NOW_MS)
    rest = core.rebuild_retries(1000, NOW_MS)
    assert sent(again + rest) == {0: list(range(1, 301))}
    for batch in again:  # a rebuild keeps the place: taken back again, still first
        batch.abandoned = False
    core.take_back_unacked()
    assert [b.sequences[0] for b in core.retry][:1] == [1]
    assert [b.sequences[0] for b in core.retry] == sorted(b.sequences[0] for b in core.retry)


@pytest.mark.kafka
async def test_per_partition_order_survives_forced_resets_retries_and_replays(
    proxied_kafka_broker: tuple[KafkaBroker, FaultProxy], tmp_path: Path
) -> None:
    """Records keep coming while, three times over, the broker fails a few batches (retries
    waiting), the producer is replaced at once (its in-flight batches taken back behind those
    retries) and the records submitted meanwhile spill to the spool and are replayed. Per
    partition, the first copy of every sequence comes after every smaller one: nothing newer
    overtook a retry, a batch taken back, or the spool."""
    broker, proxy = proxied_kafka_broker
    topic = unique_topic("order-resets")
    exporter = "order/w0/1"
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5, topic_partitions=3)
    sink = KafkaSink([broker.bootstrap], topic, config, RecordsConfig())
    await sink.start()
    emitted = 0
    flooding = True

    async def flood() -> None:
        nonlocal emitted
        while flooding:
            sink.submit(make_records(200, exporter, start=emitted + 1))
            emitted += 200
            await asyncio.sleep(0.01)

    flood_task = asyncio.create_task(flood())
    try:
        for round_ in range(3):
            await wait_until(
                lambda: sink.state is State.DIRECT and sink.status().delivered > 0,
                60,
                f"direct publishing before round {round_}",
            )
            proxy.rewrite_produce(UNKNOWN_SERVER_ERROR, limit=3)
            await wait_until(lambda: sink.delivery.retry_count > 0, 30, "batches to retry")
            sink._reset_producer(f"forced by the test (round {round_})", graceful=False)
            await wait_until(lambda: sink.status().spool_bytes > 0, 30, "records spilled")
    finally:
        flooding = False
        await flood_task
        proxy.stop_rewriting()
    await wait_until(
        lambda: sink.state is State.DIRECT and sink.status().queue_records == 0,
        120,
        "everything delivered",
    )
    await sink.flush(30)
    status = sink.status()
    await sink.close()
    # the books: emitted == delivered (+ dropped, failed, dead-lettered, spooled: none)
    assert (status.delivered, status.dropped, status.failed, status.dead_lettered) == (
        emitted,
        0,
        0,
        0,
    )
    assert status.spool_bytes == 0
    messages = await read_topic(broker.bootstrap, topic, emitted)
    last: dict[int, int] = {}
    seen: set[int] = set()
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        sequence = int(dict(message.headers)["sequence"])
        if sequence not in seen:  # a repeat is a batch stored whose answer was rewritten
            assert sequence > last.get(message.partition, 0), (message.partition, sequence)
            last[message.partition] = sequence
        seen.add(sequence)
    assert seen == set(range(1, emitted + 1))
