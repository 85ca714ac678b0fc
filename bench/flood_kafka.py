"""The record rate of a port scan: every datagram a new flow, every flow a record, through Kafka.

    python -m bench.flood_kafka [--rates 100000,125000,150000,200000,300000,400000] [--seconds 5]
        [--naive-records 200000] [--bootstrap 127.0.0.1:9092] [--pure] [--json]

One collector worker (``python -m collector run --workers 1``) publishes to a fresh topic of the
local broker with the default Kafka settings (acks=all, the idempotent producer, lz4) and a 1 s
inactive timeout. bench.blast sends the new-flows profile (a TCP SYN flood: each datagram a new
5-tuple) paced at each rate for ``--seconds``; then the run waits until every record the worker
made is acknowledged. Per rate:

- ``records_per_s``: records acknowledged by the broker / (seconds from the first datagram sent
  to the last record acknowledged, less the inactive timeout every flow has to wait out): end to
  end, receive, new flow, expiry, record, encoding, Kafka; ``tail_s`` is how long after the last
  datagram the last acknowledgement came;
- the accounting: datagrams sent = received + kernel drops; records emitted = datagrams
  received that made a flow; emitted = delivered (nothing dropped, failed, dead-lettered or
  left in the spool). ``lossless`` is true when all of that holds with zero kernel drops.

Baseline of the same run: a naive aiokafka loop (``await producer.send()`` per record, same
settings; bench.kafka_throughput) publishing as many JSON records: records/s of a publisher that
does nothing else. The figure is ``flood_vs_naive`` at the highest lossless rate. Target (issue
#22): 400,000 records/s per worker with nothing lost. ``--pure`` runs the collector's pure-Python
build (COLLECTOR_PURE_PYTHON=1) for the pure column of the README table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.harness import Collector, Senders
from bench.kafka_throughput import PARTITIONS, ensure_broker, make_records, run_naive

TARGET_RECORDS_PER_S = 400_000
INACTIVE_TIMEOUT_S = 1.0
DELIVERY_TIMEOUT_S = 120.0
LOSS_COUNTERS = (
    "collector_sink_records_dropped_total",
    "collector_sink_records_failed_total",
    "collector_sink_records_dead_lettered_total",
)


async def _new_topic(bootstrap: str) -> str:
    topic = f"bench-flood-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    return topic


def _total(metrics: dict[str, float], name: str) -> float:
    """A counter summed over its label sets."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def flood_point(bootstrap: str, rate: int, seconds: float, *, pure: bool) -> dict[str, Any]:
    """One collector, one paced new-flow flood, every record to Kafka and acknowledged."""
    topic = asyncio.run(_new_topic(bootstrap))
    env = {
        "COLLECTOR_FLOWS_INACTIVE_TIMEOUT_S": str(INACTIVE_TIMEOUT_S),
        "COLLECTOR_FLOWS_EXPIRE_INTERVAL_S": "0.25",
    }
    if pure:
        env["COLLECTOR_PURE_PYTHON"] = "1"
    count = int(rate * seconds)
    with Collector(1, env=env, sink=f"kafka://{bootstrap}/{topic}") as collector:
        started = time.perf_counter()
        sent = Senders(procs=1).send(collector.port, "new-flows", count, rate)
        sent_by = time.perf_counter()
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while True:
            metrics = collector.metrics()
            received = _total(metrics, "collector_datagrams_received_total")
            arrived = received + _total(metrics, "collector_kernel_drops_total")
            emitted = _total(metrics, "collector_records_emitted_total")
            delivered = _total(metrics, "collector_records_delivered_total")
            active = _total(metrics, "collector_flows_active")
            if arrived >= sent.sent and active == 0 and delivered >= emitted:
                break  # the last acknowledgement came within this poll (50 ms)
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        done = time.perf_counter()
        elapsed = done - started - INACTIVE_TIMEOUT_S
        metrics = collector.metrics()
        kernel_drops = _total(metrics, "collector_kernel_drops_total")
        received = _total(metrics, "collector_datagrams_received_total")
        emitted = _total(metrics, "collector_records_emitted_total")
        delivered = _total(metrics, "collector_records_delivered_total")
        dropped = _total(metrics, "collector_packets_dropped_total")
        lost = {name: _total(metrics, name) for name in LOSS_COUNTERS}
        spool = _total(metrics, "collector_spool_bytes")
        compiled = any(
            k.startswith("collector_build_info") and 'compiled="true"' in k for k in metrics
        )
    accounted = received + kernel_drops == sent.sent
    lossless = (
        accounted
        and kernel_drops == 0
        and emitted == received - dropped
        and delivered == emitted
        and not any(lost.values())
        and spool == 0
    )
    return {
        "rate_offered": rate,
        "rate_sent": round(sent.rate_pps),
        "sent": sent.sent,
        "received": int(received),
        "kernel_drops": int(kernel_drops),
        "records_emitted": int(emitted),
        "records_delivered": int(delivered),
        "records_lost": {k: int(v) for k, v in lost.items()},
        "spool_bytes": int(spool),
        "seconds": round(elapsed, 3),
        "tail_s": round(done - sent_by, 3),
        "records_per_s": round(delivered / elapsed) if elapsed else 0,
        "accounted": accounted,
        "lossless": lossless,
        "compiled": compiled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100000,125000,150000,200000,300000,400000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--naive-records", type=int, default=200_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--pure", action="store_true", help="the pure-Python build")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ensure_broker(args.bootstrap)
    naive = asyncio.run(run_naive(args.bootstrap, make_records(args.naive_records)))
    points = []
    for rate in (int(r) for r in args.rates.split(",")):
        point = flood_point(args.bootstrap, rate, args.seconds, pure=args.pure)
        points.append(point)
        if not args.json:
            print(
                f"{rate:>9,}/s offered: {point['records_per_s']:>9,} records/s end to end, "
                f"kernel drops {point['kernel_drops']:,}, delivered {point['records_delivered']:,}"
                f" of {point['records_emitted']:,}, lossless {point['lossless']}"
            )
    lossless = [p for p in points if p["lossless"]]
    best = max(lossless, key=lambda p: p["records_per_s"]) if lossless else None
    report = {
        "bench": "flood_kafka",
        "build": "compiled" if points and all(p["compiled"] for p in points) else "pure",
        "naive_records_per_s": round(naive["records_per_s"]),
        "points": points,
        "best_lossless_records_per_s": best["records_per_s"] if best else 0,
        "flood_vs_naive": round(best["records_per_s"] / naive["records_per_s"], 2) if best else 0,
        "target_records_per_s": TARGET_RECORDS_PER_S,
        "target_met": bool(best and best["records_per_s"] >= TARGET_RECORDS_PER_S),
    }
    if not args.json:
        print(
            f"naive aiokafka loop: {report['naive_records_per_s']:,} records/s; best lossless "
            f"flood: {report['best_lossless_records_per_s']:,}/s ({report['flood_vs_naive']}x); "
            f"target {TARGET_RECORDS_PER_S:,}/s met: {report['target_met']}"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
