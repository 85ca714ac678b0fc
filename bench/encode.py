"""Encoding cost per record: IPFIX and goflow2 against JSON, measured in the same run.

    python -m bench.encode [--records 20000] [--repeat 7] [--json]

The records are what the pipeline emits: a mix of IPv4 and IPv6; TCP, UDP and ICMP; sessions with
their ENI and AWS context; realistic counters and Unix-ms times. Each format does what its sink
does with a batch: JSON and goflow2 encode every record and join them with their separator (as
the file/stdout sinks and the Kafka sink's value encoder do); IPFIX packs the batch into messages
of one 1500-byte-MTU datagram each, templates included (``MessageEncoder.encode``, what the UDP
sink sends), with a new encoder per pass, so its tables of addresses and session strings start
empty (the sink's, kept across batches, are warmer: about 20 % faster here). Times are
``time.process_time``, the median of ``--repeat`` runs; the target (issue 14) is a ratio to JSON
of at most 1.0 for IPFIX and goflow2.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from collector.ipfix_elements import MessageEncoder, max_message_bytes
from collector.records import FlowRecord, encoder_for, flow_id, record_separator

TARGET_RATIO = 1.0
SESSIONS = (
    (
        3_000_001,
        "web-1",
        "eni-0a1b2c3d4e5f60718",
        "i-0123456789abcdef0",
        "subnet-0aa11bb22cc33dd44",
    ),
    (4_123_456, "db-primary", "eni-0fedcba9876543210", "i-0fedcba9876543210", "subnet-0ee55ff66"),
    (7, None, None, None, None),
)


def make_records(count: int, seed: int = 14) -> list[FlowRecord]:
    rng = random.Random(seed)
    t0 = 1_764_100_000_000
    records = []
    for i in range(count):
        vni, name, eni, instance, subnet = rng.choice(SESSIONS)
        v6 = rng.random() < 0.25
        proto = rng.choices((6, 17, 1), weights=(70, 25, 5))[0]
        if v6:
            src, dst = f"2600:1f18:abcd::{rng.randrange(1, 0xFFFF):x}", "2600:1f18:abcd::25"
            proto = 58 if proto == 1 else proto
        else:
            src, dst = f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}", "10.0.1.25"
        icmp = proto in (1, 58)
        sport = 0 if icmp else rng.randrange(1024, 65536)
        dport = 0 if icmp else rng.choice((443, 53, 5432, 8080))
        packets = rng.choice((1, 3, 12, 250, 40_000))
        start = t0 + rng.randrange(600_000)
        src_b = bytes(16 if v6 else 4)
        records.append(
            FlowRecord(
                flow_id=flow_id(proto, src_b, sport, src_b, dport + i),
                exporter="collector-a/w0/1764100000000",
                sequence=i + 1,
                vni=vni,
                session=name,
                interface_id=eni,
                direction=rng.choice(("ingress", "egress")),
                ip_version=6 if v6 else 4,
                protocol=proto,
                src_addr=src,
                dst_addr=dst,
                src_port=sport,
                dst_port=dport,
                icmp_type=8 if icmp else None,
                icmp_code=0 if icmp else None,
                packets=packets,
                bytes=packets * rng.randrange(40, 1500),
                tcp_flags=0x1B if proto == 6 else 0,
                start_ms=start,
                end_ms=start + rng.randrange(60_000),
                end_reason=rng.choice(("inactive_timeout", "tcp_fin", "active_timeout")),
                instance_id=instance,
                subnet_id=subnet,
                vpc_id="vpc-0f0e0d0c0b0a09080" if name else None,
                az_id="use1-az4" if name else None,
                account_id="123456789012" if name else None,
                region="us-east-1" if name else None,
            )
        )
    return records


def _stream(fmt: str) -> Callable[[list[FlowRecord]], int]:
    encode = encoder_for(fmt)
    end = record_separator(fmt)

    def run(records: list[FlowRecord]) -> int:
        return len(b"".join([encode(r) + end for r in records]))

    return run


def _ipfix(records: list[FlowRecord]) -> int:
    encoder = MessageEncoder(1, max_message_bytes(1500, ipv6=False), 32473)
    return sum(len(m) for m, _ in encoder.encode(records, 1_764_100_000.0))


def _time(run: Callable[[list[FlowRecord]], int], records: list[FlowRecord], repeat: int) -> float:
    """Median CPU seconds of one pass over ``records``."""
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.process_time()
        run(records)
        times.append(time.process_time() - started)
    return statistics.median(times)


def measure(count: int, repeat: int) -> dict[str, Any]:
    records = make_records(count)
    formats: dict[str, Callable[[list[FlowRecord]], int]] = {
        "json": _stream("json"),
        "msgpack": _stream("msgpack"),
        "goflow2": _stream("goflow2"),
        "ipfix": _ipfix,
    }
    ns: dict[str, float] = {}
    size: dict[str, float] = {}
    # interleaved passes so a noisy neighbour slows every format alike
    samples: dict[str, list[float]] = {name: [] for name in formats}
    for _ in range(repeat):
        for name, run in formats.items():
            samples[name].append(_time(run, records, 1))
    for name, run in formats.items():
        ns[name] = statistics.median(samples[name]) / count * 1e9
        size[name] = run(records) / count
    ratios = {name: ns[name] / ns["json"] for name in ("goflow2", "ipfix", "msgpack")}
    return {
        "records": count,
        "repeat": repeat,
        "ns_per_record": {k: round(v, 1) for k, v in ns.items()},
        "bytes_per_record": {k: round(v, 1) for k, v in size.items()},
        "ratio_to_json": {k: round(v, 3) for k, v in ratios.items()},
        "target_ratio": TARGET_RATIO,
        "meets_target": all(ratios[k] <= TARGET_RATIO for k in ("goflow2", "ipfix")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = measure(args.records, args.repeat)
    if args.json:
        print(json.dumps(result))
        return
    ns, size, ratio = result["ns_per_record"], result["bytes_per_record"], result["ratio_to_json"]
    print(f"{result['records']} records, median of {result['repeat']} passes (CPU time)")
    for name in ("json", "msgpack", "goflow2", "ipfix"):
        vs = "baseline" if name == "json" else f"{ratio[name]:.2f}x JSON"
        print(f"  {name:8} {ns[name]:8.1f} ns/record  {size[name]:6.1f} bytes/record  {vs}")
    print("target: IPFIX and goflow2 <= 1.0x JSON:", "met" if result["meets_target"] else "NOT met")
    sys.exit(0)


if __name__ == "__main__":
    main()
