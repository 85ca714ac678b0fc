"""Encoding cost per record: IPFIX and goflow2 against JSON, measured in the same run.

    python -m bench.encode [--records 20000] [--repeat 7] [--json]

The records are what the pipeline emits: a mix of IPv4 and IPv6; TCP, UDP and ICMP; sessions with
their ENI and AWS context; realistic counters and Unix-ms times. Every format encodes the same
record objects and does what its sink does with a batch: JSON, msgpack and goflow2 encode every
record and join them with their separator (as the file/stdout sinks do; the Kafka sink's value
encoder is the same per-record call); IPFIX packs the batch into messages of one 1500-byte-MTU
datagram each, templates included (``MessageEncoder.encode``, what the UDP sink sends).

Caches are treated alike: each timed pass starts with every format's caches empty (goflow2's
module tables cleared, a new IPFIX encoder), so no format is timed on lookups of values it has
already seen in an earlier pass over these very records; within a pass they fill as a sink's do.
The warm figures (caches kept across passes, every value seen before) are printed too, as an
upper bound of what caching can give, not as the target. Times are ``time.process_time``, the
median of ``--repeat`` passes, the formats interleaved (in a rotating order) so a noisy neighbour
slows every format alike; the target (issues 14 and 22) is a cold ratio to JSON of at most 1.0 for
IPFIX and goflow2, ideally 0.5.

The ratios are those of the build that runs, and the output says which: ``compiled`` (the encoder
modules are extension modules built from their .py by Cython), ``pure`` (the .py files run by the
interpreter: no compiler at install, or ``COLLECTOR_PURE_PYTHON=1``) or ``mixed``.
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

import collector
from collector.encoders import encoder_for, goflow2, ipfix, record_separator
from collector.encoders.ipfix import MessageEncoder, max_message_bytes
from collector.records import FlowRecord, flow_id

TARGET_RATIO = 1.0
IDEAL_RATIO = 0.5
ENCODER_MODULES = (goflow2, ipfix)  # the encoder modules a compiled build compiles


def build() -> dict[str, Any]:
    """Which build runs: the encoder modules that are extension modules (not .py files), and
    ``collector.compiled()`` where the package has it."""
    compiled = sorted(m.__name__ for m in ENCODER_MODULES if not str(m.__file__).endswith(".py"))
    name = (
        "pure" if not compiled else "compiled" if len(compiled) == len(ENCODER_MODULES) else "mixed"
    )
    info: dict[str, Any] = {"build": name, "compiled_modules": compiled}
    package_says = getattr(collector, "compiled", None)
    if callable(package_says):
        info["collector_compiled"] = package_says()
    return info


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


Run = Callable[[list[FlowRecord]], int]


def _stream(fmt: str) -> Run:
    encode = encoder_for(fmt)
    end = record_separator(fmt)

    def run(records: list[FlowRecord]) -> int:
        return len(b"".join([encode(r) + end for r in records]))

    return run


def _ipfix_encoder() -> MessageEncoder:
    return MessageEncoder(1, max_message_bytes(1500, ipv6=False), 32473)


def _ipfix(encoder: MessageEncoder) -> Run:
    def run(records: list[FlowRecord]) -> int:
        return sum(len(m) for m, _ in encoder.encode(records, 1_764_100_000.0))

    return run


def _formats(warm: bool) -> dict[str, tuple[Callable[[], None], Run]]:
    """Format -> (what empties its caches before a pass, one pass over a batch)."""
    encoder = _ipfix_encoder()

    def nothing() -> None:
        pass

    def cold_ipfix() -> None:
        nonlocal encoder
        encoder = _ipfix_encoder()

    def ipfix(records: list[FlowRecord]) -> int:
        return _ipfix(encoder)(records)

    return {
        "json": (nothing, _stream("json")),
        "msgpack": (nothing, _stream("msgpack")),
        "goflow2": (nothing if warm else goflow2.clear_caches, _stream("goflow2")),
        "ipfix": (nothing if warm else cold_ipfix, ipfix),
    }


def _time(run: Run, records: list[FlowRecord]) -> float:
    """CPU seconds of one pass over ``records``."""
    gc.collect()
    started = time.process_time()
    run(records)
    return time.process_time() - started


def _ns_per_record(records: list[FlowRecord], repeat: int, warm: bool) -> dict[str, float]:
    formats = _formats(warm)
    if warm:  # one untimed pass: every value has been seen before the timed ones
        for _, run in formats.values():
            run(records)
    names = list(formats)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeat):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotating order
            empty, run = formats[name]
            empty()
            samples[name].append(_time(run, records))
    return {name: statistics.median(samples[name]) / len(records) * 1e9 for name in names}


def measure(count: int, repeat: int) -> dict[str, Any]:
    records = make_records(count)
    ns = _ns_per_record(records, repeat, warm=False)
    warm = _ns_per_record(records, repeat, warm=True)
    size = {name: run(records) / count for name, (_, run) in _formats(warm=False).items()}
    ratios = {name: ns[name] / ns["json"] for name in ("goflow2", "ipfix", "msgpack")}
    warm_ratios = {name: warm[name] / warm["json"] for name in ("goflow2", "ipfix", "msgpack")}
    return {
        **build(),
        "records": count,
        "repeat": repeat,
        "ns_per_record": {k: round(v, 1) for k, v in ns.items()},
        "bytes_per_record": {k: round(v, 1) for k, v in size.items()},
        "ratio_to_json": {k: round(v, 3) for k, v in ratios.items()},
        "warm_ns_per_record": {k: round(v, 1) for k, v in warm.items()},
        "warm_ratio_to_json": {k: round(v, 3) for k, v in warm_ratios.items()},
        "target_ratio": TARGET_RATIO,
        "meets_target": all(ratios[k] <= TARGET_RATIO for k in ("goflow2", "ipfix")),
        "ideal_ratio": IDEAL_RATIO,
        "meets_ideal": all(ratios[k] <= IDEAL_RATIO for k in ("goflow2", "ipfix")),
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
    warm, warm_ratio = result["warm_ns_per_record"], result["warm_ratio_to_json"]
    modules = ", ".join(result["compiled_modules"]) or "none"
    print(f"{result['build']} build (compiled encoder modules: {modules})")
    print(f"{result['records']} records, median of {result['repeat']} passes (CPU time)")
    for name in ("json", "msgpack", "goflow2", "ipfix"):
        vs = "baseline" if name == "json" else f"{ratio[name]:.2f}x JSON"
        warm_vs = "" if name == "json" else f" ({warm_ratio[name]:.2f}x)"
        print(
            f"  {name:8} {ns[name]:8.1f} ns/record  {size[name]:6.1f} bytes/record  {vs:14}"
            f"warm caches {warm[name]:8.1f} ns/record{warm_vs}"
        )
    print("target: IPFIX and goflow2 <= 1.0x JSON:", "met" if result["meets_target"] else "NOT met")
    print("ideal: IPFIX and goflow2 <= 0.5x JSON:", "met" if result["meets_ideal"] else "not met")
    sys.exit(0)


if __name__ == "__main__":
    main()
