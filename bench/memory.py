"""Memory: bytes per active flow in the flow table, against a plain dict with as many keys.

    python -m bench.memory [--flows 10000,100000,1000000] [--json]

For each size a fresh Pipeline (no sessions: every VNI accepted, unfiltered) is fed that many
distinct IPv4 TCP flows, one datagram each, and the memory it keeps is the traced-memory delta
(tracemalloc) over the feeding. The datagrams come from one template patched in place with
struct (source address and port), so building them costs nothing per flow. Each flow gets its own
timestamp, as flows that start at different times do. The baseline, measured in the same run, is
the traced size of a dict that maps as many already existing keys to None: the hash table alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import struct
import sys
import time
import tracemalloc
from typing import Any

from collector.config import Config, FlowsConfig
from collector.pipeline import Pipeline
from collector.sessions import SessionMap

VNI = 4242
# VXLAN (RFC 7348: I flag, VNI) + Ethernet + IPv4 (20 bytes, total length 40) + TCP (ACK)
_TEMPLATE = (
    struct.pack("!B3xI", 0x08, VNI << 8)
    + bytes.fromhex("0200000000020200000000010800")
    + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, bytes(4), bytes([172, 16, 0, 1]))
    + struct.pack("!HHIIBBHHH", 0, 443, 0, 0, 0x50, 0x10, 65535, 0, 0)
)
_SRC_OFFSET = 8 + 14 + 12
_SPORT_OFFSET = 8 + 14 + 20
_ADDR = struct.Struct("!I")
_PORT = struct.Struct("!H")
PORTS_PER_SOURCE = 64


def _pipeline(max_flows: int) -> Pipeline:
    config = Config(flows=FlowsConfig(max_flows=max_flows, inactive_timeout_s=3600.0))
    return Pipeline(config, SessionMap([], accept_unknown=True), exporter="bench")


def flow_bytes(count: int) -> tuple[float, float]:
    """Traced bytes per flow after ``count`` distinct flows, and the seconds feeding took."""
    buf = bytearray(_TEMPLATE)
    n = len(buf)
    pack_addr = _ADDR.pack_into
    pack_port = _PORT.pack_into
    gc.collect()
    tracemalloc.start()
    pipeline = _pipeline(count + 1)
    feed = pipeline.feed
    base = tracemalloc.get_traced_memory()[0]
    now = time.time()
    start = time.perf_counter()
    for i in range(count):
        pack_addr(buf, _SRC_OFFSET, 0x0A000000 + i // PORTS_PER_SOURCE)  # 10.0.0.0/8
        pack_port(buf, _SPORT_OFFSET, 1024 + i % PORTS_PER_SOURCE)
        feed(buf, n, now + i * 1e-6, None)
    seconds = time.perf_counter() - start
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    if len(pipeline.table) != count:
        raise RuntimeError(f"expected {count} flows, the table holds {len(pipeline.table)}")
    del pipeline, feed
    gc.collect()
    return used / count, seconds


def dict_bytes(count: int) -> float:
    """Traced bytes per key of a dict grown to ``count`` keys that already exist."""
    keys = list(range(count))
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    table: dict[int, None] = {}
    for key in keys:
        table[key] = None
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del table, keys
    gc.collect()
    return used / count


def run(sizes: list[int]) -> dict[str, Any]:
    rows = []
    for count in sizes:
        per_flow, seconds = flow_bytes(count)
        baseline = dict_bytes(count)
        rows.append(
            {
                "flows": count,
                "bytes_per_flow": round(per_flow, 1),
                "table_mib": round(per_flow * count / 2**20, 1),
                "dict_bytes_per_key": round(baseline, 1),
                "ratio_vs_dict": round(per_flow / baseline, 2),
                "feed_seconds_traced": round(seconds, 2),
            }
        )
    return {
        "method": "tracemalloc delta after N distinct IPv4 TCP flows, one datagram each",
        "baseline": "dict of N existing keys -> None (hash table only), same run",
        "python": ".".join(map(str, sys.version_info[:3])),
        "default_max_flows_per_worker": FlowsConfig().max_flows,
        "sizes": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", default="10000,100000,1000000", help="comma-separated sizes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run([int(s) for s in args.flows.split(",")])
    if args.json:
        print(json.dumps(report))
        return
    for row in report["sizes"]:
        print(
            f"{row['flows']:>9,} flows: {row['bytes_per_flow']:7.1f} bytes/flow "
            f"({row['table_mib']:.1f} MiB) = {row['ratio_vs_dict']:.1f}x a dict's "
            f"{row['dict_bytes_per_key']:.1f} bytes/key"
        )


if __name__ == "__main__":
    main()
