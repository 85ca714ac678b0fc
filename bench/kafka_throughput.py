"""Records per second one worker publishes to Kafka: the collector's sink against a naive send loop.

    python -m bench.kafka_throughput [--records 300000] [--naive-records 100000] [--repeat 3]
                                     [--bootstrap 127.0.0.1:9092] [--json] [--wal]

Both sides publish the same realistic flow records (JSON, key = flow_id, a content-type header) to
a fresh 6-partition topic on the local broker (deploy/kafka/kafkactl; started here when nothing
listens), with acks=all, the idempotent producer and lz4, in the same run:

- sink: ``KafkaSink`` as a worker drives it: ``submit()`` of 2,000-record lists (one expiry tick),
  pausing while more than half of ``kafka.queue_records`` wait in memory, then ``flush()``; the
  figure is records / wall time from the first submit to the last acknowledgement.
- naive: one ``AIOKafkaProducer`` with the same settings (linger, batch size), and
  ``await producer.send(...)`` per record, then ``flush()``.

Both use lz4's fast mode (``use_fast_lz4``), so the ratio measures batching, not the codec level.
The figure of each side is the median of ``--repeat`` runs. Targets (issue #4): 150k records/s
and 3x the naive loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.harness import Broker
from collector.config import KafkaConfig, RecordsConfig
from collector.encoders import CONTENT_TYPES, encoder_for
from collector.io.kafka import KafkaSink, use_fast_lz4
from collector.records import FlowRecord, address_text, flow_id

TARGET_RECORDS_PER_S = 150_000
TARGET_RATIO = 3.0
PARTITIONS = 6
TICK_RECORDS = 2000


def make_records(count: int) -> list[FlowRecord]:
    """Flow records as a worker emits them: many sources, a few services, IPv4 and IPv6."""
    records = []
    services = ((6, 443), (6, 22), (17, 53), (6, 5432), (17, 123))
    for i in range(count):
        protocol, port = services[i % len(services)]
        v6 = i % 4 == 0
        if v6:
            src = bytes.fromhex("20010db8000000000000000000000000")[:12] + i.to_bytes(4, "big")
            dst = bytes.fromhex("20010db8ffff00000000000000000010")
        else:
            src = (0x0A000000 + i % 0xFFFFFF).to_bytes(4, "big")
            dst = bytes((172, 31, 16, 21 + i % 8))
        sport = 1024 + (i * 7919) % 60000
        records.append(
            FlowRecord(
                flow_id=flow_id(protocol, src, sport, dst, port),
                exporter="bench-host/w0/1764100000",
                sequence=i + 1,
                vni=0x3A91C7,
                session="web-1",
                interface_id="eni-1235b8ca123456789",
                direction="ingress" if i % 2 else "egress",
                ip_version=6 if v6 else 4,
                protocol=protocol,
                src_addr=address_text(src),
                dst_addr=address_text(dst),
                src_port=sport,
                dst_port=port,
                packets=1 + i % 97,
                bytes=60 + (i * 131) % 150_000,
                tcp_flags=0x1B if protocol == 6 else 0,
                start_ms=1_764_100_000_000 + i,
                end_ms=1_764_100_060_000 + i,
                end_reason="active_timeout",
                instance_id="i-0a1b2c3d4e5f67890",
                subnet_id="subnet-0123456789abcdef0",
                vpc_id="vpc-0fedcba9876543210",
                az_id="use1-az4",
                account_id="123456789010",
                region="us-east-1",
                tags={"team": "payments", "env": "prod"},
            )
        )
    return records


def ensure_broker(bootstrap: str) -> None:
    host, _, port = bootstrap.rpartition(":")
    broker = Broker((host, int(port)))
    if not broker.ensure():
        raise SystemExit(f"no Kafka broker at {bootstrap}: {broker.error}")


async def new_topic(bootstrap: str, prefix: str) -> str:
    topic = f"bench-{prefix}-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    return topic


async def wait_for_room(sink: KafkaSink, high_water: int) -> None:
    """Backpressure as a worker would see it: wait while the sink holds many unacked records."""
    for _ in range(120_000):
        if sink.status().queue_records <= high_water:
            return
        await asyncio.sleep(0.001)
    raise RuntimeError("the sink took no records for two minutes")


async def run_sink(
    bootstrap: str, records: list[FlowRecord], spool_dir: str, *, wal: bool = False
) -> dict[str, float]:
    topic = await new_topic(bootstrap, "sink")
    config = KafkaConfig(spool_dir=spool_dir, wal=wal)
    sink = KafkaSink([bootstrap], topic, config, RecordsConfig())
    await sink.start()
    high_water = config.queue_records // 2
    started = time.perf_counter()
    cpu = time.process_time()
    for i in range(0, len(records), TICK_RECORDS):
        await wait_for_room(sink, high_water)
        sink.submit(records[i : i + TICK_RECORDS])
        await asyncio.sleep(0)
    await sink.flush(120)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    status = sink.status()
    await sink.close()
    if status.delivered != len(records) or status.spool_bytes:
        raise RuntimeError(f"sink delivered {status.delivered} of {len(records)}: {status}")
    return {"records_per_s": len(records) / elapsed, "cpu_us_per_record": cpu / len(records) * 1e6}


async def run_naive(bootstrap: str, records: list[FlowRecord]) -> dict[str, float]:
    topic = await new_topic(bootstrap, "naive")
    config = KafkaConfig()
    encode = encoder_for("json")
    headers = [("content-type", CONTENT_TYPES["json"].encode())]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="lz4",
        linger_ms=config.linger_ms,
        max_batch_size=config.max_batch_bytes,
    )
    await producer.start()
    try:
        started = time.perf_counter()
        cpu = time.process_time()
        for record in records:
            await producer.send(
                topic, value=encode(record), key=record.flow_id.encode(), headers=headers
            )
        await producer.flush()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await producer.stop()
    return {"records_per_s": len(records) / elapsed, "cpu_us_per_record": cpu / len(records) * 1e6}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    use_fast_lz4()
    records = make_records(args.records)
    naive_records = records[: args.naive_records]
    with tempfile.TemporaryDirectory() as spool_dir:
        await run_sink(args.bootstrap, records[:20_000], spool_dir)  # warm-up: JIT, connections
        sink_runs, naive_runs, wal_runs = [], [], []
        for _ in range(args.repeat):
            sink_runs.append(await run_sink(args.bootstrap, records, spool_dir))
            naive_runs.append(await run_naive(args.bootstrap, naive_records))
            if args.wal:
                wal_runs.append(await run_sink(args.bootstrap, records, spool_dir, wal=True))
    sink, naive = median_of(sink_runs), median_of(naive_runs)
    ratio = sink["records_per_s"] / naive["records_per_s"]
    wal: dict[str, Any] = {}
    if wal_runs:
        wal_median = median_of(wal_runs)
        wal = {
            "sink_wal": {**wal_median, "runs": [round(r["records_per_s"]) for r in wal_runs]},
            "wal_ratio": wal_median["records_per_s"] / sink["records_per_s"],
        }
    return {
        "bench": "kafka_throughput",
        "settings": {
            "acks": "all",
            "idempotent": True,
            "compression": "lz4 (fast mode)",
            "partitions": PARTITIONS,
            "records": args.records,
            "naive_records": args.naive_records,
            "repeat": args.repeat,
            "value_bytes_mean": round(
                statistics.fmean(len(encoder_for("json")(r)) for r in records[:1000]), 1
            ),
        },
        "sink": {**sink, "runs": [round(r["records_per_s"]) for r in sink_runs]},
        "naive": {**naive, "runs": [round(r["records_per_s"]) for r in naive_runs]},
        "ratio": ratio,
        **wal,
        "targets": {"records_per_s": TARGET_RECORDS_PER_S, "ratio": TARGET_RATIO},
        "meets_targets": sink["records_per_s"] >= TARGET_RECORDS_PER_S and ratio >= TARGET_RATIO,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--naive-records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of the text")
    parser.add_argument(
        "--wal", action="store_true", help="also the sink with kafka.wal = true (wal_ratio)"
    )
    args = parser.parse_args()
    ensure_broker(args.bootstrap)
    result = asyncio.run(measure(args))
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
        return
    sink, naive = result["sink"], result["naive"]
    print(f"records: {args.records} (naive: {args.naive_records}), median of {args.repeat} runs")
    print(f"  mean value size          {result['settings']['value_bytes_mean']:.0f} bytes (JSON)")
    print(
        f"  KafkaSink                {sink['records_per_s']:>10,.0f} records/s"
        f"  ({sink['cpu_us_per_record']:.2f} us CPU/record)  runs {sink['runs']}"
    )
    print(
        f"  naive await send() loop  {naive['records_per_s']:>10,.0f} records/s"
        f"  ({naive['cpu_us_per_record']:.2f} us CPU/record)  runs {naive['runs']}"
    )
    print(
        f"  ratio                    {result['ratio']:>10.1f}x"
        f"   (targets: >= {TARGET_RECORDS_PER_S:,} records/s and >= {TARGET_RATIO:.0f}x:"
        f" {'met' if result['meets_targets'] else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
